"""End-to-end capture fitting on a small subset of the real fox capture."""

from __future__ import annotations

import json

import pytest
import torch

from recon.io.ply import read_splat_ply
from recon.io.run import RunDir
from recon.metrics import lpips_status
from recon.pipelines.capture import CaptureFitConfig
from recon.pipelines.evaluate import eval_cameras
from tests._floors import blank_floor, untrained_capture_scores


def _cfg(data, out, **kw) -> CaptureFitConfig:
    base = dict(
        data=data,
        out=out,
        train_views=(3,),
        eval_views=2,
        downscale=16.0,
        iterations=40,
        init_points=2000,
        mvs_max_points=2000,  # the fewview preset's stereo finds ~53k points here: 5x slower steps
        checkpoint_every=20,
    )
    base.update(kw)
    return CaptureFitConfig(**base)


@pytest.mark.slow  # ~20-35 s: 60 steps
def test_fit_writes_complete_run(small_fox, tmp_path):
    out = tmp_path / "run"
    job = _cfg(small_fox, out, iterations=60).setup()
    untrained = untrained_capture_scores(job)
    metrics = job.run()
    run = RunDir(out)
    assert run.is_complete()
    assert run.problems() == []
    for name in ("config.json", "metrics.json", "splat.ply", "loss.png", "log.jsonl", "cameras.json"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert set(saved["eval"]["views"]) == set(run.status()["eval_views"])
    assert len(list((out / "renders" / "eval").glob("*.png"))) == 2
    assert len(list((out / "compare" / "train").glob("*.png"))) == 3
    assert len(list((out / "photos" / "eval").glob("*.jpg"))) == 2
    cams = run.read_cameras()
    assert cams["train"][0] == run.status()["train_views"] and cams["eval"][0] == run.status()["eval_views"]
    torch.testing.assert_close(cams["train"][1].w2c, job.train.cameras.w2c, atol=1e-5, rtol=0)
    # LPIPS: scores for every view when its weights are on this machine, else the reason why not
    status = lpips_status()
    for split in ("train", "eval"):
        scores = saved[split]
        if status.available:
            assert scores["lpips"] == "available" and 0.0 <= scores["mean"]["lpips"] < 1.0
            assert all(0.0 <= v["lpips"] < 1.0 for v in scores["views"].values())
        else:
            assert scores["lpips"] == f"unavailable: {status.reason}"
            assert "lpips" not in scores["mean"] and not any("lpips" in v for v in scores["views"].values())
    # training did something: 60 steps gain ~5 dB over the untrained model (13.2 dB, 0.30 SSIM
    # on these views) and over any blank render (the background / mean colour: 12.0 dB)
    for split, gain in (("train", 3.0), ("eval", 2.0)):
        got, before = metrics[split]["mean"], untrained[split]
        views = job.train if split == "train" else job.eval
        blank = blank_floor(views.images, job.background)
        assert got["psnr"] > max(before["psnr"], blank["psnr"]) + gain, (split, got, before, blank)
        assert got["ssim"] > max(before["ssim"], blank["ssim"]) + 0.15, (split, got, before, blank)
    params = read_splat_ply(out / "splat.ply")
    assert params["means"].shape[0] == metrics["n_gaussians"]
    assert torch.isfinite(params["means"]).all()


def test_resume_continues_from_checkpoint(small_fox, tmp_path):
    out = tmp_path / "run"
    cfg = _cfg(small_fox, out, iterations=20, checkpoint_every=10)
    cfg.setup().run()
    # ask for more steps, resuming: starts at step 20, not 0
    job = _cfg(small_fox, out, iterations=40, checkpoint_every=10, resume=True).setup()
    seen = []
    job.run(progress=lambda s, t, st: seen.append(s))
    assert seen[0] == 21 and seen[-1] == 40
    assert RunDir(out).is_complete()


def test_existing_run_not_overwritten_without_flag(small_fox, tmp_path):
    from recon.errors import InputError

    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(InputError, match="not empty"):
        _cfg(small_fox, out).setup()
    assert (out / "keep.txt").read_text() == "precious"


def test_eval_other_cameras(small_fox, tmp_path, fox_dir):
    from tests.pipelines.conftest import make_capture

    out = tmp_path / "run"
    _cfg(small_fox, out, iterations=10).setup().run()
    other = make_capture(fox_dir, tmp_path / "other", frames=slice(20, 23))
    scores = eval_cameras(out, other / "transforms.json")
    assert scores["mean"]["n_views"] == 3
    renders = sorted(p.name for p in (out / "eval_transforms" / "renders").glob("*.png"))
    names = sorted(p.stem + ".png" for p in (other / "images").iterdir())
    assert renders == names


def test_eval_of_the_training_cameras_reproduces_metrics_json(small_fox, tmp_path):
    """``recon eval`` with exactly the training views scores what ``metrics.json["train"]`` says."""
    out = tmp_path / "run"
    metrics = _cfg(small_fox, out, iterations=10).setup().run()
    names = RunDir(out).status()["train_views"]
    meta = json.loads((small_fox / "transforms.json").read_text())
    meta["frames"] = [f for f in meta["frames"] if f["file_path"].split("/")[-1] in names]
    assert len(meta["frames"]) == 3
    cameras = small_fox / "train_only.json"
    cameras.write_text(json.dumps(meta))
    scores = eval_cameras(out, cameras)
    saved = json.loads((out / "metrics.json").read_text())["train"]
    assert set(scores["views"]) == set(saved["views"]) == set(names)
    for name, want in saved["views"].items():
        for metric in want:
            assert scores["views"][name][metric] == pytest.approx(want[metric], abs=1e-4), (name, metric)
    assert scores["mean"]["psnr"] == pytest.approx(saved["mean"]["psnr"], abs=1e-4)
    assert scores["mean"]["ssim"] == pytest.approx(saved["mean"]["ssim"], abs=1e-5)
    assert json.loads((out / "eval_train_only" / "metrics.json").read_text())["views"] == scores["views"]
