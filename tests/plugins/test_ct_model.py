"""recon_nerfstudio.ct_model and the ``recon-ct`` method, on the CPU (tiny simulated scan)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import tyro
import yaml
from recon_nerfstudio.ct_model import ReconCTModel
from recon_nerfstudio.methods import ct_optimizers, recon_ct

from recon.ct.gaussian_trainer import GaussianFitConfig, GaussianTrainer
from recon.ct.gaussians import PARAM_NAMES, render_xray, xray_cameras
from recon.io.formats import load_ct_data
from tests._floors import assert_loss_falls, constant_volume_scores
from tests.plugins._ns_loop import finite_with_gaussians, ns_train_steps

N_GAUSSIANS = 800
FIT = GaussianFitConfig()
"""``recon ct fit``'s defaults, which recon-ct follows."""


def ct_config(scan: Path, **model):
    config = copy.deepcopy(recon_ct.config)
    config.pipeline.datamanager.data = scan
    config.pipeline.model.n_gaussians = N_GAUSSIANS
    for key, value in model.items():
        setattr(config.pipeline.model, key, value)
    return config


@pytest.fixture(scope="module")
def pipeline(ct_scan):
    """An untrained pipeline (tests that train build their own)."""
    return ct_config(ct_scan).pipeline.setup(device="cpu", test_mode="val")


def run_steps(pipe, config, n_steps: int, max_num_iterations: int):
    """nerfstudio's training loop for ``n_steps``; the loss stays finite and Gaussians remain."""
    return ns_train_steps(pipe, config, n_steps, max_num_iterations, check=finite_with_gaussians)


def test_method_defaults_follow_recon_ct_fit():
    config = recon_ct.config
    assert config.machine.device_type == ("cuda" if torch.cuda.is_available() else "cpu")
    # recon's steps of batch_views projections, one projection per step here
    assert config.max_num_iterations == FIT.iterations * FIT.batch_views
    assert set(config.optimizers) == set(PARAM_NAMES)
    assert config.optimizers["means"]["optimizer"].lr == pytest.approx(FIT.lr_means)  # voxels
    for group in config.optimizers.values():
        sched = group["scheduler"]
        assert sched.max_steps is None  # follows --max-num-iterations
        assert sched.lr_final == pytest.approx(group["optimizer"].lr * FIT.lr_final_ratio)
    assert config.viewer.default_composite_depth is False
    assert ct_optimizers().keys() == config.optimizers.keys()


def test_initialisation_is_recon_gaussian_trainer(pipeline, ct_scan):
    model = pipeline.model
    assert isinstance(model, ReconCTModel) and model.device.type == "cpu"
    data = load_ct_data(ct_scan)
    theirs = GaussianTrainer(data.projections, data.geometry, model.fit_config).model
    for name in PARAM_NAMES:
        torch.testing.assert_close(model.gaussians.params[name].detach(), theirs.params[name].detach())
    assert float(model.density_unit) == pytest.approx(theirs.density_unit)
    assert model.num_points == N_GAUSSIANS


def test_render_matches_recon_render_xray(pipeline, ct_scan):
    """Adapter parity: nerfstudio cameras -> recon's render_xray gives recon's own images."""
    model, dm = pipeline.model, pipeline.datamanager
    model.eval()
    data = load_ct_data(ct_scan)
    act = model.gaussians.activated()
    with torch.no_grad():
        theirs, _ = render_xray(**act, cameras=xray_cameras(data.geometry))  # [12, 32, 32]
        test, _ = render_xray(**act, cameras=xray_cameras(data.test_geometry))
    for i in range(12):
        out = model.get_outputs_for_camera(dm.train_dataset.cameras[i : i + 1])
        assert out["projection"].shape == (32, 32, 1) and out["rgb"].shape == (32, 32, 3)
        torch.testing.assert_close(out["projection"][..., 0], theirs[i], atol=1e-5, rtol=1e-4)
    for i in range(2):
        out = model.get_outputs_for_camera(dm.eval_dataset.cameras[i : i + 1])
        torch.testing.assert_close(out["projection"][..., 0], test[i], atol=1e-5, rtol=1e-4)
    # the FDK/SART-initialised Gaussians already explain the projections (images peak at 1)
    gt = dm.cached_train[0]["image"]
    assert float((model.get_outputs_for_camera(dm.train_dataset.cameras[0:1])["projection"] - gt).abs().mean()) < 0.05


