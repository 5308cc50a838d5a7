"""Few-view switches of the capture fit: each runs end to end, presets, validation, resume."""

from __future__ import annotations

import json
import math

import pytest
import torch

from recon.errors import InputError
from recon.io.run import RunDir
from recon.train import read_checkpoint
from recon.splat.config import PRESETS, apply_overrides
from recon.pipelines.capture import CaptureFitConfig
from recon.splat.regularizers import RegularizerConfig
from tests._floors import constant_image_scores, untrained_capture_scores


def _cfg(data, out, overrides: dict | None = None, **kw) -> CaptureFitConfig:
    base = {
        "data": data, "out": out, "preset": "plain", "train_views": (3,), "eval_views": 1, "downscale": 16.0,
        "iterations": 12, "init_points": 500, "checkpoint_every": 0,
    }
    base.update(kw)
    return apply_overrides(CaptureFitConfig(**base), overrides or {})


SWITCHES = {
    "opacity_scale": {"reg.opacity_reg": 0.01, "reg.scale_reg": 0.01, "reg.scale_ratio_reg": 0.01},
    "depth_smooth": {"reg.depth_smooth": 0.1},
    "dropout": {"reg.dropout": 0.2},
    "pseudo_depth": {"reg.depth_smooth": 0.1, "reg.pseudo_every": 2, "reg.pseudo_start": 0.0},
    "coreg": {"reg.coreg": 1.0, "reg.pseudo_every": 1, "reg.pseudo_start": 0.0},
    "refine_poses": {"refine_poses": True, "pose_lr": 1e-3},
    "hull": {"init": "hull", "masks": "threshold", "hull_resolution": 32},
    "prune_outliers": {"prune_outliers": True, "outlier_every": 5},
    "mvs": {"init": "mvs", "mvs_resolution": 120, "mvs_max_points": 2000},
}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "coreg" else n for n in SWITCHES])  # coreg: two fields
def test_each_switch_fits_and_writes_metrics(small_fox, tmp_path, name):
    out = tmp_path / name
    job = _cfg(small_fox, out, SWITCHES[name], iterations=30).setup()
    untrained = untrained_capture_scores(job)
    metrics = job.run()
    assert RunDir(out).is_complete()
    saved = json.loads((out / "metrics.json").read_text())
    # training did something. Plain preset, black background: a black image scores 4.8 dB on the
    # eval view, the untrained model 6.4-8.4 (train 6.9-9.2); 30 steps gain 2.8-3.9 dB on the
    # eval view and 3.5-5 dB on the training views with every switch
    black = constant_image_scores(job.eval.images, (0.0, 0.0, 0.0))
    got = saved["eval"]["mean"]
    assert got["psnr"] > max(untrained["eval"]["psnr"] + 1.5, black["psnr"] + 4.0), (got, untrained, black)
    assert saved["train"]["mean"]["psnr"] > untrained["train"]["psnr"] + 2.5, (saved["train"]["mean"], untrained)
    assert saved["n_gaussians"] == metrics["n_gaussians"] > 0
    config = json.loads((out / "config.json").read_text())
    for key, value in SWITCHES[name].items():
        group, _, field = key.rpartition(".")
        assert (config[group][field] if group else config[field]) == value
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss"]) for r in log)


def test_mvs_init_uses_stereo_points_and_tops_up(small_fox, tmp_path):
    trainer = _cfg(small_fox, tmp_path / "m", {"init": "mvs", "mvs_resolution": 120}, init_points=20_000).setup().trainer
    how = trainer.init_description
    assert "plane-sweep points" in how and "triangulated" in how and "photo-consistent" in how, how
    n_stereo = int(how.split(" plane-sweep")[0])
    assert n_stereo > 100  # the 3 fox views at 120 px overlap: stereo finds points
    assert trainer.fields[0].model.num_gaussians == 20_000  # topped up to --init-points
    capped = _cfg(small_fox, tmp_path / "c", {"init": "mvs", "mvs_resolution": 120, "mvs_max_points": 50}, init_points=10).setup().trainer
    assert "50 kept" in capped.init_description and capped.fields[0].model.num_gaussians == 50


