"""recon.io.figures: loss curves and CT slice strips as PNG."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from recon.io.figures import central_slices, plot_curve, write_slice_pngs
from recon.io.images import load_image

STEPS = list(range(0, 110, 10))
LOSS = [float(v) for v in np.exp(-np.arange(11) / 3.0) + 0.02]


def _pyplot_curve(path, steps, values, ylabel, extra=None) -> None:
    """The pyplot version plot_curve had until 2026-12-04: the reference image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(steps, values, color="tab:blue")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel, color="tab:blue")
    if values and min(values) > 0:
        ax.set_yscale("log")
    if extra is not None:
        ax2 = ax.twinx()
        ax2.plot(steps, extra[1], color="tab:orange")
        ax2.set_ylabel(extra[0], color="tab:orange")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


@pytest.mark.parametrize("extra", [None, ("Gaussians", [100 + 10 * s for s in STEPS])])
def test_plot_curve_is_the_pyplot_image(tmp_path, extra):
    got = plot_curve(tmp_path / "loss.png", STEPS, LOSS, "loss", extra)
    _pyplot_curve(tmp_path / "ref.png", STEPS, LOSS, "loss", extra)
    a, b = load_image(got), load_image(tmp_path / "ref.png")
    assert a.shape == b.shape and a.shape[:2] == (350, 600)
    assert np.array_equal(a, b)
    assert a.std() > 0.01  # not blank
    assert list(tmp_path.glob("*.tmp*")) == []  # written atomically, nothing left behind


def test_plot_curve_linear_scale_for_non_positive_values(tmp_path):
    path = plot_curve(tmp_path / "loss.png", [0, 1, 2], [1.0, 0.0, -1.0], "residual")
    assert load_image(path).shape[:2] == (350, 600)


def test_plot_curve_does_not_import_pyplot(tmp_path):
    code = (
        "import json, sys\n"
        "from recon.io.figures import plot_curve\n"
        f"plot_curve({str(tmp_path / 'c.png')!r}, [0, 1, 2], [3.0, 2.0, 1.0], 'loss')\n"
        "print(json.dumps('matplotlib.pyplot' in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) is False
    assert (tmp_path / "c.png").is_file()


def test_central_slices_orientation():
    vol = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    s = central_slices(vol)
    assert s["axial"].shape == (5, 6) and np.array_equal(s["axial"], vol[2])
    assert s["coronal"].shape == (4, 6) and np.array_equal(s["coronal"][0], vol[-1, 2])  # superior at the top
    assert s["sagittal"].shape == (4, 5) and np.array_equal(s["sagittal"][-1], vol[0, :, 3])


def test_write_slice_pngs_with_reference_and_aspect(tmp_path):
    rng = np.random.default_rng(0)
    vol, ref = rng.random((4, 5, 6)).astype(np.float32), rng.random((4, 5, 6)).astype(np.float32)
    paths = write_slice_pngs(tmp_path / "slices", vol, ref, (2.0, 1.0, 1.0))
    assert sorted(p.name for p in paths) == ["axial.png", "coronal.png", "sagittal.png"]
    axial, coronal = load_image(tmp_path / "slices" / "axial.png"), load_image(tmp_path / "slices" / "coronal.png")
    assert axial.shape[:2] == (5, 6 + 2 + 6)  # volume | gap | reference
    assert coronal.shape[:2] == (8, 6 + 2 + 6)  # rows stretched 2x (2 mm slices, 1 mm pixels)
