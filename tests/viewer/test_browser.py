"""The viewer in a real browser (Debian's Chromium, WebGL2 on SwiftShader) for tiny synthetic
capture and CT runs: no console error, canvases not blank, clicks and presets change the image,
256x256 snapshots match the committed references, bad runs show banners, running runs update.
Screenshots are written to ``runs/test-artifacts/viewer/``."""

from __future__ import annotations

import json
import os
import shutil
import time

import numpy as np
import pytest
from PIL import Image

from tests.viewer.browser import ViewerPage, assert_not_blank, assert_snapshot, launch, mean_abs_diff

pytestmark = pytest.mark.slow

CAPTURE_CANVAS = "canvas.view-canvas"
CT_LEFT = ".nv-pane >> nth=0 >> canvas"
CT_RIGHT = ".nv-pane >> nth=1 >> canvas"


@pytest.fixture(scope="module")
def browser():
    # playwright is in the test extra: a missing one is an error, not a skip
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = launch(playwright)
        yield chromium
        chromium.close()


@pytest.fixture
def open_page(browser, artifacts, request):
    pages = []

    def _open(server, query: str = "") -> ViewerPage:
        page = ViewerPage(browser, server.url + query, artifacts, f"{request.node.name}-{len(pages)}")
        pages.append(page)
        return page

    yield _open
    for page in pages:
        page.shot("final")
        page.close()


def centroid(img: np.ndarray, colour: str) -> np.ndarray | None:
    """Mean (x, y) in 0..1 of the pixels of one marker colour, or None when there are too few."""
    r, g, b = (img[..., i].astype(np.int16) for i in range(3))
    mask = {
        "red": (r > 140) & (g < 90) & (b < 90),
        "green": (g > 120) & (r < 90) & (b < 90),
        "blue": (b > 150) & (r < 110) & (g < 150),
    }[colour]
    if mask.sum() < 0.002 * mask.size:
        return None
    ys, xs = np.nonzero(mask)
    return np.array([(xs.mean() + 0.5) / img.shape[1], (ys.mean() + 0.5) / img.shape[0]])


def test_capture(capture_run, serve_runs, open_page, artifacts):
    page = open_page(serve_runs(capture_run), "?size=256")
    page.first_frame()
    default = page.canvas(CAPTURE_CANVAS)
    assert default.shape == (256, 256, 3)
    assert_not_blank(default, "splat canvas")
    assert_snapshot(default, "capture_default.png", artifacts)
    page.shot("default")

    # picking: click the middle of train_000's frustum (nearest to the starting view)
    spot = page.js("() => window.__viewer.api.projectView('train_000.jpg')")
    assert spot and spot["visible"], spot
    page.page.mouse.click(spot["x"], spot["y"])
    page.wait_for("window.__viewer.api.selected() === 'train_000.jpg'", 10, "the clicked frustum to be selected")
    page.settle()
    picked = page.canvas(CAPTURE_CANVAS)
    assert mean_abs_diff(picked, default) > 3, "clicking a frustum did not move the view"

    # the camera strip: another camera, its render · photo · error and its scores
    metrics = json.loads((capture_run / "metrics.json").read_text())
    page.page.click("[data-view='train_002.jpg']")
    page.settle()
    at_camera = page.canvas(CAPTURE_CANVAS)
    assert mean_abs_diff(at_camera, picked) > 3, "clicking a camera did not change the image"
    panel = page.page.inner_text("#compare-panel")
    assert f"PSNR {metrics['train']['views']['train_002.jpg']['psnr']:.2f} dB" in panel
    assert page.page.locator("#compare-panel img.compare-img").evaluate("img => img.complete && img.naturalWidth") == 3 * 64
    assert_snapshot(at_camera, "capture_train_002.png", artifacts)
    page.shot("train_002")

    # seen from the camera, the model looks like the photo: same place for each coloured blob
    photo = np.asarray(Image.open(capture_run / "photos" / "train" / "train_002.jpg").convert("RGB"))
    for colour in ("red", "green", "blue"):
        expected, seen = centroid(photo, colour), centroid(at_camera, colour)
        assert expected is not None and seen is not None, colour
        assert np.linalg.norm(expected - seen) < 0.08, f"{colour} blob at {seen} in the viewer, {expected} in the photo"

    # points-only fallback
    page.page.click("[data-mode='points']")
    page.wait_for("document.querySelector('.pane-note').textContent.startsWith('points only')", 30, "the points view")
    page.settle()
    points = page.canvas(CAPTURE_CANVAS)
    assert_not_blank(points, "points canvas")
    assert mean_abs_diff(points, at_camera) > 2
    page.assert_clean()


def test_capture_side_by_side_linked(capture_run, capture_run_b, serve_runs, open_page):
    page = open_page(serve_runs(capture_run, capture_run_b), "?size=256")
    page.first_frame()
    left, right = f"{CAPTURE_CANVAS} >> nth=0", f"{CAPTURE_CANVAS} >> nth=1"
    assert page.page.locator(CAPTURE_CANVAS).count() == 2
    before = [page.canvas(left), page.canvas(right)]
    for img, side in zip(before, ("left", "right")):
        assert_not_blank(img, f"{side} pane")
    assert mean_abs_diff(*before) > 1, "the two runs render identically"
    box = page.page.locator(left).bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.page.mouse.move(x, y)
    page.page.mouse.down()
    page.page.mouse.move(x + 60, y + 10, steps=6)
    page.page.mouse.up()
    page.settle()
    after = [page.canvas(left), page.canvas(right)]
    assert mean_abs_diff(after[0], before[0]) > 3, "dragging did not orbit the left view"
    assert mean_abs_diff(after[1], before[1]) > 3, "the right view did not follow the left one"
    page.assert_clean()


