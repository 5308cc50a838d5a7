"""No code runs from data: the source tree never unpickles what a user hands it.

Checked over ``recon/``, ``plugins/``, ``viewer/`` and ``scripts/`` by parsing the source (not by
grepping, so a comment or docstring naming the calls is fine): no ``allow_pickle=True``, every
``torch.load`` passes ``weights_only=True``, and ``pickle.load`` appears only in the NAF reader,
behind ``--trust-pickle`` (tested in ``tests/io/test_bad_input_catalogue.py``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TREES = ("recon", "plugins", "viewer", "scripts")
PICKLE_ALLOWED = {"recon/io/naf.py"}
"""Files that may call pickle.load: the NAF reader, which refuses unless trust=True."""


def _sources() -> list[Path]:
    files = sorted(p for tree in TREES for p in (ROOT / tree).rglob("*.py") if "node_modules" not in p.parts)
    assert len(files) > 50, "source tree not found"
    return files


def _calls(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node


def _name(func: ast.expr) -> str:
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    return ".".join(reversed(parts))


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


@pytest.mark.parametrize("tree", TREES)
def test_no_unsafe_loads(tree):
    problems = []
    for path in _sources():
        rel = path.relative_to(ROOT).as_posix()
        if not rel.startswith(tree + "/"):
            continue
        for call in _calls(path):
            name = _name(call.func)
            where = f"{rel}:{call.lineno}"
            allow = _keyword(call, "allow_pickle")
            if allow is not None and not (isinstance(allow, ast.Constant) and allow.value is False):
                problems.append(f"{where}: {name}(allow_pickle=...) (never allow pickles in arrays)")
            if name == "torch.load" and not _is_true(_keyword(call, "weights_only")):
                problems.append(f"{where}: torch.load without weights_only=True")
            if name in ("pickle.load", "pickle.loads", "pickle.Unpickler", "dill.load", "joblib.load") and rel not in PICKLE_ALLOWED:
                problems.append(f"{where}: {name} (unpickling runs code from the file)")
    assert not problems, "\n".join(problems)


def test_the_checker_sees_what_it_must(tmp_path):
    """The walker finds the calls it forbids (so a passing test means something)."""
    bad = tmp_path / "bad.py"
    bad.write_text("import numpy as np, torch, pickle\nnp.load('x', allow_pickle=True)\ntorch.load('y')\npickle.load(open('z', 'rb'))\n")
    found = {_name(c.func): c for c in _calls(bad)}
    assert _is_true(_keyword(found["np.load"], "allow_pickle"))
    assert _keyword(found["torch.load"], "weights_only") is None
    assert "pickle.load" in found