def test_image_metrics_and_volume(pipeline):
    model = pipeline.model
    model.eval()
    camera, batch = pipeline.datamanager.next_eval_image(0)
    metrics, images = model.get_image_metrics_and_images(model.get_outputs_for_camera(camera), batch)
    assert {"psnr", "ssim", "psnr_3d"} <= metrics.keys()
    assert 15.0 < metrics["psnr"] < 60.0 and 0.0 < metrics["ssim"] <= 1.0
    # the SART-initialised Gaussians are a reconstruction already (23.5 dB), far from blank (14.1)
    blank = constant_volume_scores(model.reference)
    assert blank["psnr_3d"] + 5.0 < metrics["psnr_3d"] < 60.0, (metrics["psnr_3d"], blank)
    assert images["img"].shape == (32, 64, 3) and images["slices"].shape == (16, 32, 3)
    vol = model.volume()
    assert vol.shape == (16, 16, 16) and vol is model.volume()  # cached for the step
    # 1/mm: the phantom's attenuation range is about 0..0.04 / mm
    assert 0.005 < float(vol.max()) < 0.1


def test_bad_camera_input(pipeline):
    cams = pipeline.datamanager.train_dataset.cameras
    with pytest.raises(ValueError, match="one camera"):
        pipeline.model.get_outputs(cams[0:2])
    with pytest.raises(ValueError, match="Cameras"):
        pipeline.model.get_outputs("camera")


def test_training_steps_density_control_and_decay_horizon(ct_scan):
    config = ct_config(ct_scan, densify_from=2, densify_every=2, densify_until=6)
    pipe = config.pipeline.setup(device="cpu", test_mode="val")
    model = pipe.model
    n0 = model.num_points
    optimizers, _ = run_steps(pipe, config, 8, max_num_iterations=8)
    assert model.num_points > n0  # recon's clone/split ran through the callback (at recon steps 2, 4, 6)
    for name in PARAM_NAMES:
        opt = optimizers.optimizers[name]
        param = model.gaussians.params[name]
        assert opt.param_groups[0]["params"][0] is param and optimizers.parameters[name][0] is param
        assert opt.state[param]["exp_avg"].shape == param.shape
    # every rate reached lr_final after max_num_iterations steps; the means' rate is x voxel (2 mm)
    lr = {k: o.param_groups[0]["lr"] for k, o in optimizers.optimizers.items()}
    assert lr["means"] == pytest.approx(FIT.lr_means * 2.0 * FIT.lr_final_ratio)
    assert lr["densities"] == pytest.approx(FIT.lr_densities * FIT.lr_final_ratio)
    factor = optimizers.schedulers["means"].lr_lambdas[0]
    assert factor.max_steps == 8 and factor.lr_scale == 2.0


def eval_scores(pipe) -> list[dict]:
    """``get_image_metrics_and_images`` of every eval projection."""
    pipe.eval()
    out = []
    for i in range(len(pipe.datamanager.eval_dataset)):
        camera, batch = pipe.datamanager.next_eval_image(i)
        out.append(pipe.model.get_image_metrics_and_images(pipe.model.get_outputs_for_camera(camera), batch)[0])
    return out