def test_ct(ct_run, serve_runs, open_page, artifacts):
    page = open_page(serve_runs(ct_run), "?size=256&layout=axial&preset=soft")
    page.first_frame()
    axial = page.canvas(CT_LEFT)
    assert axial.shape == (256, 256, 3)
    assert_not_blank(axial, "axial slice")
    assert_snapshot(axial, "ct_axial_soft.png", artifacts)
    reference = page.canvas(CT_RIGHT)
    assert_not_blank(reference, "reference slice")
    page.shot("axial-soft")

    page.page.click("[data-preset='bone']")
    page.settle()
    bone = page.canvas(CT_LEFT)
    assert mean_abs_diff(bone, axial) > 3, "the bone preset did not change the image"
    assert page.js("() => window.__viewer.api.window()") == [2500, 480]
    reference_bone = page.canvas(CT_RIGHT)
    assert mean_abs_diff(reference_bone, reference) > 3, "the reference did not take the window"

    box = page.page.locator(CT_LEFT).bounding_box()
    page.page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    for _ in range(6):
        page.page.mouse.wheel(0, 120)
        time.sleep(0.05)
    page.settle()
    other_slice = page.canvas(CT_LEFT)
    assert mean_abs_diff(other_slice, bone) > 1, "scrolling did not change the slice"
    assert mean_abs_diff(page.canvas(CT_RIGHT), reference_bone) > 1, "the reference did not follow to the same slice"

    page.page.fill("#slab-mm", "40")
    page.page.check("#mip")
    page.wait_for("document.querySelector('.pane-note').textContent.includes('MIP 40 mm')", 30, "the MIP")
    page.settle()
    mip = page.canvas(CT_LEFT)
    assert mean_abs_diff(mip, other_slice) > 1, "the MIP looks like the slice"

    page.page.select_option("#right", "difference")
    page.wait_for("document.querySelectorAll('.pane-note')[1].textContent.startsWith('difference')", 30, "the difference view")
    page.settle()
    difference = page.canvas(CT_RIGHT)
    assert_not_blank(difference, "difference", min_fraction=0.01, min_std=2.0)
    assert mean_abs_diff(difference, reference) > 3
    assert_not_blank(page.canvas("canvas.scan-canvas"), "scan geometry")
    page.shot("mip-difference")
    page.assert_clean()


def test_ct_planes_and_3d(ct_run, serve_runs, open_page, artifacts):
    page = open_page(serve_runs(ct_run), "?size=256&layout=mpr&preset=lung")
    page.first_frame()
    mpr = page.canvas(CT_LEFT)
    assert_not_blank(mpr, "planes + 3D")
    assert_snapshot(mpr, "ct_mpr_lung.png", artifacts)
    page.page.select_option("#layout", "render")
    page.settle()
    render = page.canvas(CT_LEFT)
    assert_not_blank(render, "3D render")
    assert mean_abs_diff(render, mpr) > 3
    page.assert_clean()


def test_bad_runs_show_banners(old_capture_run, failed_run, ct_old_run, serve_runs, open_page):
    page = open_page(serve_runs(old_capture_run, failed_run, ct_old_run), "?size=256&beside=none")
    page.first_frame()  # the splat still shows without cameras.json
    assert "no cameras.json (run written by an older recon)" in page.page.inner_text("#banners")
    assert_not_blank(page.canvas(CAPTURE_CANVAS), "splat of an old run")
    page.page.click("[data-run='1']")
    page.wait_for("document.querySelector('#run-status') && document.querySelector('#run-status').textContent === 'failed'", 30)
    assert "synthetic failure for testing" in page.page.inner_text("#banners")
    page.page.click("[data-run='2']")
    page.wait_for("document.querySelector('#banners').textContent.includes('no geometry.json')", 30)
    page.settle()
    banners = page.page.inner_text("#banners")
    assert "no reference.nii.gz" in banners and "no mu_water_per_mm" in banners
    assert_not_blank(page.canvas(CT_LEFT), "CT volume without geometry")
    page.assert_clean()


def test_running_run_updates_live(running_run, serve_runs, open_page, tmp_path):
    page = open_page(serve_runs(running_run), "?size=256")
    page.wait_for("document.querySelector('#run-status') && document.querySelector('#run-status').textContent === 'running'", 30)
    page.wait_for("document.querySelector('#banners').textContent.includes('no splat.ply yet')", 30, "the missing-splat banner")
    assert "still running" in page.page.inner_text("#banners")
    # the run finishes: splat.ply appears, then metrics.json, then run.json says complete
    shutil.copy(tmp_path / "splat.ply.later", running_run / ".splat.ply.tmp")
    os.replace(running_run / ".splat.ply.tmp", running_run / "splat.ply")
    (running_run / "metrics.json").write_text(json.dumps({"train": {"views": {}, "mean": {"psnr": 30.0, "ssim": 0.9, "n_views": 6}}}))
    run = json.loads((running_run / "run.json").read_text())
    run.update(status="complete", step=500)
    (running_run / "run.tmp").write_text(json.dumps(run))
    os.replace(running_run / "run.tmp", running_run / "run.json")
    page.wait_for("document.querySelector('#run-status').textContent === 'complete'", 20, "the status to turn complete")
    page.first_frame(60)
    assert "no splat.ply" not in page.page.inner_text("#banners")
    assert_not_blank(page.canvas(CAPTURE_CANVAS), "splat after the run completed")
    page.assert_clean()
