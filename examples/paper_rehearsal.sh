#!/usr/bin/env bash
# The paper's path as a MIMIC-CXR user runs it, rehearsed end to end on a synthetic MIMIC-CXR-JPG-layout tree
# and a random-weight RoentGen-layout generator: no credentialed data, no network, no optional weights.
#
#   bash examples/paper_rehearsal.sh [OUT]          # default OUT=/tmp/cxrl-rehearsal; CPU, see docs/paper_run.md
#
# Steps (each is what a MIMIC user types, with their paths in place of OUT/...):
#   1. cxrl data synth-mimic      the MIMIC-CXR-JPG v2 tree (+ reports tree) and the RoentGen-layout generator
#   2. cxrl data prepare          decode the train JPEGs once into the image cache
#   3. cxrl train-reward ...      posture, diagnostic, consistency on the 'reward' half of the train reports (by
#                                 study id; consistency on the report prompts the RL draws), and their held-out
#                                 evaluators on the 'evaluator' half, with another seed
#   4. cxrl train --config configs/mimic_roentgen.yaml   RL with the three rewards, then the end-of-run evaluation
#                                 on MIMIC's test reports by the MIMIC-trained evaluators
#   5. cxrl evaluate --config RUN/config.yaml            the same evaluation again, from the saved models
#   6. torchrun --nproc_per_node 2 (gloo) vs one process: a short run with the same global batch, weights compared
# Sizes are environment variables (defaults: a useful CPU size); tests/test_paper_rehearsal.py runs the same chain
# at a tiny size in the default test suite.
set -euo pipefail

OUT=${1:-/tmp/cxrl-rehearsal}
CXRL=${CXRL:-python -m cxrl}
RES=${RES:-64}                 # image side (the generator's output; RoentGen: 512)
STUDIES=${STUDIES:-600}        # synthetic studies (~80% train, 10% validate, 10% test)
REWARD_EPOCHS=${REWARD_EPOCHS:-6}
EPOCHS=${EPOCHS:-4}            # RL epochs (the config: 100)
SAMPLES=${SAMPLES:-16}         # images per RL epoch (the config: 256)
STEPS=${STEPS:-10}             # DDIM steps (the config: 50)
EVAL_PROMPTS=${EVAL_PROMPTS:-16}
DEVICE=${DEVICE:-cpu}
CONFIG=${CONFIG:-configs/mimic_roentgen.yaml}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} TQDM_DISABLE=1

if [ -e "$OUT" ] && [ -n "$(ls -A "$OUT")" ]; then
  echo "paper_rehearsal: $OUT exists and is not empty; pass another directory" >&2
  exit 2
fi
mkdir -p "$OUT/no-xrv"   # an empty torchxrayvision cache: FID falls back to the evaluator's features, and says so
MIMIC=$OUT/mimic REPORTS=$OUT/mimic/reports GEN=$OUT/roentgen CACHE=$OUT/cache
step() { echo; echo "=== $* ($(date +%H:%M:%S))"; }

step "1. synthetic MIMIC-CXR-JPG tree + RoentGen-layout generator"
$CXRL data synth-mimic "$MIMIC" --resolution "$RES" --studies "$STUDIES" --generator-out "$GEN"

step "2. image cache of the train split"
$CXRL data prepare --root "$MIMIC" --reports-root "$REPORTS" --split train --resolution "$RES" --cache-dir "$CACHE"

step "3. reward models (reward half) and held-out evaluators (evaluator half)"
for half in reward evaluator; do
  seed=$([ "$half" = reward ] && echo 0 || echo 1)
  for kind in posture diagnostic consistency; do
    $CXRL train-reward "$kind" --data mimic --mimic-root "$MIMIC" --reports-root "$REPORTS" --cache-dir "$CACHE" \
      --report-subset "$half" --resolution "$RES" --seed "$seed" --epochs "$REWARD_EPOCHS" --batch-size 32 \
      --out "$OUT/$half/$kind"
  done
done

