"""Long-run soak of ``recon batch`` on the local backend (issue 16, item 6): N tiny CT jobs, a
seeded random share of them with corrupt inputs and a few whose worker is killed (SIGKILL)
mid-run, then the same batch again. Checks that every good job is complete and valid, every bad
one is reported with its one-line error naming the broken file, the killed ones are reported as
the local backend's policy says (``out of memory``: SIGKILL is what the kernel's out-of-memory
killer sends; a TV job has no smaller setting, so it is not retried in the batch) and resume
from their checkpoint in the rerun, both exit codes are 1; and that memory does not grow across
jobs: the driver's resident memory after each finished job and each job's peak in its worker
(``peak_rss_mb`` of the job's result) against the job's index, a line fitted to the first and to
the last half of the jobs.

Jobs (like ``scripts/bench_batch.py overhead``'s): one simulated ``--size``^3 Shepp-Logan scan
with ``--views`` views, ``--method fdk``, each to its own run folder; every job reads the same
scan folder, a corrupt job its own broken copy:

- ``truncated-projection``: one ``proj_train/*.npy`` cut to 60 % of its bytes;
- ``truncated-volume``: the reference volume ``vol_gt.npy`` cut to 60 % of its bytes;
- ``nan-projection``: one pixel of one projection set to NaN (the reader names the folder's
  ``meta_data.json`` and the NaN's index);
- ``angle-mismatch``: the scan as a ``.npy`` projection stack whose geometry ``.json`` lists one
  angle fewer than there are projections (the reader names the stack).

(``.npz`` files are volumes for ``recon ct simulate``, not inputs of a CT fit, so none is broken
here; the bad-input catalogue, ``tests/io/test_bad_input_catalogue.py``, covers their readers.)
A job to be killed is a TV job (``--kill-iterations`` steps, a checkpoint every 10): when its
first checkpoint appears, the driver-side watcher finds the worker process that has the job's
log file (``OUT/_batch/logs/<name>.log``) open and sends it SIGKILL.

The driver is this process (``BatchConfig(...).setup().run()``, as ``recon batch`` does it);
writes ``OUT/results.json``, ``OUT/results.md`` and ``OUT/rss.png``. Exit code 0 when every
check passed.

    PYTHONPATH=. python scripts/soak_batch.py --n 100 --seed 0 --out runs/soak
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CORRUPTIONS = ("truncated-projection", "truncated-volume", "nan-projection", "angle-mismatch")
"""The ways a corrupt job's input is broken (module docstring)."""
KILLED_STATUS = "out of memory"
"""What the local backend reports for a job whose worker died of SIGKILL (``recon/batch/local.py``)."""


