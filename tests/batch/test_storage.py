"""Inputs and run folders at fsspec URLs, exercised with ``file://`` URLs (the local filesystem
through fsspec, the code path object storage takes)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from recon.batch.manifest import JobSpec
from recon.batch.runner import execute_spec
from recon.batch.storage import (
    is_url,
    join,
    problems,
    publish_run,
    stage_input,
    stage_run,
)
from recon.errors import InputError
from recon.io.run import RunDir


def test_is_url_and_join():
    assert is_url("s3://bucket/x") and is_url("file:///tmp/a") and not is_url("/tmp/a") and not is_url("C:/x")
    assert join("s3://b/runs/", "x") == "s3://b/runs/x"
    assert join("/tmp/runs", "x") == "/tmp/runs/x"


def test_stage_input_folder_and_file_with_sidecar(tmp_path):
    src = tmp_path / "remote"
    (src / "scan").mkdir(parents=True)
    (src / "scan" / "meta_data.json").write_text("{}")
    (src / "stack.npy").write_bytes(b"npy")
    (src / "stack.json").write_text("{}")
    (src / "other.npy").write_bytes(b"x")
    scratch = tmp_path / "scratch"
    folder = Path(stage_input(src.as_uri() + "/scan", scratch))
    assert folder.name == "scan" and (folder / "meta_data.json").read_text() == "{}"
    stack = Path(stage_input((src / "stack.npy").as_uri(), scratch))
    assert stack.read_bytes() == b"npy" and (stack.parent / "stack.json").is_file() and not (stack.parent / "other.npy").exists()
    shutil.rmtree(src / "scan")  # staged once per node: the cache answers
    assert Path(stage_input(src.as_uri() + "/scan", scratch)) == folder
    with pytest.raises(InputError, match="not found"):
        stage_input(src.as_uri() + "/missing", scratch)
    assert stage_input("/local/path", scratch) == "/local/path"


def _fake_run(root: Path, status: str = "complete") -> Path:
    root.mkdir(parents=True)
    for name in ("config.json", "metrics.json", "geometry.json", "volume.npy", "volume.nii.gz"):
        (root / name).write_text("{}")
    (root / "slices").mkdir()
    (root / "run.json").write_text(json.dumps({"format": "recon-run/1", "kind": "ct", "status": status}))
    return root


def test_problems_of_a_url_match_the_run_folder_contract(tmp_path):
    run = _fake_run(tmp_path / "r")
    assert problems(run.as_uri()) == [] == RunDir(run).problems()
    (run / "volume.npy").unlink()
    assert problems(run.as_uri()) == ["volume.npy is missing"] == RunDir(run).problems()
    assert "no run.json" in problems((tmp_path / "nothing").as_uri())[0]


def test_publish_uploads_run_json_last_and_removes_stale_files(tmp_path, monkeypatch):
    from fsspec.implementations.local import LocalFileSystem

    local = _fake_run(tmp_path / "staged")
    (local / "checkpoints").mkdir()
    (local / "checkpoints" / "ckpt_0000020.pt").write_bytes(b"new")
    remote = tmp_path / "bucket" / "run"
    (remote / "checkpoints").mkdir(parents=True)
    (remote / "checkpoints" / "ckpt_0000010.pt").write_bytes(b"old")
    order = []
    put = LocalFileSystem.put_file
    monkeypatch.setattr(LocalFileSystem, "put_file", lambda self, lpath, rpath, **kw: (order.append(Path(rpath).name), put(self, lpath, rpath, **kw))[1])
    publish_run(local, remote.as_uri())
    assert order[-1] == "run.json" and len(order) == 7
    assert sorted(p.name for p in (remote / "checkpoints").iterdir()) == ["ckpt_0000020.pt"]
    assert not local.exists()  # staging removed after a complete upload


def test_stage_run_downloads_a_remote_checkpoint_to_resume(tmp_path):
    remote = _fake_run(tmp_path / "bucket" / "job", status="interrupted")
    (remote / "checkpoints").mkdir()
    (remote / "checkpoints" / "ckpt_0000010.pt").write_bytes(b"c")
    local = stage_run(remote.as_uri(), tmp_path / "scratch")
    assert (local / "checkpoints" / "ckpt_0000010.pt").read_bytes() == b"c"
    assert stage_run(str(remote), tmp_path / "scratch") == remote  # a local out is used in place


def test_job_with_url_input_and_output_completes_and_is_skipped(batch_inputs, tmp_path):
    out = (tmp_path / "bucket" / "runs" / "a").as_uri()
    spec = JobSpec(name="a", kind="ct", data=(batch_inputs / "scans" / "a").as_uri(), out=out,
                   options={"method": "tv", "tv.iterations": 20, "checkpoint_every": 10}).to_dict()  # fmt: skip
    res = execute_spec(spec, scratch=str(tmp_path / "scratch"), log_file=(tmp_path / "bucket" / "runs" / "_batch" / "a.log").as_uri())
    assert res["status"] == "complete", res["error"]
    assert RunDir(tmp_path / "bucket" / "runs" / "a").problems() == []
    assert (tmp_path / "bucket" / "runs" / "_batch" / "a.log").is_file()
    assert not list((tmp_path / "scratch" / "runs").rglob("run.json"))  # staging cleaned up
    assert execute_spec(spec, scratch=str(tmp_path / "scratch"))["status"] == "skipped"