def test_training_lowers_the_loss_and_improves_the_held_out_projections(ct_scan, one_thread):
    """60 steps (12 recon steps) from the SART-initialised Gaussians: the loss halves (first ten
    0.084, last ten 0.039), the held-out projections gain ~6.6 dB (27.0 -> 33.6) and SSIM ~0.1."""
    config = ct_config(ct_scan)
    pipe = config.pipeline.setup(device="cpu", test_mode="val")
    before = eval_scores(pipe)
    _, losses = run_steps(pipe, config, 60, max_num_iterations=60)
    assert_loss_falls(losses, k=10, ratio=0.7)
    after = eval_scores(pipe)
    assert len(after) == 2
    for b, a in zip(before, after):
        assert a["psnr"] > b["psnr"] + 3.0 and a["ssim"] > b["ssim"] + 0.04, (b, a)
    # the volume stays a reconstruction (23.1 dB; the 3D score dips early in a fit, then rises)
    blank = constant_volume_scores(pipe.model.reference)
    assert after[0]["psnr_3d"] > blank["psnr_3d"] + 5.0, (after[0]["psnr_3d"], blank)


def test_checkpoint_resize_and_inference_mode(ct_scan):
    """A checkpoint with another number of Gaussians loads into a model built without initialising."""
    config = ct_config(ct_scan, densify_from=2, densify_every=2, densify_until=4)
    pipe = config.pipeline.setup(device="cpu", test_mode="val")
    run_steps(pipe, config, 4, max_num_iterations=4)
    state = {k: v.detach().clone() for k, v in pipe.state_dict().items()}
    inference = config.pipeline.setup(device="cpu", test_mode="inference")
    assert inference.model.recon_trainer is None and inference.model.num_points == 4
    inference.load_pipeline(state, step=3)
    assert inference.model.num_points == pipe.model.num_points != N_GAUSSIANS
    assert inference.model.gaussians.density_unit == pytest.approx(pipe.model.gaussians.density_unit)
    camera = pipe.datamanager.train_dataset.cameras[2:3]
    pipe.eval()
    inference.eval()
    torch.testing.assert_close(
        inference.model.get_outputs_for_camera(camera)["projection"], pipe.model.get_outputs_for_camera(camera)["projection"]
    )