@dataclass
class SoakJob:
    """One job of the soak and what it should end as."""

    name: str
    role: str
    """'good', 'kill', or one of :data:`CORRUPTIONS`."""
    data: Path
    needles: tuple[str, ...] = ()
    """What the job's one-line error must contain: the file the reader names and the problem."""
    options: dict[str, Any] = field(default_factory=dict)


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def rss_mb(pid: int | str = "self") -> float:
    """Resident memory of a process (``VmRSS``) in MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


# ---------------------------------------------------------------------------------- inputs
def good_scan(folder: Path, size: int, views: int) -> Path:
    """The one valid scan every good job reads (R2-Gaussian folder with its reference volume)."""
    from recon.ct.phantoms import shepp_logan_3d
    from recon.pipelines.ct_simulate import CTSimulateConfig

    scan = folder / "scan"
    if not (scan / "meta_data.json").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        vol = shepp_logan_3d((size, size, size)).astype(np.float32)
        np.savez(folder / "phantom.npz", volume=-1000.0 + 1200.0 * vol / vol.max(), spacing_mm_zyx=np.array([2.0, 2.0, 2.0], np.float32))
        CTSimulateConfig(folder / "phantom.npz", views=views, out=scan, n_test=0, detector=size, seed=0, overwrite=True).run()
    return scan


def _truncate(path: Path, keep: float = 0.6) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def corrupt_input(scan: Path, dest: Path, how: str, rng: np.random.Generator) -> tuple[Path, tuple[str, ...]]:
    """A broken copy of ``scan`` at ``dest`` -> (the job's data path, what its error must contain)."""
    if how == "angle-mismatch":
        from recon.io.formats import load_ct_data
        from recon.io.tigre import write_projection_stack

        ct = load_ct_data(scan)
        stack = write_projection_stack(dest.with_suffix(".npy"), ct.projections, ct.geometry)
        geo_path = stack.with_suffix(".json")
        geo = json.loads(geo_path.read_text())
        key = next(k for k in geo if "angle" in k.lower())
        geo[key] = geo[key][:-1]
        geo_path.write_text(json.dumps(geo, indent=2))
        return stack, (f"{stack}: ", f"{len(ct.projections)} projections but {len(ct.projections) - 1} angles")
    shutil.copytree(scan, dest)
    projections = sorted((dest / "proj_train").glob("*.npy"))
    if how in ("truncated-projection", "truncated-volume"):
        path = _truncate(projections[int(rng.integers(len(projections)))] if how == "truncated-projection" else dest / "vol_gt.npy")
        return dest, (f"{path}: ", "truncated or corrupt file")
    if how == "nan-projection":
        k = int(rng.integers(len(projections)))
        proj = np.load(projections[k])
        proj[tuple(int(rng.integers(s)) for s in proj.shape)] = np.nan
        np.save(projections[k], proj)
        return dest, (f"{dest / 'meta_data.json'}: ", "1 NaN/inf values", f"(first at index ({k}, ")
    raise ValueError(f"unknown corruption {how!r} (expected one of {CORRUPTIONS})")


def make_jobs(root: Path, n: int, seed: int, *, corrupt_fraction: float = 0.15, kill_fraction: float = 0.05, size: int = 16,
              views: int = 8, kill_iterations: int = 300) -> list[SoakJob]:  # fmt: skip
    """``n`` jobs: ``round(corrupt_fraction * n)`` with corrupt inputs (the kinds in turn, at
    random positions), ``round(kill_fraction * n)`` (at least one when > 0) to be killed, the rest good."""
    rng = np.random.default_rng(seed)
    scan = good_scan(root / "good", size, views)
    n_bad = round(corrupt_fraction * n)
    n_kill = max(1, round(kill_fraction * n)) if kill_fraction > 0 else 0
    if n_bad + n_kill > n:
        raise ValueError(f"{n_bad} corrupt + {n_kill} killed jobs do not fit in {n}")
    order = rng.permutation(n)
    bad = {int(i): CORRUPTIONS[k % len(CORRUPTIONS)] for k, i in enumerate(order[:n_bad])}
    kill = {int(i) for i in order[n_bad : n_bad + n_kill]}
    broken_root = root / "broken"
    if broken_root.exists():
        shutil.rmtree(broken_root)
    broken_root.mkdir(parents=True)
    jobs = []
    for i in range(n):
        name = f"j{i:03d}"
        if i in bad:
            data, needles = corrupt_input(scan, broken_root / name, bad[i], rng)
            jobs.append(SoakJob(name, bad[i], data, needles))
        elif i in kill:
            jobs.append(SoakJob(name, "kill", scan, options={"method": "tv", "tv.iterations": kill_iterations, "checkpoint_every": 10}))
        else:
            jobs.append(SoakJob(name, "good", scan))
    return jobs


def write_manifest(path: Path, jobs: list[SoakJob]) -> Path:
    doc = {"defaults": {"ct": {"method": "fdk"}}, "jobs": [{"kind": "ct", "data": str(j.data), "name": j.name, **j.options} for j in jobs]}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


# ---------------------------------------------------------------------------------- one pass
def children() -> list[int]:
    """Pids of this process's children (the batch's worker processes among them)."""
    from recon.batch.ray_backend import children as child_pids

    return sorted(child_pids())


def worker_holding(path: str) -> int | None:
    """The child process that has ``path`` open (a job's log is open in its worker while the job runs)."""
    for pid in children():
        fd_dir = Path(f"/proc/{pid}/fd")
        try:
            fds = list(fd_dir.iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) == path:
                    return pid
            except OSError:
                continue
    return None


def _kill_watch(out: Path, names: set[str], done: threading.Event, killed: dict[str, dict[str, Any]]) -> None:
    """SIGKILL the worker of each job in ``names`` once its first checkpoint exists."""
    while not done.is_set() and len(killed) < len(names):
        for name in sorted(names - killed.keys()):
            ckpts = out / name / "checkpoints"
            if ckpts.is_dir() and any(ckpts.glob("ckpt_*.pt")):
                pid = worker_holding(str(out / "_batch" / "logs" / f"{name}.log"))
                if pid is not None:
                    os.kill(pid, signal.SIGKILL)
                    killed[name] = {"pid": pid, "checkpoints": sorted(p.name for p in ckpts.glob("ckpt_*.pt"))}
        done.wait(0.01)


def run_pass(manifest: Path, out: Path, *, jobs: int = 2, kill: set[str] | None = None) -> dict[str, Any]:
    """One ``recon batch`` (local backend, ``jobs`` workers x 1 thread) with this process as the
    driver; its resident memory is sampled after every finished job."""
    from recon.batch.config import BatchConfig

    batch = BatchConfig(manifest=manifest, out=str(out), jobs=jobs, cpus_per_job=1).setup()
    samples: list[dict[str, Any]] = []
    t0 = time.perf_counter()

    def on_update(state, res) -> None:
        if res is not None:
            samples.append({"index": len(samples) + 1, "name": res.name, "status": res.status, "t_s": round(time.perf_counter() - t0, 2),
                            "driver_rss_mb": round(rss_mb(), 2), "worker_peak_rss_mb": res.peak_rss_mb})  # fmt: skip

    done, killed = threading.Event(), {}
    watcher = threading.Thread(target=_kill_watch, args=(out, set(kill or ()), done, killed), daemon=True)
    load0 = _load()
    rss0 = rss_mb()
    if kill:
        watcher.start()
    try:
        summary = batch.run(on_update=on_update)
    finally:
        done.set()
        if kill:
            watcher.join(timeout=5)
    return {"exit_code": summary.exit_code, "wall_s": round(time.perf_counter() - t0, 1), "load_start": load0, "load_end": _load(),
            "driver_rss_start_mb": round(rss0, 2), "driver_rss_end_mb": round(rss_mb(), 2), "killed": killed, "samples": samples,
            "results": {r.name: r for r in summary.results}}  # fmt: skip


# ---------------------------------------------------------------------------------- checks
def check_first(jobs: list[SoakJob], p: dict[str, Any], out: Path) -> list[str]:
    """Problems with the first pass (empty: as expected)."""
    from recon.io.run import RunDir

    bad: list[str] = []
    res = p["results"]
    if p["exit_code"] != 1:
        bad.append(f"exit code {p['exit_code']} (expected 1: some jobs failed)")
    psnrs = set()
    for j in jobs:
        r = res[j.name]
        if j.role == "good":
            if r.status != "complete":
                bad.append(f"{j.name} (good): {r.status} ({r.error})")
            elif RunDir(out / j.name).problems():
                bad.append(f"{j.name} (good): run folder not valid: {RunDir(out / j.name).problems()}")
            else:
                psnrs.add((r.metrics or {}).get("psnr_3d"))
        elif j.role == "kill":
            if j.name not in p["killed"]:
                bad.append(f"{j.name} (kill): its worker was not killed (status {r.status})")
            elif r.status != KILLED_STATUS or "SIGKILL" not in (r.error or ""):
                bad.append(f"{j.name} (kill): {r.status} ({r.error}), expected {KILLED_STATUS!r} naming SIGKILL")
        else:
            err = r.error or ""
            if r.status != "failed":
                bad.append(f"{j.name} ({j.role}): {r.status}, expected failed")
            elif "\n" in err or not err.startswith(j.needles[0]) or not all(x in err for x in j.needles):
                bad.append(f"{j.name} ({j.role}): error is not one line with {j.needles}: {err!r}")
            elif (out / j.name).exists():
                bad.append(f"{j.name} ({j.role}): left a run folder behind")
    if len(psnrs) > 1:  # the same scan, FDK, one thread: every good job gives the same volume
        bad.append(f"good jobs differ in PSNR: {sorted(psnrs)}")
    return bad


def check_rerun(jobs: list[SoakJob], p: dict[str, Any], out: Path) -> list[str]:
    """Problems with the rerun: good skipped, killed resumed to complete, bad failed again."""
    from recon.io.run import RunDir

    bad: list[str] = []
    res = p["results"]
    if p["exit_code"] != 1:
        bad.append(f"rerun exit code {p['exit_code']} (expected 1: the corrupt jobs fail again)")
    for j in jobs:
        r = res[j.name]
        want = {"good": "skipped", "kill": "complete"}.get(j.role, "failed")
        if r.status != want:
            bad.append(f"rerun {j.name} ({j.role}): {r.status} ({r.error}), expected {want}")
        elif j.role == "kill" and (not r.resumed_from_step or RunDir(out / j.name).problems()):
            bad.append(f"rerun {j.name} (kill): resumed_from_step {r.resumed_from_step}, problems {RunDir(out / j.name).problems()}")
    return bad


def _slope(xs: list[float], ys: list[float]) -> float | None:
    return None if len(xs) < 3 else round(float(np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)[0]), 4)


