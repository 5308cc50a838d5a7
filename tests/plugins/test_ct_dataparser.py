"""recon_nerfstudio.ct_dataparser / ct_datamanager: a recon CT scan as nerfstudio data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recon_nerfstudio.convert import xray_cameras_from_nerfstudio
from recon_nerfstudio.ct_datamanager import ProjectionDataset, ReconCTDatamanagerConfig
from recon_nerfstudio.ct_dataparser import CTDataParserConfig, CTViews
from recon.ct.gaussians import xray_cameras
from recon.errors import InputError
from recon.io.formats import load_ct_data


def _outputs(scan, split="train", **kw):
    return CTDataParserConfig(data=scan, **kw).setup().get_dataparser_outputs(split)


def test_cameras_images_and_intrinsics(ct_scan):
    data = load_ct_data(ct_scan)
    train, evals = _outputs(ct_scan), _outputs(ct_scan, "val")
    assert train.cameras.shape == (12,) and evals.cameras.shape == (2,)
    assert len(train.image_filenames) == 12 and len(evals.image_filenames) == 2
    # intrinsics are recon's X-ray pinholes in detector pixels
    ref = xray_cameras(data.geometry)
    assert int(train.cameras.width[0]) == 32 and int(train.cameras.height[0]) == 32
    torch.testing.assert_close(train.cameras.get_intrinsics_matrices(), ref.Ks)
    assert float(train.cameras.fx[0]) == pytest.approx(3.5 * 32 / 2.0, rel=1e-6)  # dsd / pitch (32 mm volume, 2 mm pixels)
    assert float(train.cameras.cx[0]) == pytest.approx(16.0) and float(train.cameras.cy[0]) == pytest.approx(16.0)
    # world: recon's mm x world_scale; the volume spans [-1, 1], sources at dso = 80 mm -> 5 units
    s = train.dataparser_scale
    assert s == pytest.approx(2.0 / 32.0)
    torch.testing.assert_close(train.scene_box.aabb, torch.tensor([[-1.0] * 3, [1.0] * 3]))
    torch.testing.assert_close(train.cameras.camera_to_worlds[:, :3, 3].norm(dim=-1), torch.full((12,), 5.0))
    back = xray_cameras_from_nerfstudio(train.cameras, s)
    torch.testing.assert_close(back.viewmats, ref.viewmats, atol=1e-5, rtol=0)
    torch.testing.assert_close(back.centres, ref.centres, atol=1e-4, rtol=0)
    # evaluation: the dataset's test views, in the same units as training
    ct_train, ct_eval = train.metadata["ct"], evals.metadata["ct"]
    assert isinstance(ct_train, CTViews) and ct_train.split == "train" and ct_eval.split == "eval"
    assert ct_train.projection_scale == pytest.approx(float(np.abs(data.projections).max()))
    assert ct_eval.projection_scale == ct_train.projection_scale
    np.testing.assert_allclose(ct_eval.projections, data.test_projections)
    assert ct_train.volume is not None and ct_train.volume.shape == (16, 16, 16)


def test_projection_dataset_serves_normalised_float_images(ct_scan):
    outputs = _outputs(ct_scan)
    dataset = ProjectionDataset(outputs)
    item = dataset.get_data(5)
    assert item["image"].shape == (32, 32, 1) and item["image"].dtype == torch.float32
    ct = outputs.metadata["ct"]
    torch.testing.assert_close(item["image"][..., 0], torch.from_numpy(ct.projections[5] / ct.projection_scale))
    assert float(torch.stack([dataset.get_data(i)["image"] for i in range(12)]).abs().max()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="float32"):
        dataset.get_data(0, image_type="uint8")
    with pytest.raises(ValueError, match="camera_res_scale_factor"):
        ProjectionDataset(outputs, scale_factor=0.5)


def test_views_subset_is_recon_subset(ct_scan):
    data = load_ct_data(ct_scan)
    outputs = _outputs(ct_scan, views=4)
    idx = data.geometry.view_indices(4)
    assert outputs.cameras.shape == (4,)
    np.testing.assert_allclose(outputs.metadata["ct"].projections, data.projections[idx])
    ref = xray_cameras(data.geometry, list(idx))
    back = xray_cameras_from_nerfstudio(outputs.cameras, outputs.dataparser_scale)
    torch.testing.assert_close(back.viewmats, ref.viewmats, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kw,match", [({"views": 0}, "--views"), ({"views": 13}, "--views")])
def test_bad_view_count(ct_scan, kw, match):
    with pytest.raises(InputError, match=match):
        _outputs(ct_scan, **kw)


def test_bad_inputs_are_one_clear_error(ct_scan, tmp_path):
    with pytest.raises(InputError, match="not found"):
        _outputs(tmp_path / "missing")
    ref = tmp_path / "ref.npy"
    np.save(ref, np.zeros((8, 8, 8), np.float32))
    with pytest.raises(InputError, match="reference volume"):
        _outputs(ct_scan, reference=ref)


def test_datamanager_serves_train_and_eval_on_cpu(ct_scan):
    dm = ReconCTDatamanagerConfig(data=ct_scan).setup(device="cpu", test_mode="val")
    camera, batch = dm.next_train(0)
    assert camera.shape == (1,) and batch["image"].shape == (32, 32, 1)
    assert not dm.cached_train[0]["image"].is_pinned()
    camera, batch = dm.next_eval_image(0)
    assert batch["image"].shape == (32, 32, 1) and len(dm.eval_dataset) == 2
    assert dm.train_dataset.metadata["ct_initialise"] is True
    inference = ReconCTDatamanagerConfig(data=ct_scan).setup(device="cpu", test_mode="inference")
    assert inference.train_dataset.metadata["ct_initialise"] is False
