"""recon_nerfstudio.splat_model / datamanager, in process on the CPU (tiny fox)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from nerfstudio.engine.callbacks import (
    TrainingCallbackAttributes,
    TrainingCallbackLocation,
)
from nerfstudio.engine.optimizers import Optimizers
from nerfstudio.models.splatfacto import SplatfactoModel
from recon_nerfstudio.methods import recon_splat
from recon_nerfstudio.splat_model import GAUSS_PARAM_NAMES

from recon.metrics import lpips_status, psnr
from recon.splat.strategy import DensifyStrategy
from tests._floors import assert_loss_falls
from tests.plugins._ns_loop import finite_with_gaussians, ns_callbacks, ns_train_steps

INIT_POINTS = 2000


def fox_config(tiny_fox: Path, **datamanager):
    config = copy.deepcopy(recon_splat.config)
    dm = config.pipeline.datamanager
    dm.data = tiny_fox
    dm.dataparser.train_views = 4
    dm.dataparser.downscale_factor = 8
    dm.init_points = INIT_POINTS
    for key, value in datamanager.items():
        setattr(dm, key, value)
    return config


def make_pipeline(tiny_fox: Path, test_mode: str = "val", **datamanager):
    return fox_config(tiny_fox, **datamanager).pipeline.setup(device="cpu", test_mode=test_mode)


@pytest.fixture(scope="module")
def pipeline(tiny_fox):
    return make_pipeline(tiny_fox)


def test_method_defaults_suit_this_machine():
    config = recon_splat.config
    assert config.machine.device_type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert config.max_num_iterations == 3000 and config.vis == "viewer"
    assert set(config.optimizers) == set(GAUSS_PARAM_NAMES)


def test_model_layout_is_splatfacto_on_cpu(pipeline):
    model = pipeline.model
    assert isinstance(model, SplatfactoModel)  # what ns-export and the viewer check
    assert model.device.type == "cpu"
    n = model.num_points
    assert n == INIT_POINTS  # photo-consistent initialisation (the capture has no SfM points)
    shapes = {k: tuple(v.shape) for k, v in model.gauss_params.items()}
    assert shapes == {"means": (n, 3), "scales": (n, 3), "quats": (n, 4), "features_dc": (n, 3),
                      "features_rest": (n, 15, 3), "opacities": (n, 1)}  # fmt: skip
    assert model.means is model.gauss_params["means"] and model.opacities is model.gauss_params["opacities"]
    assert not any("lpips" in name.lower() for name, _ in model.named_modules())  # no AlexNet built
    assert not pipeline.datamanager.cached_train[0]["image"].is_pinned()


def test_cpu_cache_mode_does_not_pin(tiny_fox):
    pipe = make_pipeline(tiny_fox, cache_images="cpu", init="random")
    assert pipe.datamanager.cached_train[0]["image"].device.type == "cpu"
    assert pipe.model.num_points == pipe.model.config.random_points


def test_initial_render_matches_recon_fit(pipeline, tiny_fox, tmp_path):
    """Same views, same initialisation recipe: the plugin renders what ``recon fit`` renders.

    A camera-convention slip (axes, c2w vs w2c, intrinsics) would cost many dB here.
    """
    from recon.pipelines.capture import CaptureFitConfig
    from recon.splat.render import render

    model, dm = pipeline.model, pipeline.datamanager
    model.eval()
    ours = {}
    for i, path in enumerate(dm.train_dataset.image_filenames):
        out = model.get_outputs_for_camera(dm.train_dataset.cameras[i : i + 1])
        gt = dm.cached_train[i]["image"].float() / 255.0
        assert out["rgb"].shape == gt.shape and out["depth"].shape == (*gt.shape[:2], 1)
        ours[path.name] = float(psnr(out["rgb"], gt))
    cfg = CaptureFitConfig(data=tiny_fox, out=tmp_path / "run", preset="plain", train_views=(4,), eval_views=2, downscale=8.0,
                           init_points=INIT_POINTS)  # fmt: skip
    job = cfg.setup()
    theirs = {}
    with torch.no_grad():
        for i, name in enumerate(job.train.names):
            c, _, _ = render(job.trainer.model, job.train.cameras, job.train.width, job.train.height, 0, job.background, [i])
            theirs[Path(name).name] = float(psnr(c[0, ..., :3].clamp(0, 1), job.train.images[i]))
    assert ours.keys() == theirs.keys()
    for name, value in ours.items():
        assert abs(value - theirs[name]) < 0.75, (name, value, theirs[name])


def test_image_metrics(pipeline):
    model, dm = pipeline.model, pipeline.datamanager
    model.eval()
    camera, batch = dm.next_eval_image(0)
    metrics, images = model.get_image_metrics_and_images(model.get_outputs_for_camera(camera), batch)
    assert {"psnr", "ssim"} <= metrics.keys()
    assert ("lpips" in metrics) == lpips_status().available  # never from random weights
    assert 3.0 < metrics["psnr"] < 40.0 and -1.0 <= metrics["ssim"] <= 1.0
    h, w = batch["image"].shape[:2]
    assert images["img"].shape == (h, 2 * w, 3)


def test_train_steps_densify_and_keep_optimizers_in_sync(tiny_fox):
    config = fox_config(tiny_fox)
    config.pipeline.model.densify = DensifyStrategy(start_iter=1, every=2, stop_iter=100,
                                                    reset_every=1000, grow_grad2d=1e-7)  # fmt: skip
    pipe = config.pipeline.setup(device="cpu", test_mode="val")
    model = pipe.model
    n0 = model.num_points

    # refines at step 2 (> start_iter, multiple of every)
    optimizers, _ = ns_train_steps(pipe, config, 4, max_num_iterations=None, schedulers=False, check=finite_with_gaussians)
    assert model.num_points > n0  # densification ran through nerfstudio's callbacks
    for name in GAUSS_PARAM_NAMES:
        group = optimizers.optimizers[name].param_groups[0]
        assert group["params"][0] is model.gauss_params[name]
        state = optimizers.optimizers[name].state[model.gauss_params[name]]
        assert state["exp_avg"].shape == model.gauss_params[name].shape


@torch.no_grad()
def train_view_psnr(pipe) -> float:
    """Mean PSNR of the model's renders of the training cameras against the cached images."""
    dm = pipe.datamanager
    pipe.eval()
    scores = [float(psnr(pipe.model.get_outputs_for_camera(dm.train_dataset.cameras[i : i + 1])["rgb"],
                         dm.cached_train[i]["image"].float() / 255.0)) for i in range(len(dm.cached_train))]  # fmt: skip
    return sum(scores) / len(scores)


