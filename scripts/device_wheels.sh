#!/usr/bin/env bash
# Fetch, on THIS machine, the Python 3.12 wheels that the lent CUDA machine's image lacks, into .whl/
# (ignored by git). scripts/device_check_plugins.sh installs them there (no network on that machine).
# The device image (/work/.library/device/KINDS.md) has torch, numpy, numba, scipy, opencv, rich,
# safetensors, huggingface_hub, accelerate, peft, transformers; recon fit also needs these. Versions are
# those of this project's venv where it has them. ~13 MB in all (the device call carries at most 64 MiB).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
ver() { "$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1" 2>/dev/null || true; }
pkgs=()
for name in gsplat plyfile tyro docstring_parser typeguard shtab diffusers importlib_metadata; do
  v=$(ver "$name"); pkgs+=("${name}${v:+==$v}")
done
mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "${pkgs[@]}"
ls -la .whl
du -sh .whl
