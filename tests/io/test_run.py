"""recon.io.run: the run-folder contract (status, checkpoints, log) as fits write it."""

from __future__ import annotations

import json
import re

import pytest
import torch

from recon.errors import InputError
from recon.io.run import PRIOR_REFRESH_FILE, RunDir, atomic_torch_save, read_json
from recon.train import read_checkpoint


# ------------------------------------------------------------------------------ checkpoints
def test_checkpoints_rotate_keeping_the_newest(tmp_path):
    run = RunDir(tmp_path / "run")
    assert run.latest_checkpoint() is None
    for step in (5, 10, 15, 100, 1000):
        path = run.save_checkpoint(step, {"step": step, "x": torch.full((3,), float(step))})
        assert path == run.checkpoint_path(step) and path.is_file()
    kept = sorted(p.name for p in run.checkpoints.iterdir())
    assert kept == ["ckpt_0000100.pt", "ckpt_0001000.pt"]  # keep=2; numeric order, not text order
    assert run.latest_checkpoint() == run.checkpoint_path(1000)
    assert torch.load(run.latest_checkpoint())["step"] == 1000
    run.save_checkpoint(1001, {"step": 1001}, keep=3)
    run.save_checkpoint(1002, {"step": 1002}, keep=3)
    assert sorted(p.name for p in run.checkpoints.iterdir()) == ["ckpt_0001000.pt", "ckpt_0001001.pt", "ckpt_0001002.pt"]


def test_failed_checkpoint_save_keeps_the_previous_one(tmp_path):
    run = RunDir(tmp_path / "run")
    run.save_checkpoint(10, {"step": 10})
    before = run.checkpoint_path(10).read_bytes()

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        atomic_torch_save(run.checkpoint_path(10), {"step": 10, "bad": Unpicklable()})
    assert run.checkpoint_path(10).read_bytes() == before
    assert [p.name for p in run.checkpoints.iterdir()] == ["ckpt_0000010.pt"]  # no temp file left


# ------------------------------------------------------------------------------- run.json
def test_prior_refreshes_are_the_complete_step_folders(tmp_path):
    run = RunDir(tmp_path)
    assert run.prior_refreshes() == []
    assert run.prior_refresh_dir(500) == tmp_path / "prior" / "step_0000500"
    for step, complete in ((1500, True), (500, True), (1000, False)):
        run.prior_refresh_dir(step).mkdir(parents=True)
        if complete:
            (run.prior_refresh_dir(step) / PRIOR_REFRESH_FILE).write_text("{}")
    (tmp_path / "prior" / "step_x").mkdir()
    assert run.prior_refreshes() == [500, 1500]  # 1000 has no refresh.json: incomplete


def test_mark_keeps_earlier_fields_and_updates_status(tmp_path):
    run = RunDir(tmp_path / "run")
    assert run.status() == {} and not run.is_complete()  # a fresh folder has no status
    run.mark("running", kind="capture", train_views=["a.jpg", "b.jpg"])
    first = run.status()
    assert first["status"] == "running" and first["kind"] == "capture"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", first["updated"])
    run.mark("complete", n_gaussians=7)
    done = run.status()
    assert done == {**first, "status": "complete", "n_gaussians": 7, "updated": done["updated"]}
    assert run.is_complete()
    run.mark("failed", kind="other")  # later fields win
    assert run.status()["kind"] == "other" and run.status()["n_gaussians"] == 7
    assert [p.name for p in run.root.iterdir()] == ["run.json"]  # written atomically: no temp files


@pytest.mark.parametrize(
    "content, needle",
    [
        (b'{"status": "compl', "malformed JSON"),
        (b"", "malformed JSON"),
        (b'{"status": "complete", "note": "\xff\xfe"}', "not UTF-8"),
        (b'["complete"]', "expected a JSON object"),
    ],
    ids=["truncated", "empty", "not-utf8", "not-an-object"],
)
def test_malformed_run_json_is_an_input_error_naming_the_file(tmp_path, content, needle):
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    (run.root / "run.json").write_bytes(content)
    with pytest.raises(InputError, match=needle) as err:
        run.is_complete()
    assert str(run.root / "run.json") in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(InputError, match=needle):
        run.mark("running")
    assert (run.root / "run.json").read_bytes() == content  # not overwritten


def test_read_json_missing_and_malformed_files(tmp_path):
    with pytest.raises(InputError, match="file not found") as err:
        read_json(tmp_path / "config.json")
    assert str(tmp_path / "config.json") in str(err.value)
    (tmp_path / "bad.json").write_bytes(b"\x89PNG\r\n")
    with pytest.raises(InputError, match="not UTF-8"):
        read_json(tmp_path / "bad.json")
    (tmp_path / "ok.json").write_text('{"a": [1, 2]}')
    assert read_json(tmp_path / "ok.json") == {"a": [1, 2]}


