"""``recon eval`` with cameras from another world frame: Sim(3) alignment by shared view names,
test-time pose optimisation, and their errors (recon/pipelines/evaluate.py)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from recon.cli import main
from recon.errors import InputError
from recon.geometry.cameras import CameraSet, Intrinsics
from recon.pipelines.evaluate import align_to_run, eval_cameras, refine_eval_poses
from recon.poses.align import pose_errors
from recon.poses.refine import exp_so3, perturb_poses
from recon.splat.model import GaussianModel
from recon.splat.render import render_all
from tests.pipelines.conftest import make_capture

# source (calibrated) frame -> the "other" frame: x -> s R x + t
S, ROT, T = 0.37, exp_so3(torch.tensor([0.4, 1.1, -0.6], dtype=torch.float64)), torch.tensor([2.0, -1.0, 5.0], dtype=torch.float64)


def _moved_capture(fox_dir, dst, frames=slice(0, 12)):
    """The fox frames with every camera expressed in the S, ROT, T frame (OpenGL c2w: the
    rotation gets ROT on the left, the centre maps like a point)."""
    cap = make_capture(fox_dir, dst, frames=frames)
    meta = json.loads((cap / "transforms.json").read_text())
    for fr in meta["frames"]:
        m = torch.tensor(fr["transform_matrix"], dtype=torch.float64)
        m[:3, :3] = ROT @ m[:3, :3]
        m[:3, 3] = S * ROT @ m[:3, 3] + T
        fr["transform_matrix"] = m.tolist()
    (cap / "transforms.json").write_text(json.dumps(meta))
    return cap


def test_sim3_alignment_recovers_the_scores(tiny_capture_run, fox_dir, tmp_path):
    """Cameras given in a similarity frame score as the same cameras given in the run's frame."""
    plain = make_capture(fox_dir, tmp_path / "plain")
    moved = _moved_capture(fox_dir, tmp_path / "moved")
    ref = eval_cameras(tiny_capture_run, plain / "transforms.json", tmp_path / "e_ref")
    got = eval_cameras(tiny_capture_run, moved / "transforms.json", tmp_path / "e_sim3", align="sim3")
    raw = eval_cameras(tiny_capture_run, moved / "transforms.json", tmp_path / "e_none", align="none")
    assert ref["alignment"]["method"] == "none" and got["alignment"]["method"] == "sim3"
    a = got["alignment"]
    assert len(a["shared_views"]) == 4  # 3 trained + 1 evaluated in the run
    assert a["scale"] == pytest.approx(1 / S, rel=1e-5)
    torch.testing.assert_close(torch.tensor(a["rotation"], dtype=torch.float64), ROT.T, atol=1e-5, rtol=0)
    assert a["shared_rot_deg_max"] < 0.1 and a["shared_centre_pct_max"] < 1e-3
    for name, v in ref["views"].items():
        assert got["views"][name]["psnr"] == pytest.approx(v["psnr"], abs=0.02), name
    assert raw["mean"]["psnr"] < ref["mean"]["psnr"] - 3  # unaligned, the cameras see something else
    assert got["unseen"]["n_views"] == 12 - 3  # every view but the run's training views
    assert json.loads((tmp_path / "e_sim3" / "metrics.json").read_text())["alignment"]["method"] == "sim3"


def test_auto_alignment_follows_registration_json(tiny_capture_run, fox_dir, tmp_path):
    moved = _moved_capture(fox_dir, tmp_path / "moved")
    run = tmp_path / "run"
    shutil.copytree(tiny_capture_run, run)
    assert eval_cameras(run, moved / "transforms.json", tmp_path / "e1")["alignment"]["method"] == "none"
    (run / "registration.json").write_text("{}")  # what recon fit PHOTOS_DIR leaves: estimated poses
    assert eval_cameras(run, moved / "transforms.json", tmp_path / "e2")["alignment"]["method"] == "sim3"


