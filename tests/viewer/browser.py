"""Driving the viewer in Debian's Chromium through Playwright (WebGL2 on the CPU: SwiftShader).

Playwright cannot download its own browser here, so it launches ``/usr/bin/chromium``
(``make install`` puts it there) through ``executable_path``. Snapshot comparison follows
Spark's own Playwright tests: 256x256 canvases, a per-pixel tolerance and a small ratio of
pixels allowed to differ.
"""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from recon_viewer.headless import CHROMIUM_ARGS, chromium_path

SNAPSHOTS = Path(__file__).resolve().parent / "snapshots"
PIXEL_TOLERANCE = 8
"""A pixel differs when one of its channels differs by more than this (0..255)."""
MAX_DIFF_RATIO = 0.002
"""At most this fraction of a snapshot's pixels may differ (131 of 65,536 at 256x256)."""


def png_array(data: bytes) -> np.ndarray:
    """[H, W, 3] uint8 of PNG bytes."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def diff_ratio(a: np.ndarray, b: np.ndarray, tolerance: int = PIXEL_TOLERANCE) -> float:
    """Fraction of pixels where some channel differs by more than ``tolerance``."""
    if a.shape != b.shape:
        return 1.0
    return float(np.mean(np.any(np.abs(a.astype(np.int16) - b.astype(np.int16)) > tolerance, axis=-1)))


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.abs(a.astype(np.float32) - b.astype(np.float32))))


def assert_not_blank(img: np.ndarray, what: str, min_fraction: float = 0.03, min_std: float = 8.0) -> None:
    """The image shows something: enough pixels away from its most common colour, and contrast."""
    flat = img.reshape(-1, 3).astype(np.int16)
    colours, counts = np.unique(flat, axis=0, return_counts=True)
    background = colours[np.argmax(counts)]
    away = np.mean(np.max(np.abs(flat - background), axis=1) > 24)
    std = float(flat.mean(axis=1).std())
    assert away >= min_fraction and std >= min_std, f"{what} looks blank: {away:.1%} of pixels off the background {background.tolist()}, luminance std {std:.1f}"


def assert_snapshot(img: np.ndarray, name: str, artifacts: Path) -> None:
    """Compare with ``snapshots/<name>``; ``UPDATE_SNAPSHOTS=1`` rewrites the reference."""
    reference = SNAPSHOTS / name
    Image.fromarray(img).save(artifacts / f"actual-{name}")
    if os.environ.get("UPDATE_SNAPSHOTS") == "1":
        SNAPSHOTS.mkdir(exist_ok=True)
        Image.fromarray(img).save(reference)
        return
    assert reference.exists(), f"no reference snapshot {reference} (run with UPDATE_SNAPSHOTS=1 to create it)"
    expected = np.asarray(Image.open(reference).convert("RGB"))
    ratio = diff_ratio(img, expected)
    if ratio > MAX_DIFF_RATIO:
        diff = (np.any(np.abs(img.astype(np.int16) - expected.astype(np.int16)) > PIXEL_TOLERANCE, axis=-1) * 255).astype(np.uint8)
        Image.fromarray(diff).save(artifacts / f"diff-{name}")
    assert ratio <= MAX_DIFF_RATIO, f"{name}: {ratio:.2%} of pixels differ (allowed {MAX_DIFF_RATIO:.2%}); see {artifacts}"


class ViewerPage:
    """One page of the viewer with the console errors, page errors and off-origin requests seen."""

    def __init__(self, browser, url: str, artifacts: Path, name: str):
        self.context = browser.new_context(viewport={"width": 1280, "height": 900}, device_scale_factor=1)
        self.page = self.context.new_page()
        self.artifacts = artifacts
        self.name = name
        self.errors: list[str] = []
        self.foreign: list[str] = []
        origin = url.split("/", 3)[:3]
        self.page.on("console", lambda m: self.errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e.name}: {e.message} {e.stack or ''}".strip()))
        self.page.on("request", lambda r: self.foreign.append(r.url) if r.url.split("/", 3)[:3] != origin and not r.url.startswith(("data:", "blob:")) else None)
        self.page.goto(url)

    def js(self, expression: str):
        """Evaluate a function expression (the page's CSP forbids eval, so no wait_for_function)."""
        return self.page.evaluate(expression)

    def wait_for(self, expression: str, timeout: float = 90.0, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while not self.js(f"() => Boolean({expression})"):
            if time.monotonic() > deadline:
                self.shot("timeout")
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what or expression}; errors: {self.errors}")
            time.sleep(0.1)

    def first_frame(self, timeout: float = 90.0) -> float:
        self.wait_for("window.__viewer && window.__viewer.firstFrameMs !== null", timeout, "the first frame")
        self.settle()
        return self.js("() => window.__viewer.firstFrameMs")

    def settle(self) -> None:
        self.js("() => window.__viewer.settled(600, 60000)")

    def canvas(self, selector: str) -> np.ndarray:
        """What the page shows of an element, on whole pixels (a canvas at y = 80.5 would
        otherwise come back one row taller), without the HTML captions over the canvases
        (their text depends on the machine's fonts; the WebGL pixels do not)."""
        box = self.page.locator(selector).first.bounding_box()
        clip = {"x": round(box["x"]), "y": round(box["y"]), "width": round(box["width"]), "height": round(box["height"])}
        return png_array(self.page.screenshot(clip=clip, style=".pane-title, .pane-note { visibility: hidden; }"))

    def shot(self, label: str) -> None:
        self.page.screenshot(path=str(self.artifacts / f"{self.name}-{label}.png"), full_page=True)

    def assert_clean(self) -> None:
        assert self.errors == [], self.errors
        assert self.foreign == [], f"requests left the viewer's origin: {self.foreign}"

    def close(self) -> None:
        self.context.close()


def launch(playwright):
    """The Chromium to test with, or a skip saying why there is none."""
    path = chromium_path()
    if path is None:
        pytest.skip("Debian's chromium is not installed and could not be (make install runs apt-get install chromium): browser tests need it")
    return playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS, headless=True)