def test_regularizer_terms_are_logged(small_fox, tmp_path):
    trainer = _cfg(small_fox, tmp_path / "r", {"reg.depth_smooth": 0.1, "reg.opacity_reg": 0.01, "reg.pseudo_every": 1,
                                                "reg.pseudo_start": 0.0}).setup().trainer
    stats = trainer.train_step()
    for term in ("opacity_reg", "depth_smooth", "pseudo_depth_smooth"):
        assert stats[term] > 0, term
    assert stats["loss"] > stats["l1"]


def test_presets(tmp_path):
    plain = CaptureFitConfig(data=tmp_path, preset="plain")
    assert plain.reg == RegularizerConfig() and not plain.prune_outliers
    assert plain.init == "auto" and not plain.background_mean
    few = CaptureFitConfig(data=tmp_path)  # the default preset
    assert few.preset == "fewview"
    for key, value in PRESETS["fewview"].items():
        group, _, field = key.rpartition(".")
        assert getattr(few.reg if group else few, field) == value
    assert few.init == "mvs" and few.background_mean and few.reg == RegularizerConfig()
    assert few.iterations == 1000 and few.coarse_to_fine == 0.5 and plain.iterations == 3000 and plain.coarse_to_fine == 0.0
    # an option given explicitly wins over the preset, also when it is the plain value
    assert CaptureFitConfig(data=tmp_path, iterations=3000, coarse_to_fine=0.0).iterations == 3000
    assert CaptureFitConfig(data=tmp_path, iterations=3000, coarse_to_fine=0.0).coarse_to_fine == 0.0
    mine = CaptureFitConfig(data=tmp_path, init="photo", reg=RegularizerConfig(dropout=0.3))
    assert mine.init == "photo" and mine.background_mean and mine.reg.dropout == 0.3
    with pytest.raises(ValueError, match="not an option"):
        apply_overrides(CaptureFitConfig(data=tmp_path), {"reg.nope": 1})


def test_background_mean_is_the_training_colour_and_saved(small_fox, tmp_path):
    job = _cfg(small_fox, tmp_path / "b", {"background_mean": True}, iterations=2).setup()
    expected = job.train.images.mean(dim=(0, 1, 2))
    assert torch.allclose(job.background, expected, atol=1e-4)
    assert float(expected.min()) > 0.1  # the fox photos are not black
    job.run()
    saved = json.loads((tmp_path / "b" / "config.json").read_text())
    assert saved["background"] == pytest.approx(expected.tolist(), abs=1e-4)


@pytest.mark.parametrize(
    "overrides, needle",
    [
        ({"init": "hull"}, "needs masks"),
        ({"init": "mvs", "mvs_resolution": 8}, "mvs-resolution"),
        ({"masks": "grabcut"}, "only by --init hull"),
        ({"reg.coreg": 1.0}, "pseudo-every"),
        ({"reg.dropout": 1.5}, "dropout"),
        ({"init": "hull", "masks": "threshold", "hull_fraction": 0.0}, "hull-fraction"),
    ],
)
def test_bad_switches_fail_before_writing(small_fox, tmp_path, overrides, needle):
    out = tmp_path / "run"
    with pytest.raises(InputError, match=needle):
        _cfg(small_fox, out, overrides).setup()
    assert not out.exists()


def test_mask_files_required_for_masks_files(small_fox, tmp_path):
    with pytest.raises(InputError, match="no mask files"):
        _cfg(small_fox, tmp_path / "run", {"init": "hull", "masks": "files"}).setup()


