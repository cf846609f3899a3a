#!/usr/bin/env bash
# The GPU suite: one command for a lent GPU (H100/H200) whose results always come back.
#
#   bash benchmarks/gpu_suite.sh               on the GPU (budget 480 s of script time, the build included)
#   bash benchmarks/gpu_suite.sh --rehearse    the same steps on a CPU at tiny sizes, Triton interpreted
#   options: --only STEP,STEP  --budget SECONDS  --cap STEP=SECONDS  --keep-work   (benchmarks/gpu_suite.py)
#
# Leaves at most 4 files in $OUT (a temporary folder when OUT is unset): summary.json, suite.log,
# table.txt, bundle.tar.gz; the console ends with the table of headline numbers. Exit 0 only when every
# step passed. The steps, their caps and their order are in benchmarks/gpu_suite.py; docs/benchmarks.md
# ("GPU suite") says what each measures.
#
# Prepare on the dev machine:  ../shared/tools/device-wheels.sh --peers   (diffusers, torchxrayvision, trl -> .whl/)
# Device tool call:            carry [".whl"], command "bash benchmarks/gpu_suite.sh", timeout_s 600
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# The driver handles SIGTERM itself (stops the running step, writes its files); forward it there.
"$PY" -m benchmarks.gpu_suite "$@" &
driver=$!
trap 'kill -TERM "$driver" 2>/dev/null' TERM INT
wait "$driver"
rc=$?
while kill -0 "$driver" 2>/dev/null; do wait "$driver"; rc=$?; done   # wait returns early on a trapped signal

# If the driver itself died before writing its summary, leave one that says so.
if [ -n "${OUT:-}" ] && [ ! -s "$OUT/summary.json" ]; then
  mkdir -p "$OUT"
  printf '{"suite": "cxrl gpu suite", "exit_code": %d, "steps": [], "error": "the driver exited (code %d) before writing summary.json; see the console"}\n' \
    "$rc" "$rc" > "$OUT/summary.json"
  echo "[gpu_suite] the driver exited with code $rc before writing its files" | tee -a "$OUT/suite.log"
  [ "$rc" = 0 ] && rc=1
fi
exit "$rc"