def test_too_few_shared_views_is_a_one_line_error(tiny_capture_run, fox_dir, tmp_path, capsys):
    other = make_capture(fox_dir, tmp_path / "other", frames=slice(30, 32))  # no name in the run
    out = tmp_path / "e"
    code = main(["eval", str(tiny_capture_run), "--cameras", str(other / "transforms.json"), "--align", "sim3", "--out", str(out)])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert "shares 0 view name(s)" in lines[0] and "at least 3" in lines[0]
    assert not out.exists()


def test_align_to_run_errors():
    w2c = torch.eye(4, dtype=torch.float64).repeat(3, 1, 1)
    w2c[:, :3, 3] = torch.tensor([[0.0, 0, 0], [1, 1, 1], [2, 2, 2]])  # collinear centres
    with pytest.raises(InputError, match="do not fix a Sim"):
        align_to_run(["a", "b", "c"], w2c, ["a", "b", "c"], w2c, "x.json")
    with pytest.raises(InputError, match=r"shares 2 view name\(s\) with the run \(a, b\)"):
        align_to_run(["a", "b", "c"], w2c, ["a", "b", "z"], w2c, "x.json")
    with pytest.raises(ValueError, match=r"\[N, 4, 4\]"):
        align_to_run(["a", "b"], w2c, ["a", "b", "c"], w2c, "x.json")


@pytest.mark.parametrize("kwargs,match", [({"align": "umeyama"}, "--align"), ({"refine_steps": -1}, "--refine-steps"),
                                          ({"refine_lr": 0.0}, "--refine-lr")])  # fmt: skip
def test_bad_options(tiny_capture_run, tmp_path, kwargs, match):
    with pytest.raises(InputError, match=match):
        eval_cameras(tiny_capture_run, tmp_path / "none.json", tmp_path / "e", **kwargs)
    assert not (tmp_path / "e").exists()


def test_refine_eval_poses_recovers_perturbed_cameras():
    """Known answer: a photo rendered from a known camera of a random model; the camera 2 deg
    off comes back to within a third of that by pose-only fitting, the model untouched."""
    model = GaussianModel.random_in_box(600, torch.tensor([[-1.0, -1, -1], [1, 1, 1]]), sh_degree=0, init_opacity=0.8, seed=2)
    before = {k: v.detach().clone() for k, v in model.params.items()}
    true = torch.eye(4)[None].clone()
    true[0, :3, 3] = torch.tensor([0.3, -0.2, 4.0])
    intr = [Intrinsics(fx=70.0, fy=70.0, cx=32.0, cy=32.0, width=64, height=64)]
    bg = torch.zeros(3)
    photos = render_all(model, CameraSet(true, intr), 64, 64, 0, bg)
    noisy = perturb_poses(true.double(), rot_deg=2.0, trans_frac=0.0, seed=4).float()
    l1_before = float((render_all(model, CameraSet(noisy, intr), 64, 64, 0, bg) - photos).abs().mean())
    w2c, losses = refine_eval_poses(model, CameraSet(noisy, intr), photos, bg, steps=50, lr=5e-3)
    assert w2c.shape == (1, 4, 4) and len(losses) == 1
    ident = (1.0, torch.eye(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64))
    err0, err1 = pose_errors(noisy, true, ident), pose_errors(w2c, true, ident)
    assert err0["rot_deg_max"] == pytest.approx(2.0, abs=1e-3)
    assert err1["rot_deg_max"] < 2.0 / 3, err1["rot_deg"]
    assert losses[0] < l1_before / 2, (l1_before, losses)
    for k, v in model.params.items():
        assert torch.equal(v, before[k]), k
    with pytest.raises(ValueError, match="steps"):
        refine_eval_poses(model, CameraSet(noisy, intr), photos, bg, steps=0)
    with pytest.raises(ValueError, match="images"):
        refine_eval_poses(model, CameraSet(noisy, intr), photos[:0], bg, steps=1)
