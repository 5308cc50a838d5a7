"""One job in a worker (``execute_spec``, run here in-process) and the driver's bookkeeping
(``BatchRun``): skip, resume, one-line errors, stop, timeout, out of memory and its retry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from recon.batch.manifest import JobSpec
from recon.batch.runner import (
    BatchRun,
    JobResult,
    batch_lock,
    execute_spec,
    is_out_of_memory,
    smaller_options,
)
from recon.errors import InputError

TV = {"method": "tv", "tv.iterations": 20, "checkpoint_every": 5}


def _spec(data: Path, out: Path, name: str = "a", kind: str = "ct", **options) -> dict:
    return JobSpec(name=name, kind=kind, data=str(data), out=str(out), options={**TV, **options} if kind == "ct" else options).to_dict()


def test_complete_then_skipped_then_redone(batch_inputs, tmp_path):
    spec = _spec(batch_inputs / "scans" / "a", tmp_path / "a")
    first = execute_spec(spec, log_file=str(tmp_path / "logs" / "a.log"))
    assert first["status"] == "complete", first["error"]
    assert first["metrics"]["psnr_3d"] > 20 and first["cpu_s"] > 0 and first["wall_s"] >= first["metrics"]["wall_time_s"]
    assert 50 < first["peak_rss_mb"] < 4096  # this process's peak during the job (torch is imported)
    again = execute_spec(spec)
    assert again["status"] == "skipped" and again["metrics"] == first["metrics"]
    redo = execute_spec(spec, redo=True)
    assert redo["status"] == "complete" and redo["resumed_from_step"] is None
    assert redo["metrics"]["psnr_3d"] == first["metrics"]["psnr_3d"]


def test_bad_input_is_one_line_and_leaves_no_run_folder(batch_inputs, tmp_path):
    res = execute_spec(_spec(batch_inputs / "scans" / "corrupt", tmp_path / "c"))
    assert res["status"] == "failed"
    assert res["error"].startswith(str(batch_inputs / "scans" / "corrupt" / "meta_data.json") + ": malformed JSON")
    assert "\n" not in res["error"]
    assert not (tmp_path / "c").exists()


def test_a_folder_that_is_not_a_run_is_never_emptied(batch_inputs, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "thesis.tex").write_text("precious")
    res = execute_spec(_spec(batch_inputs / "scans" / "a", tmp_path / "a"), redo=True)
    assert res["status"] == "failed" and "is not a recon run folder" in res["error"]
    assert (tmp_path / "a" / "thesis.tex").read_text() == "precious"


def test_stopped_job_resumes_to_the_uninterrupted_result(batch_inputs, tmp_path):
    whole = execute_spec(_spec(batch_inputs / "scans" / "a", tmp_path / "whole"))
    steps = []

    def stop_at_15() -> bool:
        return bool(steps) and steps[-1] >= 15

    cut = _spec(batch_inputs / "scans" / "a", tmp_path / "cut")
    first = execute_spec(cut, should_stop=stop_at_15, on_progress=lambda s, t: steps.append(s))
    assert first["status"] == "interrupted" and "a rerun resumes" in first["error"]
    assert json.loads((tmp_path / "cut" / "run.json").read_text())["status"] == "interrupted"
    second = execute_spec(cut)
    assert second["status"] == "complete" and second["resumed_from_step"] == 15
    assert np.array_equal(np.load(tmp_path / "whole" / "volume.npy"), np.load(tmp_path / "cut" / "volume.npy"))
    assert second["metrics"]["psnr_3d"] == whole["metrics"]["psnr_3d"]


def test_timeout_stops_with_a_checkpoint(batch_inputs, tmp_path):
    res = execute_spec(_spec(batch_inputs / "scans" / "b", tmp_path / "t"), timeout_s=1e-6)
    assert res["status"] == "timed out" and "a rerun resumes" in res["error"]
    assert list((tmp_path / "t" / "checkpoints").glob("ckpt_*.pt"))


def test_memory_error_is_reported_as_out_of_memory(batch_inputs, tmp_path, monkeypatch):
    import recon.pipelines.job

    def no_memory(job, progress=None):
        raise MemoryError("Unable to allocate 512. GiB for an array")

    monkeypatch.setattr(recon.pipelines.job, "run_job", no_memory)
    res = execute_spec(_spec(batch_inputs / "scans" / "a", tmp_path / "m"), log_file=str(tmp_path / "m.log"))
    assert res["status"] == "out of memory" and res["error"] == "MemoryError: Unable to allocate 512. GiB for an array"
    assert "Traceback" in (tmp_path / "m.log").read_text()


@pytest.mark.parametrize(
    ("err", "oom"),
    [(MemoryError(), True), (RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"), True),
     (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 GB"), True),
     (RuntimeError("shape mismatch"), False), (ValueError("out of memory"), False)],
)  # fmt: skip
def test_is_out_of_memory(err, oom):
    assert is_out_of_memory(err) is oom


def test_smaller_options():
    spec = JobSpec(name="x", kind="capture", data="d")
    assert smaller_options(spec) == {"downscale": 8.0}
    assert smaller_options(JobSpec(name="x", kind="capture", data="d", options={"downscale": 16})) == {"downscale": 32.0}
    assert smaller_options(JobSpec(name="x", kind="ct", data="d", options={"gaussian.n_gaussians": 1000})) == {"gaussian.n_gaussians": 500}
    assert smaller_options(JobSpec(name="x", kind="ct", data="d", options={"method": "tv"})) is None


def _result(job: JobSpec, status: str, **kw) -> dict:
    return JobResult(name=job.name, kind=job.kind, data=job.data, out=job.out, status=status, options=dict(job.options), **kw).to_dict()


def test_out_of_memory_is_retried_once_smaller_and_both_attempts_recorded(tmp_path):
    job = JobSpec(name="cap", kind="capture", data="d", options={"downscale": 4})
    other = JobSpec(name="ct", kind="ct", data="d", options={"method": "tv"})
    br = BatchRun([job, other], str(tmp_path))
    for j in (job, other):
        j.out = str(tmp_path / j.name)
    _, plan = br.plan()
    assert plan == {"cap": "run", "ct": "run"}
    retry = br.finished(_result(job, "out of memory", error="MemoryError: x"))
    assert retry is not None and retry.options == {"downscale": 8.0}
    assert br.worker_kwargs(retry)["redo"] is True  # a fresh start with the smaller setting
    assert br.finished(_result(retry, "out of memory", error="MemoryError: y")) is None  # only once
    assert br.finished(_result(other, "out of memory", error="MemoryError: z")) is None  # no smaller TV setting
    res = {r.name: r for r in br.results}
    assert res["cap"].status == "out of memory" and [a["status"] for a in res["cap"].attempts] == ["out of memory", "out of memory"]
    assert res["cap"].attempts[0]["retry_with"] == {"downscale": 8.0} and res["cap"].attempts[1]["options"] == {"downscale": 8.0}
    saved = json.loads((tmp_path / "_batch" / "jobs" / "cap.json").read_text())
    assert len(saved["attempts"]) == 2
    # a rerun keeps the smaller setting of the retry (its run folder was made with it)
    br2 = BatchRun([JobSpec(name="cap", kind="capture", data="d", out=str(tmp_path / "cap"), options={"downscale": 4})], str(tmp_path))
    todo2, _ = br2.plan()
    assert todo2[0].options == {"downscale": 8.0}


def test_plan_skips_complete_resumes_checkpoints_records_invalid(batch_inputs, tmp_path):
    done = tmp_path / "done"
    assert execute_spec(_spec(batch_inputs / "scans" / "a", done, name="done"))["status"] == "complete"
    half = tmp_path / "half"
    execute_spec(_spec(batch_inputs / "scans" / "a", half, name="half"), timeout_s=1e-6)
    jobs = [JobSpec(name=n, kind="ct", data=str(batch_inputs / "scans" / "a"), out=str(tmp_path / n), options=dict(TV)) for n in ("done", "half", "new")]
    jobs.append(JobSpec(name="bad", kind="ct", data="x", out=str(tmp_path / "bad"), error="job 4 (bad): unknown option 'x'"))
    br = BatchRun(jobs, str(tmp_path))
    todo, plan = br.plan()
    assert plan == {"done": "skip", "half": "resume", "new": "run", "bad": "invalid"}
    assert [j.name for j in todo] == ["half", "new"]
    status = {r.name: r.status for r in br.results}
    assert status == {"done": "skipped", "half": "interrupted", "new": "interrupted", "bad": "invalid"}  # not run yet


def test_batch_lock_refuses_a_second_batch(tmp_path):
    with batch_lock(str(tmp_path)), pytest.raises(InputError, match="another recon batch is running"), batch_lock(str(tmp_path)):
        pass
    with batch_lock(str(tmp_path)):  # released
        pass
