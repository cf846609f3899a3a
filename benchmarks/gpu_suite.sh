#!/usr/bin/env bash
# One script for a lent GPU (H100/H200): install the carried wheels, build cxrl._C, check the Triton
# kernels and the overlapped reward scoring against their references on the GPU, run the GPU-size
# benchmark cases one by one, print the tables last. Writes everything under $OUT when set.
# Budget: the whole script fits in CXRL_GPU_SUITE_BUDGET_S (default 480 s = 8 minutes) on one H200; each
# case gets its own timeout, capped by the time left, and a case that no longer fits is skipped and named.
#
# Prepare on the dev machine:  ../shared/tools/device-wheels.sh      (fetches diffusers/torchxrayvision into .whl/)
# Run through the device tool: carry [".whl"], command "bash benchmarks/gpu_suite.sh"
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT/results"
BUDGET=${CXRL_GPU_SUITE_BUDGET_S:-480}
log() { echo "[gpu_suite $(date +%H:%M:%S)] $*" | tee -a "$OUT/suite.log"; }
started=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - started) - 10 )); }   # 10 s kept for the summary

if ls .whl/*.whl >/dev/null 2>&1; then
  log "installing carried wheels"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || { log "wheel install failed"; exit 1; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
log "building cxrl._C"
python3 -m pip install -q --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; log "build failed"; exit 1; }
python3 -c "import torch, triton, cxrl; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name()); from cxrl._backend import format_report; print(format_report())" | tee "$OUT/backend.txt"

log "correctness on the GPU (kernels, eager-vs-fused step, overlapped scoring)"
cap=150; t=$(left); [ "$t" -lt "$cap" ] && cap=$t
timeout "$cap" python3 -m benchmarks.gpu_check 2>&1 | tee "$OUT/gpu_check.txt"
check_rc=${PIPESTATUS[0]}

# case  cap_seconds   (most wanted first: the end-to-end epoch, then the per-component cases)
failed=""; skipped=""
for spec in "rl_epoch 200" "ddim_step 60" "rewards 60" "trajectory 60" "attention 150"; do
  set -- $spec; case_name=$1; cap=$2
  t=$(left)
  if [ "$t" -lt 30 ]; then skipped="$skipped $case_name"; log "skip $case_name: ${t}s left of the ${BUDGET}s budget"; continue; fi
  [ "$t" -lt "$cap" ] && cap=$t
  log "benchmark $case_name (gpu size, timeout ${cap}s)"
  timeout "$cap" python3 -m benchmarks "$case_name" --size gpu --json "$OUT/bench_$case_name.json" \
      --results-dir "$OUT/results" > "$OUT/bench_$case_name.txt" 2> "$OUT/bench_$case_name.err"
  rc=$?
  [ "$rc" = 0 ] || { failed="$failed $case_name(rc=$rc)"; tail -15 "$OUT/bench_$case_name.err"; }
done

log "done in $(( $(date +%s) - started ))s (gpu_check rc=$check_rc; failed:${failed:- none}; skipped:${skipped:- none})"
for f in "$OUT"/bench_*.txt; do sed -n '/^# cxrl benchmarks/,$p' "$f"; done
[ "$check_rc" = 0 ] && [ -z "$failed" ] && [ -z "$skipped" ]
