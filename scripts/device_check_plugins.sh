#!/usr/bin/env bash
# One prepared check for a lent CUDA machine (issues 4 and 17, item 6). On the device tool:
#   here first:  bash scripts/device_wheels.sh            (Python 3.12 wheels the device image lacks -> .whl/)
#   there:       run(command="bash scripts/device_check_plugins.sh", carry=[".whl"], timeout_s=600)
# It measures, in this order, each step bounded so the later ones still report:
#   1. gsplat 1.4.0's CUDA extension builds (JIT, first use) and imports;
#   2. gsplat's CUDA rasteriser vs our CPU rasteriser on the same scenes (scripts/bench_raster_gsplat.py:
#      fwd + bwd times, image and gradient differences);
#   3. `recon fit` on the shipped sample (data/fox, 8 training / 8 evaluation views) on CUDA and on the
#      CPU, same views, steps and seed: eval PSNR / SSIM and wall time of each;
#   4. with nerfstudio installed and ../shared/data present, `ns-train recon-splat` vs `recon fit`
#      (scripts/bench_plugin_parity.py) on both devices.
# Results land flat in $OUT (the device tool returns files at most two folders down): raster.json,
# fit_cuda.json, fit_cpu.json, summary.txt. Without the device tool, OUT defaults to runs/device_check.
# DRY=1 runs the CPU halves alone (a check of the script on a machine without a GPU).
# Run once on a lent H200 (2026-12-04) with ITER=300: 5 min 12 s, of which the gsplat build took 175 s
# (docs/benchmarks.md, "CUDA: gsplat on a lent H200"; raw outputs in docs/device/2026-12-04/).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/device_check}"
ITER="${ITER:-1000}"
WORK="${WORK:-/tmp/device_check}"
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1 MAX_JOBS="${MAX_JOBS:-16}"
if [ -x .venv/bin/python ] && .venv/bin/python -c "import recon, gsplat" 2>/dev/null; then
  PY=.venv/bin/python
  export PYTHONPATH="$PWD"
else
  PY=python3
  if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      || { echo "device_check: installing .whl/ failed"; exit 1; }
  fi
  export PYTHONPATH="/tmp/site:$PWD"
fi
summary="$OUT/summary.txt"
log() { echo "$*" | tee -a "$summary"; }
log "== $(date -u +%FT%TZ) $(git rev-parse --short HEAD 2>/dev/null || echo no-git), python $($PY -V 2>&1)"
DRY="${DRY:-0}"
devices="cuda cpu"; raster_flags=""
if [ "$DRY" = 1 ]; then devices="cpu"; raster_flags="--cpu-only --scenes 5000x128 --repeats 2"; log "DRY=1: CPU halves only"
else
  "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('torch', torch.__version__, torch.cuda.get_device_name(0))" 2>&1 | tee -a "$summary"
  [ "${PIPESTATUS[0]}" = 0 ] || exit 1
fi

t0=$(date +%s)
[ "$DRY" = 1 ] || timeout 420 "$PY" -c "from gsplat.cuda._backend import _C; assert _C is not None, 'gsplat CUDA extension did not build'; print('gsplat CUDA extension ready')" 2>&1 | tail -5 | tee -a "$summary"
log "1. gsplat extension: rc ${PIPESTATUS[0]}, $(( $(date +%s) - t0 )) s"

t0=$(date +%s)
timeout 150 "$PY" scripts/bench_raster_gsplat.py $raster_flags --json "$OUT/raster.json" 2>&1 | tee -a "$summary"
log "2. rasteriser gsplat vs CPU: rc ${PIPESTATUS[0]}, $(( $(date +%s) - t0 )) s"

for dev in $devices; do
  t0=$(date +%s)
  timeout 240 "$PY" -c 'from recon.cli import entrypoint; entrypoint()' fit data/fox \
    --train-views 0 1 2 3 4 5 6 7 --eval-indices 8 9 10 11 12 13 14 15 --downscale 2 \
    --iterations "$ITER" --seed 0 --device "$dev" --out "$WORK/fit_$dev" --overwrite > "$WORK/fit_$dev.log" 2>&1
  rc=$?
  tail -3 "$WORK/fit_$dev.log"
  [ -f "$WORK/fit_$dev/metrics.json" ] && cp "$WORK/fit_$dev/metrics.json" "$OUT/fit_$dev.json"
  log "3. recon fit data/fox on $dev, $ITER steps: rc $rc, $(( $(date +%s) - t0 )) s wall, $("$PY" -c "import json,sys; m=json.load(open(sys.argv[1])); e=m['eval']['mean']; print(f\"eval {e['psnr']:.2f} dB / {e['ssim']:.3f} on {e['n_views']} views, train {m['train_time_s']:.0f} s, {m['n_gaussians']} Gaussians, {m['device']}\")" "$OUT/fit_$dev.json" 2>/dev/null || echo no metrics)"
done

if [ "$DRY" != 1 ] && "$PY" -c "import nerfstudio" 2>/dev/null && [ -d ../shared/data/object/fox ]; then
  for dev in $devices; do
    timeout 600 "$PY" scripts/bench_plugin_parity.py --iterations 500 --device "$dev" --out "$WORK/parity_$dev" 2>&1 | tail -5
    [ -f "$WORK/parity_$dev/results.md" ] && cp "$WORK/parity_$dev/results.md" "$OUT/parity_$dev.md"
  done
else
  log "4. ns-train parity skipped: DRY=1, nerfstudio not importable or ../shared/data absent here"
fi
log "== done $(date -u +%FT%TZ)"
