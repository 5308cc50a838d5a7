"""Patch an installed MinkowskiEngine 0.5.4 for Python >= 3.10, where ``collections.Sequence``
is gone: ``from collections import Sequence, namedtuple`` becomes ``from collections import
namedtuple`` + ``from collections.abc import Sequence`` (same indentation), and every
``collections.Sequence`` becomes ``collections.abc.Sequence``. Called by install_minkowski.sh.

    python scripts/patch_minkowski_sequence.py PATH/TO/site-packages/MinkowskiEngine
"""

from __future__ import annotations

import pathlib
import re
import sys

IMPORT = re.compile(r"^(\s*)from collections import ([^\n]*\bSequence\b[^\n]*)$", re.MULTILINE)


def fix_import(m: re.Match) -> str:
    indent, names = m.group(1), [n.strip() for n in m.group(2).split(",")]
    rest = [n for n in names if n != "Sequence"]
    lines = [f"{indent}from collections import {', '.join(rest)}"] if rest else []
    return "\n".join([*lines, f"{indent}from collections.abc import Sequence"])


def patch_text(text: str) -> str:
    return IMPORT.sub(fix_import, text).replace("collections.Sequence", "collections.abc.Sequence")


def main(package_dir: str) -> int:
    root = pathlib.Path(package_dir)
    if not root.is_dir():
        print(f"{root}: not a folder", file=sys.stderr)
        return 1
    for path in sorted(root.rglob("*.py")):
        text = path.read_text()
        new = patch_text(text)
        if new != text:
            path.write_text(new)
            print(f"patched {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:2]) if len(sys.argv) == 2 else 2)