# -------------------------------------------------------------------------------- log.jsonl
def test_log_round_trip_and_torn_last_line(tmp_path):
    run = RunDir(tmp_path / "run")
    assert run.read_log() == []
    run.append_log({"step": 1, "loss": torch.tensor(0.5), "path": tmp_path})
    run.append_log({"step": 2, "loss": 0.25})
    assert run.read_log() == [{"step": 1, "loss": 0.5, "path": str(tmp_path)}, {"step": 2, "loss": 0.25}]
    # a crash while appending leaves a torn last line: the records before it still read
    with open(run.path("log.jsonl"), "a") as f:
        f.write('{"step": 3, "lo')
    assert [r["step"] for r in run.read_log()] == [1, 2]
    # the next append (a resumed fit) starts a new line: only the torn record is lost
    run.append_log({"step": 4, "loss": 0.125})
    assert [r["step"] for r in run.read_log()] == [1, 2, 4]
    lines = run.path("log.jsonl").read_text().splitlines()
    assert lines[2] == '{"step": 3, "lo' and json.loads(lines[3]) == {"step": 4, "loss": 0.125}


def test_log_with_torn_multibyte_character(tmp_path):
    run = RunDir(tmp_path / "run")
    run.append_log({"step": 1, "note": "ok"})
    with open(run.path("log.jsonl"), "ab") as f:
        f.write('{"step": 2, "note": "é'.encode()[:-1])  # cut inside a UTF-8 sequence
    assert run.read_log() == [{"step": 1, "note": "ok"}]


# ------------------------------------------------------------------ states written by real fits
@pytest.fixture
def small_fox(fox_dir, tmp_path):
    from tests.pipelines.conftest import make_capture

    return make_capture(fox_dir, tmp_path / "fox12")


def _tiny_fit(small_fox, out, **kw):
    from recon.pipelines.capture import CaptureFitConfig

    base = dict(data=small_fox, out=out, preset="plain", train_views=(3,), eval_views=1, downscale=16.0,
                iterations=6, init_points=300, checkpoint_every=2)  # fmt: skip
    base.update(kw)
    return CaptureFitConfig(**base).setup()


def test_capture_fit_that_raises_is_marked_failed(small_fox, tmp_path, monkeypatch):
    job = _tiny_fit(small_fox, tmp_path / "run")
    trainer = job.trainer
    real_step = trainer.train_step

    def step():
        if trainer.step == 3:
            raise RuntimeError("rasteriser exploded")
        return real_step()

    monkeypatch.setattr(trainer, "train_step", step)
    with pytest.raises(RuntimeError, match="rasteriser exploded"):
        job.run()
    status = RunDir(tmp_path / "run").status()
    assert status["status"] == "failed" and "rasteriser exploded" in status["error"]
    assert status["kind"] == "capture" and len(status["train_views"]) == 3  # fields from the start kept
    assert RunDir(tmp_path / "run").latest_checkpoint().name == "ckpt_0000002.pt"
    assert not (tmp_path / "run" / "metrics.json").exists()  # splat.ply is the step-2 preview (run-folder contract)
    assert any("status is 'failed'" in p for p in RunDir(tmp_path / "run").problems())


def test_capture_fit_interrupted_by_ctrl_c_is_marked_interrupted(small_fox, tmp_path):
    job = _tiny_fit(small_fox, tmp_path / "run")

    def stop(step, total, stats):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        job.run(progress=stop)
    run = RunDir(tmp_path / "run")
    assert run.status()["status"] == "interrupted" and not run.is_complete()
    assert read_checkpoint(run)["step"] == 3  # written on the way out, between steps


def test_ct_fit_that_raises_is_marked_failed(tmp_path):
    import numpy as np

    from recon.ct.phantoms import shepp_logan_3d
    from recon.pipelines.ct import CTFitConfig
    from recon.pipelines.ct_simulate import CTSimulateConfig

    np.savez(tmp_path / "p.npz", volume=(shepp_logan_3d((8, 8, 8)) * 1000 - 1000).astype(np.float32),
             spacing_mm_zyx=np.array([2.0, 2.0, 2.0], np.float32))  # fmt: skip
    CTSimulateConfig(tmp_path / "p.npz", views=6, out=tmp_path / "scan", n_test=0, detector=16).run()

    def boom(step, total, info):
        if step == 2:
            raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        CTFitConfig(tmp_path / "scan", method="sart", iterations=4, out=tmp_path / "run").run(progress=boom)
    status = RunDir(tmp_path / "run").status()
    assert status["status"] == "failed" and "disk on fire" in status["error"]
    assert status["kind"] == "ct" and status["method"] == "sart"
    assert not (tmp_path / "run" / "metrics.json").exists()