def test_training_lowers_the_loss_and_improves_the_renders(tiny_fox, one_thread):
    """60 steps through nerfstudio's loop: the loss falls (first ten 0.37, last ten 0.26), the
    training views gain ~3.7 dB over the untrained model (8.4 -> 12.1), the held-out views ~1.4
    (7.9 -> 9.3; black background, so both start near a black image's score)."""
    config = fox_config(tiny_fox)
    pipe = config.pipeline.setup(device="cpu", test_mode="val")
    train_before, eval_before = train_view_psnr(pipe), pipe.get_average_eval_image_metrics()
    _, losses = ns_train_steps(pipe, config, 60, max_num_iterations=60)
    assert_loss_falls(losses, k=10, ratio=0.85)
    train_after, eval_after = train_view_psnr(pipe), pipe.get_average_eval_image_metrics()
    assert train_after > train_before + 2.0, (train_before, train_after)
    assert eval_after["psnr"] > eval_before["psnr"] + 0.7, (eval_before, eval_after)
    assert eval_after["ssim"] > eval_before["ssim"] + 0.01, (eval_before, eval_after)


def test_viewer_style_render_with_crop_box(pipeline):
    """What the web viewer does per frame: a camera from its state, optional crop box, eval mode."""
    from nerfstudio.cameras.cameras import CameraType
    from nerfstudio.data.scene_box import OrientedBox
    from nerfstudio.viewer.utils import CameraState, get_camera

    model = pipeline.model
    model.eval()
    c2w = pipeline.datamanager.train_dataset.cameras.camera_to_worlds[0]
    state = CameraState(fov=0.9, aspect=1.5, c2w=c2w, camera_type=CameraType.PERSPECTIVE)
    camera = get_camera(state, image_height=64)  # [1] camera, width 96
    model.set_background(torch.tensor([0.2, 0.3, 0.4]))
    full = model.get_outputs_for_camera(camera)
    assert full["rgb"].shape == (64, 96, 3) and full["depth"].shape == (64, 96, 1)
    empty = OrientedBox(R=torch.eye(3), T=torch.full((3,), 50.0), S=torch.ones(3))  # far from every Gaussian
    out = model.get_outputs_for_camera(camera, obb_box=empty)
    torch.testing.assert_close(out["rgb"], torch.tensor([0.2, 0.3, 0.4]).expand(64, 96, 3))
    model.set_crop(None)


def test_means_decay_follows_max_num_iterations(pipeline):
    """``--max-num-iterations`` sets the decay horizon (the method config gives none)."""
    config = fox_config(pipeline.datamanager.config.data)
    assert config.optimizers["means"]["scheduler"].max_steps is None
    optimizers, _ = ns_callbacks(pipeline, config, max_num_iterations=40)
    assert optimizers.schedulers["means"].lr_lambdas[0].max_steps == 40
    lr0 = optimizers.optimizers["means"].param_groups[0]["lr"]
    for step in range(40):
        optimizers.scheduler_step_all(step)
    assert optimizers.optimizers["means"].param_groups[0]["lr"] == pytest.approx(lr0 * 0.01)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (gsplat backend)")
def test_cuda_pipeline_uses_gsplat_and_trains(tiny_fox):
    pipe = fox_config(tiny_fox).pipeline.setup(device="cuda", test_mode="val")
    model = pipe.model
    assert model.device.type == "cuda"
    optimizers = Optimizers(copy.deepcopy(recon_splat.config.optimizers), pipe.get_param_groups())
    attrs = TrainingCallbackAttributes(optimizers=optimizers, grad_scaler=None, pipeline=pipe, trainer=None)
    callbacks = pipe.get_training_callbacks(attrs)
    pipe.train()
    for cb in callbacks:
        cb.run_callback_at_location(0, TrainingCallbackLocation.BEFORE_TRAIN_ITERATION)
    _, loss_dict, _ = pipe.get_train_loss_dict(0)
    sum(loss_dict.values()).backward()
    optimizers.optimizer_step_all()
    for cb in callbacks:
        cb.run_callback_at_location(0, TrainingCallbackLocation.AFTER_TRAIN_ITERATION)
    assert model.info["backend"] == "gsplat"
    model.eval()
    camera, batch = pipe.datamanager.next_eval_image(0)
    metrics, _ = model.get_image_metrics_and_images(model.get_outputs_for_camera(camera), batch)
    assert 3.0 < metrics["psnr"] < 40.0


def test_densification_window_follows_max_num_iterations(tiny_fox):
    """As ``recon fit``: refinement stops at 80 % of the run (here --max-num-iterations 500)."""
    config = fox_config(tiny_fox)
    pipe = config.pipeline.setup(device="cpu", test_mode="val")
    ns_callbacks(pipe, config, max_num_iterations=500)
    assert pipe.model.strategy.stop_iter == 400
    assert pipe.model.strategy == config.pipeline.model.densify.within(500)
