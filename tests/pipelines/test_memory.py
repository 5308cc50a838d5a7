"""The memory guard: estimates grow with the job, and a job that would not fit is refused in one
line with advice before any work (``--skip-memory-check`` overrides). Estimate vs measured peak:
``scripts/bench_memory.py``, table in docs/benchmarks.md."""

from __future__ import annotations

import pytest

from recon.cli import main
from recon.errors import InputError
from recon.pipelines import ct as ct_pipeline
from recon.pipelines import memory
from recon.pipelines.memory import capture_fit_estimate, check_memory, ct_fit_estimate
from tests.io import valid_files as vf


def test_estimates_grow_with_the_job():
    small = ct_fit_estimate("tv", (64, 64, 64), 25 * 64 * 64)
    big = ct_fit_estimate("tv", (192, 192, 192), 25 * 192 * 192)
    assert big.total - memory.RUNTIME_BYTES > 20 * (small.total - memory.RUNTIME_BYTES)
    assert ct_fit_estimate("gaussian", (64,) * 3, 1000, n_gaussians=400_000).parts["gaussians"] > 0
    assert capture_fit_estimate(10**6, 200_000).total > capture_fit_estimate(10**5, 20_000).total


def test_check_memory_refuses_with_advice():
    est = ct_fit_estimate("tv", (512, 512, 512), 100 * 512 * 512)
    with pytest.raises(InputError) as info:
        check_memory(est, "scan", available=2**30)
    msg = str(info.value)
    assert "\n" not in msg and "scan" in msg and "coarser grid" in msg and "--skip-memory-check" in msg
    check_memory(est, "scan", available=2**30, skip=True)  # the override
    check_memory(est, "scan", available=est.total + 1)


def test_ct_fit_refused_before_any_output(tmp_path, capsys, monkeypatch):
    stack = vf.projection_stack(tmp_path / "scan.npy")
    monkeypatch.setattr(memory, "available_bytes", lambda: 10 * 2**20)  # 10 MiB "available"
    out = tmp_path / "run"
    assert main(["ct", "fit", str(stack), "--method", "fdk", "--out", str(out)]) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "memory" in lines[0] and "scan.npy" in lines[0], lines
    assert not out.exists()
    assert main(["ct", "fit", str(stack), "--method", "fdk", "--out", str(out), "--skip-memory-check"]) == 0


def test_ct_estimate_counts_test_projections(tmp_path):
    from recon.io.formats import load_ct_data

    data = load_ct_data(vf.r2gaussian_folder(tmp_path / "r2"))
    cfg = ct_pipeline.CTFitConfig(data=tmp_path / "r2", out=tmp_path / "o", method="tv")
    est = ct_pipeline.ct_memory_estimate(cfg, data)
    pixels = data.projections.size + data.test_projections.size
    assert est.parts["projections and projector tables"] == pixels * memory.CT_BYTES_PER_PROJECTION_PIXEL


# -------------------------------------------------------------- storage (issue 16 item 4)
@pytest.mark.parametrize("errno_name", ["ENOSPC", "EROFS"])
def test_full_disk_or_read_only_output_is_one_line(tmp_path, capsys, monkeypatch, errno_name):
    """A full disk while outputs are written, or a read-only --out, ends in one line (exit 2)
    and the run is not marked complete."""
    import errno

    from recon.io.run import RunDir

    stack = vf.projection_stack(tmp_path / "scan.npy")
    out = tmp_path / "run"
    code = getattr(errno, errno_name)

    def refuse(path, *args, **kwargs):
        raise OSError(code, "No space left on device" if errno_name == "ENOSPC" else "Read-only file system", str(path))

    if errno_name == "ENOSPC":
        monkeypatch.setattr(ct_pipeline, "atomic_save_npy", refuse)  # the volume cannot be written
    else:
        monkeypatch.setattr(RunDir, "prepare", lambda self, **kw: refuse(self.root))
    assert main(["ct", "fit", str(stack), "--method", "fdk", "--out", str(out)]) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and ("space" in lines[0] or "Read-only" in lines[0]), lines
    assert not RunDir(out).is_complete()