def memory(samples: list[dict[str, Any]], good: set[str]) -> dict[str, Any]:
    """Slopes (MiB per job) of the driver's RSS after each job and of the good jobs' worker peaks,
    over the first and the last half of the jobs (by finishing order)."""
    n = len(samples)
    half = n // 2
    idx = [s["index"] for s in samples]
    drv = [s["driver_rss_mb"] for s in samples]
    wk = [(s["index"], s["worker_peak_rss_mb"]) for s in samples if s["name"] in good and s["worker_peak_rss_mb"] is not None]
    wk_first, wk_last = [w for w in wk if w[0] <= half], [w for w in wk if w[0] > half]
    return {
        "driver_slope_first_half_mb_per_job": _slope(idx[:half], drv[:half]),
        "driver_slope_last_half_mb_per_job": _slope(idx[half:], drv[half:]),
        "driver_rss_first_mb": drv[0] if drv else None, "driver_rss_last_mb": drv[-1] if drv else None,
        "driver_growth_mb": round(drv[-1] - drv[0], 2) if drv else None,
        "worker_peak_slope_first_half_mb_per_job": _slope([w[0] for w in wk_first], [w[1] for w in wk_first]),
        "worker_peak_slope_last_half_mb_per_job": _slope([w[0] for w in wk_last], [w[1] for w in wk_last]),
        "worker_peak_median_first_half_mb": float(np.median([w[1] for w in wk_first])) if wk_first else None,
        "worker_peak_median_last_half_mb": float(np.median([w[1] for w in wk_last])) if wk_last else None,
        "worker_peak_max_mb": max((w[1] for w in wk), default=None),
    }  # fmt: skip


