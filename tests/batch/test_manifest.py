"""Manifests: YAML/CSV/folders -> job specs; options checked against the fit configs; configs
built exactly as the CLI builds them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import tyro

from recon.batch.manifest import (
    JobSpec,
    build_config,
    folder_jobs,
    options_of,
    read_manifest,
    validate_options,
)
from recon.errors import InputError
from recon.pipelines.capture import CaptureFitConfig
from recon.pipelines.ct import CTFitConfig


def _write(tmp_path: Path, text: str, name: str = "m.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_yaml_defaults_per_kind_nested_options_and_cli_spellings(tmp_path):
    m = _write(tmp_path, """
out: results
defaults:
  seed: 3
  ct: {method: tv, tv: {iterations: 50}}
  capture: {preset: plain}
jobs:
  - {kind: ct, data: scans/a}
  - {kind: ct, data: /abs/b.npy, name: b-fdk, method: fdk, --checkpoint-every: 7}
  - {kind: capture, data: caps/mug, train-views: [0, 1, 2], reg.dropout: 0.1, background: [1, 1, 1]}
""")
    jobs, out = read_manifest(m)
    assert out == str(tmp_path / "results")
    assert [j.error for j in jobs] == [None, None, None]
    a, b, c = jobs
    assert (a.name, a.kind, a.data) == ("a", "ct", str(tmp_path / "scans" / "a"))
    assert a.options == {"seed": 3, "method": "tv", "tv.iterations": 50}
    assert (b.name, b.data) == ("b-fdk", "/abs/b.npy")
    assert b.options == {"seed": 3, "method": "fdk", "tv.iterations": 50, "checkpoint_every": 7}
    assert c.options == {"seed": 3, "preset": "plain", "train_views": [0, 1, 2], "reg.dropout": 0.1, "background": [1.0, 1.0, 1.0]}


def test_csv_cells_are_yaml_scalars_and_empty_cells_unset(tmp_path):
    m = _write(tmp_path, "# a comment\nkind,data,name,method,tv.iterations,views,filter\n"
                         "ct,s1,,tv,100,,\nct,s2,fbp2,fbp,,20,hann\n", "m.csv")  # fmt: skip
    jobs, out = read_manifest(m)
    assert out is None
    assert [(j.name, j.options) for j in jobs] == [
        ("s1", {"method": "tv", "tv.iterations": 100}),
        ("fbp2", {"method": "fbp", "views": 20, "filter": "hann"}),
    ]
    assert jobs[0].data == str(tmp_path / "s1")


@pytest.mark.parametrize(
    ("entry", "needle"),
    [
        pytest.param("{kind: ct, data: s, tv.iters: 3}", "unknown option 'tv.iters' for recon ct fit; did you mean tv.iterations", id="unknown-option"),
        pytest.param("{kind: ct, data: s, iterations: many}", "option 'iterations': expected an integer or null, got 'many'", id="bad-type"),
        pytest.param("{kind: ct, data: s, method: magic}", "option 'method': expected one of 'fdk', 'fbp', 'sart', 'tv', 'gaussian'", id="bad-choice"),
        pytest.param("{kind: ct, data: s, out: elsewhere}", "option 'out' is set by recon batch", id="reserved"),
        pytest.param("{kind: capture, data: c, downscale: [2]}", "option 'downscale': expected a number", id="list-for-number"),
        pytest.param("{kind: capture, data: c, densify: 3}", "unknown option 'densify'", id="group-without-field"),
        pytest.param("{kind: mri, data: s}", "kind 'mri', expected one of ct, capture", id="unknown-kind"),
        pytest.param("{data: s}", "no kind", id="no-kind"),
        pytest.param("{kind: ct}", "no data", id="no-data"),
        pytest.param("{kind: ct, data: s, name: ../up}", "not usable as a folder name", id="bad-name"),
        pytest.param("just-a-string", "expected a mapping", id="not-a-mapping"),
    ],
)
def test_bad_job_gets_one_line_error_and_the_others_stay(tmp_path, entry, needle):
    m = _write(tmp_path, f"jobs:\n  - {{kind: ct, data: good}}\n  - {entry}\n")
    jobs, _ = read_manifest(m)
    assert jobs[0].error is None
    assert jobs[1].error is not None and needle in jobs[1].error, jobs[1].error
    assert jobs[1].error.startswith("job 2") and "\n" not in jobs[1].error


def test_duplicate_names_are_reported_on_the_later_job(tmp_path):
    jobs, _ = read_manifest(_write(tmp_path, "jobs:\n  - {kind: ct, data: x/scan}\n  - {kind: ct, data: y/scan}\n  - {kind: ct, data: y/scan, name: other}\n"))
    assert [j.error is None for j in jobs] == [True, False, True]
    assert "name already used by job 1" in jobs[1].error


@pytest.mark.parametrize(
    ("text", "name", "needle"),
    [
        pytest.param("jobs: [{kind: ct, data: a}", "m.yaml", "YAML syntax error at line 1", id="yaml-syntax"),
        pytest.param("- 1\n- 2\n", "m.yaml", "", id="list-of-scalars-is-jobs"),
        pytest.param("42", "m.yaml", "expected a mapping with jobs:", id="scalar"),
        pytest.param("job: []", "m.yaml", "unknown top-level key 'job'", id="unknown-key"),
        pytest.param("jobs: []", "m.yaml", "jobs: expected a non-empty list", id="no-jobs"),
        pytest.param("defaults: 3\njobs: [{kind: ct, data: a}]", "m.yaml", "defaults: expected a mapping", id="bad-defaults"),
        pytest.param("kind: pet\njobs: [{data: a}]", "m.yaml", "kind: 'pet'", id="bad-top-kind"),
        pytest.param("kind,path\nct,a\n", "m.csv", "no 'data' column", id="csv-no-data"),
        pytest.param("kind,data\n", "m.csv", "no jobs", id="csv-header-only"),
        pytest.param("jobs: []", "m.json", "unknown manifest type '.json'", id="suffix"),
    ],
)
def test_unreadable_manifest_is_one_input_error_naming_the_file(tmp_path, text, name, needle):
    m = _write(tmp_path, text, name)
    if not needle:  # a bare list of jobs is accepted; its entries are bad jobs, not a bad manifest
        jobs, _ = read_manifest(m)
        assert all(j.error for j in jobs)
        return
    with pytest.raises(InputError) as info:
        read_manifest(m)
    msg = str(info.value)
    assert msg.startswith(str(m)) and needle in msg and "\n" not in msg, msg


def test_missing_manifest(tmp_path):
    with pytest.raises(InputError, match="manifest not found"):
        read_manifest(tmp_path / "nope.yaml")


# ---------------------------------------------------------------------------------- configs
@pytest.mark.parametrize(
    ("options", "argv"),
    [
        ({"method": "tv", "tv.iterations": 7, "tv.lambda_tv": 0.5, "views": 10, "seed": 4},
         ["--method", "tv", "--tv.iterations", "7", "--tv.lambda-tv", "0.5", "--views", "10", "--seed", "4"]),
        ({"method": "gaussian", "gaussian.n_gaussians": 800, "cor": 1.5, "reference": "/r.nii.gz"},
         ["--method", "gaussian", "--gaussian.n-gaussians", "800", "--cor", "1.5", "--reference", "/r.nii.gz"]),
        ({"method": "fdk", "filter": "hann", "short_scan": "parker"}, ["--method", "fdk", "--filter", "hann", "--short-scan", "parker"]),
    ],
)  # fmt: skip
def test_ct_config_equals_the_cli_parse(options, argv):
    built = build_config("ct", "/data/scan", "/runs/x", options)
    parsed = tyro.cli(CTFitConfig, args=["/data/scan", "--out", "/runs/x", *argv])
    assert built == parsed
    assert build_config("ct", "/data/scan", "/runs/x", options_of("ct", built)) == built  # the folder batch's round trip


@pytest.mark.parametrize(
    ("options", "argv"),
    [
        ({}, []),
        ({"preset": "plain", "downscale": 8, "train_views": [0, 1, 2], "reg.dropout": 0.1},
         ["--preset", "plain", "--downscale", "8", "--train-views", "0", "1", "2", "--reg.dropout", "0.1"]),
        ({"init": "photo", "densify.max_gaussians": 1000, "background": [1, 1, 1]},
         ["--init", "photo", "--densify.max-gaussians", "1000", "--background", "1", "1", "1"]),
    ],
)  # fmt: skip
def test_capture_config_equals_the_cli_parse_presets_included(options, argv):
    built = build_config("capture", "/data/cap", "/runs/c", options, resume=True)
    parsed = tyro.cli(CaptureFitConfig, args=["/data/cap", "--out", "/runs/c", "--resume", *argv])
    assert built == parsed
    again = build_config("capture", "/data/cap", "/runs/c", options_of("capture", built), resume=True)
    assert again == built


def test_validate_options_coerces_to_json_types_and_resolves_paths(tmp_path):
    got = validate_options("ct", {"reference": "ref.nii.gz", "views": "12", "relaxation": "1e-1", "trust_pickle": "yes"}, tmp_path)
    assert got == {"reference": str(tmp_path / "ref.nii.gz"), "views": 12, "relaxation": 0.1, "trust_pickle": True}
    with pytest.raises(ValueError, match="expected true or false"):
        validate_options("ct", {"trust_pickle": 1})


def test_folder_jobs_one_per_scan_sidecars_and_hidden_skipped(tmp_path):
    for d in ("case1", "case2", ".hidden", "_batch"):
        (tmp_path / d).mkdir()
    for f in ("case3.npy", "case3.json", "notes.txt", "case4.tif", "case4.yaml"):
        (tmp_path / f).write_text("x")
    jobs = folder_jobs("ct", tmp_path, {"method": "tv"})
    assert [(j.name, Path(j.data).name) for j in jobs] == [("case1", "case1"), ("case2", "case2"), ("case3", "case3.npy"), ("case4", "case4.tif")]
    assert all(j.options == {"method": "tv"} and j.error is None for j in jobs)
    assert [j.name for j in folder_jobs("capture", tmp_path, {})] == ["case1", "case2"]


def test_folder_jobs_errors(tmp_path):
    with pytest.raises(InputError, match="holds no inputs"):
        folder_jobs("ct", tmp_path, {})
    with pytest.raises(InputError, match="not a folder"):
        folder_jobs("ct", tmp_path / "missing", {})
    (tmp_path / "s").mkdir()
    with pytest.raises(ValueError, match="unknown option 'tv.iters'"):
        folder_jobs("ct", tmp_path, {"tv.iters": 1})


def test_jobspec_round_trips_through_a_dict():
    spec = JobSpec(name="a", kind="ct", data="/d", out="/o", options={"views": 3}, index=2)
    assert JobSpec.from_dict(dataclasses.asdict(spec)) == spec
