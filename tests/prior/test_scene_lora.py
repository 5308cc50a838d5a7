"""Per-scene LoRA fine-tuning of a local pipeline (recon.prior.scene_lora) on a tiny randomly
initialised Stable Diffusion image-to-image pipeline saved to tmp_path: the adapters train, change
the repair, are saved and load back to the same repair; `recon fit --prior.lora-steps` end to end.
Nothing here says whether fine-tuning helps (no real weights): only that the code path works."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from recon.cli import main
from recon.errors import InputError
from recon.io.run import RunDir
from recon.prior.repair import PretrainedImg2Img
from recon.prior.scene_lora import LORA_FILE, finetune_lora, save_lora
from tests.prior.tiny_diffusion import save_tiny_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora_pipelines")
    return {"img2img": save_tiny_pipeline(root / "img2img"), "lora": save_tiny_pipeline(root / "lora", lora=True),
            "controlnet": save_tiny_pipeline(root / "controlnet", controlnet=True)}  # fmt: skip


def _pairs(n=3, h=32, w=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    clean = F.interpolate(torch.rand(n, 3, h // 8, w // 8, generator=g), size=(h, w), mode="bilinear").permute(0, 2, 3, 1)
    return (0.5 * clean + 0.25).contiguous(), clean.contiguous()  # degraded: contrast halved


def test_finetune_changes_the_repair_and_reloads_exactly(pipelines, tmp_path):
    rep = PretrainedImg2Img(pipelines["img2img"], strength=0.5, steps=2)
    degraded, target = _pairs()
    before = rep(degraded, seed=3)
    losses = finetune_lora(rep.pipe, degraded, target, size=(32, 48), steps=30, rank=4, lr=1e-2, strength=0.5, seed=0)
    assert len(losses) == 30 and all(torch.isfinite(torch.tensor(losses)))
    assert rep.pipe.unet.peft_config  # the adapter is in the UNet
    after = rep(degraded, seed=3)
    assert not torch.allclose(after, before, atol=1e-3)
    path = save_lora(rep.pipe, tmp_path / "lora")
    assert path == tmp_path / "lora" / LORA_FILE and path.is_file()
    again = PretrainedImg2Img(pipelines["img2img"], strength=0.5, steps=2, lora=tmp_path / "lora")
    assert torch.allclose(again(degraded, seed=3), after, atol=1e-5)


def test_finetune_refuses_what_it_cannot_train(pipelines):
    degraded, target = _pairs()
    with_lora = PretrainedImg2Img(pipelines["lora"], strength=0.5, steps=2)
    with pytest.raises(InputError, match="already has LoRA weights"):
        finetune_lora(with_lora.pipe, degraded, target, size=(32, 48), steps=1)
    control = PretrainedImg2Img(pipelines["controlnet"], strength=0.5, steps=2)
    with pytest.raises(InputError, match="without ControlNet"):
        finetune_lora(control.pipe, degraded, target, size=(32, 48), steps=1)
    plain = PretrainedImg2Img(pipelines["img2img"], strength=0.5, steps=2)
    with pytest.raises(ValueError, match="target: expected shape"):
        finetune_lora(plain.pipe, degraded, target[:, :16], size=(32, 48), steps=1)
    with pytest.raises(ValueError, match="steps, rank, batch must be >= 1"):
        finetune_lora(plain.pipe, degraded, target, size=(32, 48), steps=0)


TINY = ["--preset", "plain", "--train-views", "3", "--eval-views", "1", "--downscale", "16", "--init-points", "500",
        "--checkpoint-every", "0", "--seed", "1", "--iterations", "12"]  # fmt: skip


def test_fit_fine_tunes_lora_on_the_scene_and_resume_loads_it(small_fox, tmp_path, pipelines, capsys):
    out = tmp_path / "run"
    prior = ["--prior", "pretrained", "--prior.pretrained", str(pipelines["img2img"]), "--prior.start", "5", "--prior.every", "5",
             "--prior.view-every", "1", "--prior.steps", "2", "--prior.strength", "0.5", "--prior.between", "1",
             "--prior.lora-steps", "4", "--prior.lora-rank", "2"]  # fmt: skip
    assert main(["fit", str(small_fox), "--out", str(out), *TINY, *prior]) == 0, capsys.readouterr().err
    run = RunDir(out)
    assert run.is_complete() and (run.prior_path("lora") / LORA_FILE).is_file()
    report = json.loads((out / "metrics.json").read_text())["prior"]["repair_model"]
    assert report["steps"] == 4 and report["rank"] == 2 and report["n_pairs"] == 3 and report["s_per_step"] > 0
    # a second run into the same folder with --resume finds the adapter and does not train again
    from recon.pipelines.capture import CaptureFitConfig
    from recon.prior.guidance import PriorConfig

    cfg = CaptureFitConfig(data=small_fox, out=out, preset="plain", train_views=(3,), eval_views=1, downscale=16.0, init_points=500,
                           seed=1, iterations=12, checkpoint_every=0, resume=True, prior="pretrained",
                           prior_options=PriorConfig(pretrained=pipelines["img2img"], start=5, every=5, view_every=1, steps=2,
                                                     strength=0.5, between=1, lora_steps=4, lora_rank=2))  # fmt: skip
    job = cfg.setup()
    assert job.guidance.repairer.ready and "loaded" in job.guidance.repairer.report
    # the options belong to --prior pretrained
    bad = ["fit", str(small_fox), "--out", str(tmp_path / "bad"), *TINY, "--prior", "repair", "--prior.lora-steps", "3"]
    assert main(bad) == 2
    assert "--prior.lora-steps: is an option of --prior pretrained, but --prior is repair" in capsys.readouterr().err