# ---------------------------------------------------------------------------------- the soak
def soak(out: Path, *, n: int = 100, seed: int = 0, jobs: int = 2, corrupt_fraction: float = 0.15, kill_fraction: float = 0.05,
         kill_iterations: int = 300, rerun: bool = True) -> dict[str, Any]:  # fmt: skip
    """Build the inputs under ``out``, run the batch (and again, with ``rerun``), check -> the
    results (``failures`` empty when every check passed)."""
    out = Path(out).resolve()
    soak_jobs = make_jobs(out / "inputs", n, seed, corrupt_fraction=corrupt_fraction, kill_fraction=kill_fraction,
                          kill_iterations=kill_iterations)  # fmt: skip
    manifest = write_manifest(out / "soak.yaml", soak_jobs)
    runs = out / "runs"
    if runs.exists():
        shutil.rmtree(runs)
    kill = {j.name for j in soak_jobs if j.role == "kill"}
    first = run_pass(manifest, runs, jobs=jobs, kill=kill)
    failures = check_first(soak_jobs, first, runs)
    second = None
    if rerun:
        second = run_pass(manifest, runs, jobs=1)  # only the killed and the corrupt jobs run: one worker is enough
        failures += check_rerun(soak_jobs, second, runs)
    roles = {j.name: j.role for j in soak_jobs}
    good = {j.name for j in soak_jobs if j.role == "good"}

    def summary(p: dict[str, Any]) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for r in p["results"].values():
            counts[r.status] = counts.get(r.status, 0) + 1
        return {k: v for k, v in p.items() if k != "results"} | {"statuses": counts}

    return {
        "n": n, "seed": seed, "jobs": jobs, "roles": {r: sum(v == r for v in roles.values()) for r in sorted(set(roles.values()))},
        "first": summary(first), "rerun": summary(second) if second else None, "memory": memory(first["samples"], good),
        "errors": {j.name: {"role": j.role, "status": first["results"][j.name].status, "error": first["results"][j.name].error}
                   for j in soak_jobs if j.role != "good"},
        "failures": failures,
    }  # fmt: skip


