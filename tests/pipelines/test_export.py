"""``recon export``: a complete run's splat.ply, an interrupted run's newest checkpoint (free or
anchored Gaussians), and one-line errors for folders it cannot export."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from recon.cli import main
from recon.errors import InputError
from recon.io.ply import read_splat_ply
from recon.io.run import RunDir
from recon.train import read_checkpoint
from recon.pipelines.capture import CaptureFitConfig
from recon.pipelines.export import export_run, load_run_params
from recon.splat.anchored import AnchoredConfig

PARAMS = ("means", "quats", "scales", "opacities", "sh0", "shN")


def _cfg(data, out, **kw) -> CaptureFitConfig:
    base = dict(data=data, out=out, preset="plain", train_views=(3,), eval_views=1, downscale=16.0, iterations=6,
                init_points=300, checkpoint_every=2)  # fmt: skip
    base.update(kw)
    return CaptureFitConfig(**base)


def _interrupt_at(step: int):
    def stop(s, total, stats):
        if s == step:
            raise KeyboardInterrupt

    return stop


def _assert_same(a: dict, b: dict, **tol) -> None:
    assert set(a) >= set(PARAMS) and set(b) >= set(PARAMS)
    for name in PARAMS:
        torch.testing.assert_close(a[name].float(), b[name].float(), msg=name, **tol)


def test_complete_run_exports_its_splat_ply(small_fox, tmp_path):
    out = tmp_path / "run"
    _cfg(small_fox, out).setup().run()
    path = export_run(out)
    assert path == out / "export" / "splat.ply"
    exported, final = read_splat_ply(path), read_splat_ply(out / "splat.ply")
    _assert_same(exported, final, rtol=0, atol=0)
    assert exported["shN"].shape[1] == 15 and torch.isfinite(exported["means"]).all()
    assert export_run(out, "ply", tmp_path / "elsewhere" / "x.ply") == tmp_path / "elsewhere" / "x.ply"


def test_interrupted_run_exports_its_newest_checkpoint(small_fox, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        _cfg(small_fox, out, iterations=20, checkpoint_every=10).setup().run(progress=_interrupt_at(5))
    run = RunDir(out)
    assert run.status()["status"] == "interrupted" and not (out / "splat.ply").exists()  # no preview before step 10
    ckpt = read_checkpoint(run)
    assert ckpt["step"] == 5  # the cancelled step's checkpoint, written on the way out
    exported = read_splat_ply(export_run(out, out=tmp_path / "x.ply"))
    model = ckpt["trainer"]["fields"][0]["model"]
    _assert_same(exported, {k.removeprefix("params."): v for k, v in model.items()}, rtol=0, atol=0)
    # what the checkpoint's model renders is what the PLY renders: a trainer resumed from it agrees
    trainer = _cfg(small_fox, tmp_path / "other", iterations=20).setup().trainer
    trainer.load_state_dict(ckpt["trainer"])
    _assert_same(exported, {k: v.detach() for k, v in trainer.model.params.items()}, rtol=0, atol=0)


def test_interrupted_anchored_run_exports_the_decoded_gaussians(small_fox, tmp_path):
    anchored = {"model": "anchored", "init_points": 2000, "anchored": AnchoredConfig(max_anchors=300, planes=(8, 16))}
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        _cfg(small_fox, out, iterations=20, **anchored).setup().run(progress=_interrupt_at(3))
    assert RunDir(out).status()["status"] == "interrupted"
    ckpt = read_checkpoint(RunDir(out))
    assert ckpt["trainer"]["model_kind"] == "anchored"
    exported = read_splat_ply(export_run(out))
    # the same Gaussians as the checkpoint's model decodes (what a resumed fit would render)
    trainer = _cfg(small_fox, tmp_path / "other", iterations=20, **anchored).setup().trainer
    trainer.load_state_dict(ckpt["trainer"])
    want = trainer.model.to_gaussian_model()
    assert exported["means"].shape[0] == want.num_gaussians > 0
    _assert_same(exported, {k: v.detach() for k, v in want.params.items()}, rtol=1e-5, atol=1e-5)
    assert exported["shN"].shape[1] == 15  # SH degree 3 decoded, as a complete run's splat.ply


def test_cli_export_of_an_interrupted_run(small_fox, tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        _cfg(small_fox, out, iterations=20).setup().run(progress=_interrupt_at(3))
    code = main(["export", str(out), "--out", str(tmp_path / "x.ply")])
    err = capsys.readouterr().err
    assert code == 0, err
    assert str(tmp_path / "x.ply") in err.replace("\n", "")
    assert read_splat_ply(tmp_path / "x.ply")["means"].shape[0] > 0


def _ct_run(tmp_path):
    from recon.ct.phantoms import shepp_logan_3d
    from recon.pipelines.ct import CTFitConfig
    from recon.pipelines.ct_simulate import CTSimulateConfig

    np.savez(tmp_path / "p.npz", volume=(shepp_logan_3d((8, 8, 8)) * 1000 - 1000).astype(np.float32),
             spacing_mm_zyx=np.array([2.0, 2.0, 2.0], np.float32))  # fmt: skip
    CTSimulateConfig(tmp_path / "p.npz", views=6, out=tmp_path / "scan", n_test=0, detector=16).run()
    CTFitConfig(tmp_path / "scan", method="sart", iterations=5, out=tmp_path / "ct").run()
    return tmp_path / "ct"


def _no_checkpoint_run(tmp_path):
    run = RunDir(tmp_path / "empty_run")
    run.mark("running", kind="capture")
    return run.root


def _torn_checkpoint_run(tmp_path):
    run = RunDir(tmp_path / "torn")
    run.mark("interrupted", kind="capture")
    run.checkpoints.mkdir()
    run.checkpoint_path(10).write_bytes(b"PK\x03\x04 half a zip")
    return run.root


def _bad_run_json(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "run.json").write_bytes(b"\xff\xfe{")
    return tmp_path / "bad"


@pytest.mark.parametrize(
    "make, needle",
    [
        (lambda p: p / "missing", "run folder not found"),
        (_no_checkpoint_run, "no splat.ply and no checkpoint"),
        (_torn_checkpoint_run, "ckpt_0000010.pt"),
        (_bad_run_json, "run.json"),
        (_ct_run, "CT run"),
    ],
    ids=["missing", "no-checkpoint", "torn-checkpoint", "bad-run-json", "ct-run"],
)
def test_folders_that_cannot_be_exported_are_one_line_errors(tmp_path, capsys, make, needle):
    run_dir = make(tmp_path)
    with pytest.raises(InputError, match=needle):
        load_run_params(run_dir)
    code = main(["export", str(run_dir), "--out", str(tmp_path / "x.ply")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], err
    assert not (tmp_path / "x.ply").exists()


def test_export_metadata_unchanged(small_fox, tmp_path):
    """Exporting reads the run; it does not touch run.json or metrics.json."""
    out = tmp_path / "run"
    _cfg(small_fox, out, iterations=2).setup().run()
    before = {name: (out / name).read_bytes() for name in ("run.json", "metrics.json", "config.json")}
    export_run(out)
    assert {name: (out / name).read_bytes() for name in before} == before
    assert json.loads(before["run.json"])["status"] == "complete"