# configs/mimic_roentgen.yaml with the rehearsal's paths and sizes. float32 on the CPU (bfloat16 is the GPU setting).
RUN_ARGS=(
  model.path="$GEN" model.device="$DEVICE" model.dtype=float32
  sampling.num_steps="$STEPS" sampling.batch_size=4 sampling.samples_per_epoch="$SAMPLES" sampling.group_size=2
  train.batch_size=2 train.gradient_accumulation=2 train.advantage_window=8 train.advantage_min_count=4
  data.path="$MIMIC" data.reports_path="$REPORTS"
  "rewards.components=[{name: posture, path: '$OUT/reward/posture'}, {name: diagnostic, path: '$OUT/reward/diagnostic'}, {name: consistency, path: '$OUT/reward/consistency'}]"
  eval.evaluators="$OUT/evaluator" eval.xrv_cache_dir="$OUT/no-xrv" eval.num_prompts="$EVAL_PROMPTS"
  eval.batch_size=16 eval.bootstrap=200 log.progress=false log.sample_every=2 log.sample_count=8 log.tensorboard=off
)

step "4. RL: cxrl train --config $CONFIG, then its evaluation on MIMIC's test reports"
$CXRL train --config "$CONFIG" "${RUN_ARGS[@]}" train.epochs="$EPOCHS" --output "$OUT/run"

step "5. cxrl evaluate --config RUN/config.yaml (the run's evaluation again, from the saved models)"
$CXRL evaluate --config "$OUT/run/config.yaml" --model "$OUT/run/final" --baseline "$GEN" --out "$OUT/evaluate" \
  --device "$DEVICE"
python - "$OUT" <<'EOF'
import json
import sys
from pathlib import Path

out = Path(sys.argv[1])
first, again = (json.loads((out / d / "metrics.json").read_text()) for d in ("run/eval", "evaluate"))
worst = max(abs(again[m][k] - first[m][k]) / max(abs(first[m][k]), 1e-12) for m in first
            for k in ("posture", "auroc", "consistency", "fid", "ms_ssim") if first[m][k] is not None)
print(f"cxrl evaluate vs the run's evaluation: largest relative difference {worst:.1e} (tuned: LoRA merged on save)")
sys.exit(0 if worst < 1e-4 else 1)
EOF

step "6. torchrun --nproc_per_node 2 (gloo) against one process"
# Same global batch (4 per optimizer step), every timestep trained (a timestep subset is drawn per rank), and an
# adam_eps above the gradient scale (AdamW's step stays linear in the gradient), as tests/rl/test_torchrun.py.
PAIR=(train.epochs=2 sampling.samples_per_epoch=4 sampling.batch_size=2 train.batch_size=1
      train.timestep_fraction=1.0 train.adam_eps=1e-3 train.learning_rate=1e-3 eval.enabled=false log.sample_every=0)
$CXRL train --config "$CONFIG" "${RUN_ARGS[@]}" "${PAIR[@]}" train.gradient_accumulation=4 --output "$OUT/one-process"
python -m torch.distributed.run --nproc_per_node 2 --master_addr 127.0.0.1 --master_port "${PORT:-29517}" \
  -m cxrl train --config "$CONFIG" "${RUN_ARGS[@]}" "${PAIR[@]}" train.gradient_accumulation=2 --output "$OUT/two-ranks"
python - "$OUT" <<'EOF'
import sys
from pathlib import Path

from cxrl.rl.checkpoint import load_checkpoint

out = Path(sys.argv[1])
_, one = load_checkpoint(out / "one-process" / "checkpoints" / "epoch_000002")
_, two = load_checkpoint(out / "two-ranks" / "checkpoints" / "epoch_000002")
diff = max(float((two["weights"][k] - v).abs().max()) for k, v in one["weights"].items())
moved = max(float(v.abs().max()) for k, v in one["weights"].items() if "lora_B" in k)
print(f"two ranks vs one process: max |weight difference| {diff:.2e} (LoRA B moved up to {moved:.2e} from 0; "
      f"one AdamW step is 1e-3)")
sys.exit(0 if diff < 1e-5 else 1)
EOF

step "done"
cat "$OUT/run/eval/results.md"
echo "outputs: $OUT (run/, run/eval/, evaluate/, reward/, evaluator/, one-process/, two-ranks/)"