def plot(result: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result["first"]["samples"]
    fig, (a, b) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    a.plot([x["index"] for x in s], [x["driver_rss_mb"] for x in s], ".-", ms=3)
    a.set_ylabel("driver RSS (MiB)")
    a.set_title(f"recon batch soak: {result['n']} jobs, local backend, {result['jobs']} workers")
    for role, mark in (("good", "."), ("kill", "x")):
        pts = [(x["index"], x["worker_peak_rss_mb"]) for x in s if x["worker_peak_rss_mb"] is not None and result_roles(result, x["name"]) == role]
        if pts:
            b.plot(*zip(*pts), mark, ms=4, ls="none", label=role)
    b.set_ylabel("job's peak RSS in its worker (MiB)")
    b.set_xlabel("job index (finishing order)")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def result_roles(result: dict[str, Any], name: str) -> str:
    return result["errors"].get(name, {}).get("role", "good")


def markdown(r: dict[str, Any]) -> str:
    m, f = r["memory"], r["first"]
    lines = [f"# recon batch soak: {r['n']} jobs, seed {r['seed']}, {r['jobs']} workers x 1 thread", "",
             "roles: " + ", ".join(f"{k} {v}" for k, v in r["roles"].items()), "",
             "| pass | exit code | wall (s) | statuses | load (start–end) |", "|---|---:|---:|---|---|"]  # fmt: skip
    for name, p in (("first", f), ("rerun", r["rerun"])):
        if p:
            st = ", ".join(f"{k} {v}" for k, v in sorted(p["statuses"].items()))
            lines.append(f"| {name} | {p['exit_code']} | {p['wall_s']} | {st} | {p['load_start']}–{p['load_end']} |")
    lines += ["", "| memory (first pass) | first half | last half |", "|---|---:|---:|",
              f"| driver RSS slope (MiB/job) | {m['driver_slope_first_half_mb_per_job']} | {m['driver_slope_last_half_mb_per_job']} |",
              f"| good jobs' worker peak RSS slope (MiB/job) | {m['worker_peak_slope_first_half_mb_per_job']} | {m['worker_peak_slope_last_half_mb_per_job']} |",
              f"| good jobs' worker peak RSS, median (MiB) | {m['worker_peak_median_first_half_mb']} | {m['worker_peak_median_last_half_mb']} |",
              "", (f"driver RSS {m['driver_rss_first_mb']} MiB after the first job, {m['driver_rss_last_mb']} after the last "
                   f"({m['driver_growth_mb']:+} MiB); largest worker peak {m['worker_peak_max_mb']} MiB."), "",
              "| job | role | status | error |", "|---|---|---|---|"]  # fmt: skip
    for name, e in r["errors"].items():
        lines.append(f"| {name} | {e['role']} | {e['status']} | {(e['error'] or '').replace('|', '/')} |")
    lines += ["", "checks: " + ("all passed" if not r["failures"] else f"{len(r['failures'])} FAILED"), *[f"- {x}" for x in r["failures"]]]
    return "\n".join(lines) + "\n"


def main() -> int:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads of the workers sleep (shared 2-core machine)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=100, help="jobs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2, help="worker processes (1 thread each)")
    p.add_argument("--corrupt-fraction", type=float, default=0.15)
    p.add_argument("--kill-fraction", type=float, default=0.05)
    p.add_argument("--kill-iterations", type=int, default=300, help="TV steps of a job to be killed")
    p.add_argument("--no-rerun", action="store_true", help="skip the second pass")
    p.add_argument("--out", default="runs/soak")
    a = p.parse_args()
    out = Path(a.out).resolve()
    result = soak(out, n=a.n, seed=a.seed, jobs=a.jobs, corrupt_fraction=a.corrupt_fraction, kill_fraction=a.kill_fraction,
                  kill_iterations=a.kill_iterations, rerun=not a.no_rerun)  # fmt: skip
    (out / "results.json").write_text(json.dumps(result, indent=1, default=str))
    (out / "results.md").write_text(markdown(result))
    plot(result, out / "rss.png")
    print(markdown(result))
    return 0 if not result["failures"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
