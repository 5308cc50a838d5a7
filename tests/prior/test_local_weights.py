"""recon.prior.local_weights: one-line errors for a weights folder, and a good folder loads."""

from __future__ import annotations

import pytest
from diffusers import UNet2DModel

from recon.errors import InputError
from recon.prior.local_weights import WEIGHT_FILES, load_local, save_local


def _tiny_unet() -> UNet2DModel:
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(4, 4),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       layers_per_block=1, norm_num_groups=2)  # fmt: skip


def test_a_saved_model_loads(tmp_path):
    _tiny_unet().save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(WEIGHT_FILES)
    assert isinstance(load_local(UNet2DModel, tmp_path, "test", "scripts/x.py"), UNet2DModel)


def test_missing_and_corrupt_files_are_one_line(tmp_path):
    with pytest.raises(InputError, match=r"no test weights here \(missing config.json, diffusion_pytorch_model.safetensors\).*scripts/x.py"):
        load_local(UNet2DModel, tmp_path, "test", "scripts/x.py")
    _tiny_unet().save_pretrained(tmp_path)
    (tmp_path / WEIGHT_FILES[1]).write_bytes(b"not safetensors")
    with pytest.raises(InputError, match="could not load the test weights") as err:
        load_local(UNet2DModel, tmp_path, "test", "scripts/x.py")
    assert "\n" not in str(err.value)


def test_save_local_replaces_the_weights_and_keeps_the_card(tmp_path):
    import torch

    folder = tmp_path / "w"
    folder.mkdir()
    (folder / "MODEL_CARD.md").write_text("card")
    a = _tiny_unet()
    size = save_local(a, folder)
    assert size == (folder / WEIGHT_FILES[1]).stat().st_size > 0
    b = _tiny_unet()
    with torch.no_grad():
        for p in b.parameters():
            p.add_(1.0)
    save_local(b, folder)
    loaded = load_local(UNet2DModel, folder, "test", "scripts/x.py")
    assert all(torch.equal(p, q) for p, q in zip(loaded.parameters(), b.parameters()))
    assert (folder / "MODEL_CARD.md").read_text() == "card"
    assert sorted(f.name for f in tmp_path.iterdir()) == ["w"]  # no temporary folder left