def test_viewer_style_render_with_crop_box(pipeline):
    from nerfstudio.cameras.cameras import CameraType
    from nerfstudio.data.scene_box import OrientedBox
    from nerfstudio.viewer.utils import CameraState, get_camera

    model = pipeline.model
    model.eval()
    c2w = pipeline.datamanager.train_dataset.cameras.camera_to_worlds[0]
    camera = get_camera(CameraState(fov=0.6, aspect=1.5, c2w=c2w, camera_type=CameraType.PERSPECTIVE), image_height=24)
    full = model.get_outputs_for_camera(camera)
    assert full["rgb"].shape == (24, 36, 3) and full["depth"].shape == (24, 36, 1)
    assert float(full["projection"].max()) > 0.1
    empty = OrientedBox(R=torch.eye(3), T=torch.full((3,), 50.0), S=torch.ones(3))
    torch.testing.assert_close(model.get_outputs_for_camera(camera, obb_box=empty)["rgb"], torch.zeros(24, 36, 3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_pipeline_trains(ct_scan):
    config = ct_config(ct_scan)
    pipe = config.pipeline.setup(device="cuda", test_mode="val")
    assert pipe.model.gaussians.params["means"].device.type == "cuda"
    run_steps(pipe, config, 2, max_num_iterations=2)
    pipe.eval()
    camera, batch = pipe.datamanager.next_eval_image(0)
    metrics, _ = pipe.model.get_image_metrics_and_images(pipe.model.get_outputs_for_camera(camera), batch)
    assert 10.0 < metrics["psnr"] < 60.0


# ---------------------------------------------------------------------- ns-train / ns-eval
ITERATIONS = 30


@pytest.mark.slow  # imports every nerfstudio method config (~20 s on a busy 2-core machine)
def test_ns_train_recon_ct_then_ns_eval(ct_scan, tmp_path):
    """``ns-train recon-ct`` and ``ns-eval`` in this process, through the entry points' own tyro parsing."""
    from nerfstudio.configs.method_configs import AnnotatedBaseConfigUnion
    from nerfstudio.scripts.eval import ComputePSNR
    from nerfstudio.scripts.train import main as train_main

    args = [
        "recon-ct", "--data", str(ct_scan), "--output-dir", str(tmp_path), "--experiment-name", "phantom",
        "--timestamp", "run", "--max-num-iterations", str(ITERATIONS), "--vis", "tensorboard",
        "--steps-per-eval-image", "3", "--steps-per-eval-all-images", "1000",
        "--pipeline.model.n-gaussians", str(N_GAUSSIANS), "--pipeline.model.densify-from", "2",
        "--pipeline.model.densify-every", "2", "--pipeline.model.densify-until", "4", "recon-ct-data", "--views", "8",
    ]  # fmt: skip
    train_main(tyro.cli(AnnotatedBaseConfigUnion, args=args))
    run_dir = tmp_path / "phantom" / "recon-ct" / "run"
    ckpt = run_dir / "nerfstudio_models" / f"step-{ITERATIONS - 1:09d}.ckpt"
    assert ckpt.is_file() and (run_dir / "config.yml").is_file() and (run_dir / "dataparser_transforms.json").is_file()
    state = torch.load(ckpt, map_location="cpu")  # weights_only: plain tensors, floats and ints
    means = state["pipeline"]["_model.gaussians.params.means"]
    assert means.ndim == 2 and means.shape[1] == 3 and torch.isfinite(means).all()
    assert means.shape[0] != N_GAUSSIANS  # density control ran at recon steps 2 and 4
    assert state["schedulers"]["means"]["lr_lambdas"][0]["max_steps"] == ITERATIONS
    assert state["optimizers"]["means"]["param_groups"][0]["lr"] == pytest.approx(FIT.lr_means * 2.0 * FIT.lr_final_ratio)
    config = yaml.load((run_dir / "config.yml").read_text(), Loader=yaml.Loader)
    assert config.method_name == "recon-ct" and config.pipeline.datamanager.dataparser.views == 8
    assert json.loads((run_dir / "dataparser_transforms.json").read_text())["scale"] == pytest.approx(2.0 / 32.0)

    out = tmp_path / "eval.json"
    tyro.cli(ComputePSNR, args=["--load-config", str(run_dir / "config.yml"), "--output-path", str(out)]).main()
    results = json.loads(out.read_text())["results"]
    assert results["psnr"] < 60.0 and results["psnr_3d"] < 60.0
    # training did something: the same pipeline without the checkpoint (SART-initialised
    # Gaussians) scores 25.2 dB / SSIM 0.81 on the held-out projections, 30 steps 31.6 / 0.90;
    # the volume (22.0 dB) is far from blank (the best constant volume: 14.1)
    untrained = config.pipeline.setup(device="cpu", test_mode="test")
    untrained.eval()
    before = untrained.get_average_eval_image_metrics()
    assert results["psnr"] > before["psnr"] + 2.0 and results["ssim"] > before["ssim"] + 0.02, (results, before)
    blank = constant_volume_scores(untrained.model.reference)
    assert results["psnr_3d"] > blank["psnr_3d"] + 5.0, (results, blank)

    # resume (--load-dir): the optimisers follow the checkpoint's resized Parameters, decays the new horizon
    from nerfstudio.engine.trainer import Trainer

    config.load_dir = run_dir / "nerfstudio_models"
    config.output_dir, config.timestamp, config.max_num_iterations = tmp_path / "resumed", "run", 3
    trainer = Trainer(config)
    trainer.setup()
    model = trainer.pipeline.model
    assert model.num_points == means.shape[0]
    torch.testing.assert_close(model.gaussians.params["means"].detach(), means)
    for name, opt in trainer.optimizers.optimizers.items():
        assert opt.param_groups[0]["params"][0] is model.gaussians.params[name]
    assert trainer.optimizers.schedulers["means"].lr_lambdas[0].max_steps == 3
    trainer.train_iteration(ITERATIONS)
    assert not torch.equal(means, model.gaussians.params["means"].detach())