def test_coreg_trains_two_fields_and_resumes(small_fox, tmp_path):
    out = tmp_path / "run"
    sw = SWITCHES["coreg"]
    job = _cfg(small_fox, out, sw, iterations=6, checkpoint_every=3).setup()
    trainer = job.trainer
    assert len(trainer.fields) == 2
    job.run()
    fields = read_checkpoint(RunDir(out))["trainer"]["fields"]
    assert len(fields) == 2 and fields[1]["model"]["params.means"].shape[0] > 0
    a, b = trainer.fields[0].model.params["means"], trainer.fields[1].model.params["means"]
    assert a.shape != b.shape or not torch.equal(a, b)  # different fields (different init samples)
    seen = []
    _cfg(small_fox, out, sw, iterations=8, checkpoint_every=3, resume=True).setup().run(
        progress=lambda s, t, st: seen.append(s)
    )
    assert seen == [7, 8]


def test_pose_refinement_only_moves_training_views(small_fox, tmp_path):
    out = tmp_path / "run"
    job = _cfg(small_fox, out, SWITCHES["refine_poses"]).setup()
    eval_before = job.eval.cameras.w2c.clone()
    metrics = job.run()
    assert job.trainer.pose_refiner.n_views == 3
    corr = metrics["pose_corrections"]
    assert list(corr) == job.train.names
    first = corr[job.train.names[0]]
    assert first["rot_deg"] == 0.0 and first["trans"] == 0.0  # the first view pins the frame
    assert any(c["rot_deg"] > 0 or c["trans"] > 0 for c in corr.values())
    assert torch.equal(job.eval.cameras.w2c, eval_before)
    # cameras.json holds the refined training poses (what recon eval / render / export read back)
    saved = RunDir(out).read_cameras()
    names, train_cams = saved["train"]
    assert names == job.train.names
    assert torch.allclose(train_cams.w2c, job.trainer.train_cameras().w2c, atol=1e-6)
    assert not torch.allclose(train_cams.w2c, job.train.cameras.w2c, atol=1e-6)
    assert torch.allclose(saved["eval"][1].w2c, eval_before, atol=1e-6)


def test_outlier_pruning_during_training_removes_planted_floaters(small_fox, tmp_path):
    trainer = _cfg(small_fox, tmp_path / "run", {"prune_outliers": True}).setup().trainer
    trainer.train_step()  # Adam state exists now
    n = trainer.model.num_gaussians
    means = trainer.model.params["means"]
    centre, spread = means.detach().mean(0), means.detach().std(0).max()
    with torch.no_grad():
        means[:5] = centre + 50 * spread * torch.eye(3).repeat(2, 1)[:5]
    removed = trainer.prune_outliers()
    assert 5 <= removed < 0.05 * n
    assert trainer.model.num_gaussians == n - removed
    assert float((trainer.model.params["means"].detach() - centre).norm(dim=-1).max()) < 10 * spread
    trainer.strategy.check_sanity(trainer.model.params, trainer.optimizers)
    for name, opt in trainer.optimizers.items():
        state = opt.state[opt.param_groups[0]["params"][0]]
        assert state["exp_avg"].shape[0] == trainer.model.num_gaussians, name
    trainer.train_step()  # training goes on with the smaller model


def test_cli_preset_and_nested_flags(small_fox, tmp_path, capsys):
    from recon.cli import main

    out = tmp_path / "run"
    code = main(["fit", str(small_fox), "--out", str(out), "--train-views", "3", "--downscale", "16",
                 "--iterations", "6", "--init-points", "500", "--eval-views", "1",
                 "--preset", "fewview", "--reg.dropout", "0.2", "--mvs-max-points", "2000"])
    assert code == 0, capsys.readouterr().err
    config = json.loads((out / "config.json").read_text())
    assert config["preset"] == "fewview" and config["reg"]["dropout"] == 0.2
    assert config["init"] == PRESETS["fewview"]["init"] and config["background_mean"]
    assert config["background"] != [0.0, 0.0, 0.0]  # the mean colour actually used
