#!/usr/bin/env bash
# Build MinkowskiEngine 0.5.4, CPU-only, into the project venv (the optional `minkowski` backend
# of recon.sparse). Takes ~28 minutes on 2 cores; recon.sparse works without it (pure-torch
# backend, exact), so run this only to use or test against MinkowskiEngine.
#
# Why this recipe (measured by the team):
#   * ME 0.5.4's CUDA build is broken upstream on CUDA 12+, so only the CPU build is supported;
#   * it needs a system BLAS (Debian libopenblas-dev), no build isolation (it compiles against
#     the venv's torch), SETUPTOOLS_USE_DISTUTILS=stdlib (its setup.py imports distutils);
#   * its Python sources use `collections.Sequence`, removed in Python 3.10: patched after
#     install to `collections.abc.Sequence`.
#
# Usage: bash scripts/install_minkowski.sh          (env: VENV=path/to/venv, MAX_JOBS=2)
set -euo pipefail

ME_VERSION="0.5.4"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
START=$(date +%s)

log() { printf '[install_minkowski] %s\n' "$*"; }
die() { printf '[install_minkowski] error: %s\n' "$*" >&2; exit 1; }

[ -x "$PY" ] || die "$PY not found (expected the project venv; set VENV=...)"
"$PY" -c "import torch" 2>/dev/null || die "torch does not import in $VENV (install the project first: make install)"
command -v g++ >/dev/null || die "g++ not found (apt-get install build-essential)"

# 1. system BLAS
if ! dpkg -s libopenblas-dev >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || die "libopenblas-dev is missing and neither root nor sudo is available"
    SUDO="sudo"
  fi
  log "installing Debian package libopenblas-dev"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libopenblas-dev
fi

# 2. build and install (ME's setup.py calls a bare `pip`: the venv's must come first on PATH)
export PATH="$VENV/bin:$PATH"
export SETUPTOOLS_USE_DISTUTILS=stdlib
export MAX_JOBS="${MAX_JOBS:-2}"
if "$PY" -m pip install --help | grep -q -- '--global-option'; then
  BUILD_FLAGS=(--global-option=--cpu_only --global-option=--blas=openblas)
else  # pip >= 25.3 dropped --global-option; setuptools passes build options through -C
  BUILD_FLAGS=(--config-settings=--build-option=--cpu_only --config-settings=--build-option=--blas=openblas)
fi
log "building MinkowskiEngine $ME_VERSION (CPU only, MAX_JOBS=$MAX_JOBS); this takes ~28 minutes"
"$PY" -m pip install -v --no-deps --no-build-isolation --no-cache-dir "${BUILD_FLAGS[@]}" \
  "MinkowskiEngine==$ME_VERSION"

# 3. patch collections.Sequence -> collections.abc.Sequence (find the package without importing it)
PKG_DIR="$("$PY" - <<'EOF'
import importlib.util, os
spec = importlib.util.find_spec("MinkowskiEngine")
print(os.path.dirname(spec.origin) if spec and spec.origin else "")
EOF
)"
[ -n "$PKG_DIR" ] && [ -d "$PKG_DIR" ] || die "MinkowskiEngine was not installed into $VENV"
log "patching collections.Sequence in $PKG_DIR"
"$PY" "$ROOT/scripts/patch_minkowski_sequence.py" "$PKG_DIR"
if grep -rnE 'from collections import .*\bSequence\b' --include='*.py' "$PKG_DIR"; then
  die "the imports above still take Sequence from collections"
fi

# 4. check
"$PY" -c "import MinkowskiEngine as ME; print('MinkowskiEngine', ME.__version__, 'imports')" \
  || die "MinkowskiEngine installed but does not import"
"$PY" -c "from recon.sparse import get_backend; print('recon.sparse backend:', get_backend('minkowski').name)"

ELAPSED=$(( $(date +%s) - START ))
log "done in $((ELAPSED / 60)) min $((ELAPSED % 60)) s"
