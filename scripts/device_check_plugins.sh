#!/usr/bin/env bash
# One prepared check for a CUDA machine (issue 4, item 5): recon-splat and recon fit on CUDA (gsplat)
# and on the CPU (our rasteriser), same fox protocol, views, steps and seed; prints PSNR and wall
# time of each so speed and PSNR parity can be read side by side. Needs ../shared/data beside the
# project and `make install` done. Writes under ${OUT:-runs}/device_check_plugins/.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-runs}/device_check_plugins"
ITER="${ITER:-500}"
PY=.venv/bin/python
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))"
"$PY" scripts/bench_plugin_parity.py --iterations "$ITER" --device cuda --out "$OUT/cuda"
"$PY" scripts/bench_plugin_parity.py --iterations "$ITER" --device cpu --out "$OUT/cpu"
for d in cuda cpu; do echo "== $d"; cat "$OUT/$d/results.md"; done
