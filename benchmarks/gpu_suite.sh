#!/usr/bin/env bash
# One script for a lent GPU (H100/H200): install the carried wheels, build cxrl._C, check the Triton
# kernels against their references on the GPU, run the GPU-size benchmark cases, print a short table
# last. Writes full results under $OUT when set. Budget: < 8 minutes on one H200.
#
# Prepare on the dev machine:  ../shared/tools/device-wheels.sh      (fetches diffusers/torchxrayvision into .whl/)
# Run through the device tool: carry [".whl"], command "bash benchmarks/gpu_suite.sh"
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
log() { echo "[gpu_suite $(date +%H:%M:%S)] $*" | tee -a "$OUT/suite.log"; }
started=$(date +%s)

if ls .whl/*.whl >/dev/null 2>&1; then
  log "installing carried wheels"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || { log "wheel install failed"; exit 1; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
log "building cxrl._C"
python3 -m pip install -q --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; log "build failed"; exit 1; }
python3 -c "import torch, triton, cxrl; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name()); from cxrl._backend import format_report; print(format_report())" | tee "$OUT/backend.txt"

log "correctness of the kernels on the GPU"
timeout 150 python3 -m benchmarks.gpu_check 2>&1 | tee "$OUT/gpu_check.txt"
check_rc=${PIPESTATUS[0]}

log "benchmarks (gpu size)"
timeout 300 python3 -m benchmarks --size gpu --json "$OUT/bench.json" --results-dir "$OUT/results" > "$OUT/bench.txt" 2> "$OUT/bench.err"
bench_rc=$?
tail -20 "$OUT/bench.err"
cp -r benchmarks/results "$OUT/results-before" 2>/dev/null || true

log "done in $(( $(date +%s) - started ))s (gpu_check rc=$check_rc, bench rc=$bench_rc)"
cat "$OUT/bench.txt"
[ "$check_rc" = 0 ] && [ "$bench_rc" = 0 ]
