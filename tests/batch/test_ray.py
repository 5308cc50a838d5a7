"""The Ray backend end to end (issue 15, item 7), on a Ray head this module starts on loopback
with 2 CPUs and stops at the end: the mixed manifest (two CT scans, a capture, a corrupt scan)
gives three complete runs, one reported failure and exit code 1, with the same scores as the
local backend; a rerun skips the three; a job whose Ray worker is killed mid-run is retried by
Ray and resumes from its checkpoint to the uninterrupted result."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from recon.cli import main
from recon.io.run import RunDir
from tests.batch.conftest import long_manifest, read_report

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]' (make install-test installs it)")

pytestmark = [pytest.mark.slow, pytest.mark.serial]

HEAD_ATTEMPTS = 3
"""Ray's raylet gives its agents 15 s to report their ports; on a busy machine a first start can
miss that (the page cache is warm for the next one)."""


@pytest.fixture(scope="module")
def ray_head():
    """A Ray head on 127.0.0.1 with 2 CPUs, no GPU, no dashboard; ``ray.shutdown()`` at the end."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from recon.batch.ray_backend import children, stop_failed_start

    errors = []
    for _ in range(HEAD_ATTEMPTS):
        before = children()
        try:
            ray.init(address="local", num_cpus=2, num_gpus=0, _node_ip_address="127.0.0.1", include_dashboard=False,
                     object_store_memory=100 * 2**20, log_to_driver=False)  # fmt: skip
            break
        except Exception as err:  # noqa: BLE001 - ray raises a plain Exception when its node does not come up
            errors.append(str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__)
            stop_failed_start(before)
    else:
        pytest.fail(f"no Ray head on 127.0.0.1 after {HEAD_ATTEMPTS} tries: {errors}; logs in /tmp/ray/session_latest/logs")
    assert ray.cluster_resources().get("CPU") == 2
    yield ray
    ray.shutdown()


def _ray_batch(manifest: Path, out: Path, *extra: str) -> int:
    return main(["batch", str(manifest), "--out", str(out), "--backend", "ray", "--memory-per-job-gb", "0.25", *extra])


def test_mixed_batch_on_ray_then_rerun_skips(ray_head, mixed_manifest, local_batch, tmp_path_factory):
    out = tmp_path_factory.mktemp("ray") / "out"
    assert _ray_batch(mixed_manifest, out) == 1
    rows = read_report(out)
    assert {n: r["status"] for n, r in rows.items()} == {"a": "complete", "b": "complete", "fox": "complete", "corrupt": "failed"}
    assert rows["corrupt"]["error"].endswith("meta_data.json: malformed JSON: Expecting value at line 1 column 13")
    for name in ("a", "b", "fox"):
        assert RunDir(out / name).problems() == []
        assert float(rows[name]["cpu_s"]) > 0 and rows[name]["host"]
    # the same jobs on the local backend (1 thread per job there and here) score the same
    local = read_report(local_batch[1])
    for name in ("a", "b", "fox"):
        assert (rows[name]["psnr"], rows[name]["ssim"]) == (local[name]["psnr"], local[name]["ssim"]), name
    assert (out / "report.html").read_text().count("data:image/png;base64,") == 3

    stamps = {n: (out / n / "metrics.json").stat().st_mtime_ns for n in ("a", "b", "fox")}
    assert _ray_batch(mixed_manifest, out) == 1
    rows = read_report(out)
    assert {n: r["status"] for n, r in rows.items()} == {"a": "skipped", "b": "skipped", "fox": "skipped", "corrupt": "failed"}
    assert {n: (out / n / "metrics.json").stat().st_mtime_ns for n in stamps} == stamps


def _ray_worker_of(task_name: str) -> int | None:
    """The pid of the Ray worker running ``task_name`` (Ray titles it ``ray::<task name>``)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cmdline.startswith(f"ray::{task_name}"):
            return int(entry.name)
    return None


def test_job_whose_worker_is_killed_is_retried_and_resumes(ray_head, batch_inputs, long_whole, tmp_path):
    manifest = long_manifest(tmp_path, batch_inputs / "scans" / "a")
    cut = tmp_path / "cut"
    killed: dict[str, int] = {}

    def kill_after_first_checkpoint() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and "pid" not in killed:
            if (cut / "long" / "checkpoints" / "ckpt_0000010.pt").exists():
                pid = _ray_worker_of("recon-batch:long")
                if pid is not None:
                    killed["pid"] = pid
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)

    killer = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
    killer.start()
    assert _ray_batch(manifest, cut, "--retries", "1") == 0
    killer.join(timeout=5)
    assert "pid" in killed, "the job finished before its worker could be killed"
    row = read_report(cut)["long"]
    assert row["status"] == "complete" and int(row["resumed_from_step"]) >= 10, row
    # the same job uninterrupted on the local backend (one thread, as here): the same volume
    a, b = np.load(long_whole / "volume.npy"), np.load(cut / "long" / "volume.npy")
    assert np.array_equal(a, b), f"resumed volume differs: max |diff| {np.abs(a - b).max()}"
    assert read_report(long_whole.parent)["long"]["psnr"] == row["psnr"]
