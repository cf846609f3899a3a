"""The GPU suite's ``demo`` step: the product's main job, ``cxrl train`` on the embedded default, launched the
way a GPU user launches it (``torchrun``, one process per GPU, NCCL), on CUDA.

The other steps time pieces at the SD-1.5 shape; this one runs the whole trainer as shipped (rollouts with the
fused DDIM kernel, bf16 autocast, the PPO update, the reward-hacking monitor, checkpoints, the held-out
evaluation) and records what it did: run.json's times and device, the per-epoch times from metrics.jsonl, and
the tuned − base table. It gets whatever time the suite's budget has left (``optional`` in gpu_suite.py); the
training process gets that minus a margin, so a run cut short still leaves the epochs it finished on record.
The run's small files (run.json, config.yaml, metrics.jsonl, eval/comparison.json, eval/results.md) go into
the suite's bundle under ``results/demo/``.

On the GPU the evaluation samples in batches of 64 (``GPU_OVERRIDES``); ``--rehearse``: the same launch on the CPU with
one epoch of 8 images and an evaluation on 4 prompts.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from .gpu_steps import StepRecord

ROOT = Path(__file__).resolve().parents[1]
MARGIN_S = 8          # kept back from the step's timeout to read the run's files and write the record
REHEARSAL = ("train.epochs=1", "sampling.samples_per_epoch=8", "sampling.group_size=4", "sampling.batch_size=4",
             "train.batch_size=4", "eval.num_prompts=4", "eval.samples_per_prompt=2", "eval.bootstrap=50",
             "monitor.every=0", "log.sample_every=0", "train.final_policy=last", "model.device=cpu")
# On the GPU the evaluation samples 984 images per model (the shipped base cache holds CPU samples, so the base is
# sampled too); at the demo's batch of 16 that is 620 launch-bound UNet calls per model, which did not finish in the
# step's time on the H200 (2026-12-04). Batches of 64 make it 160. Same prompts, initial noises and evaluators; the
# per-step noise is drawn per batch, so the samples differ from a batch-16 run's (docs/benchmarks.md).
GPU_OVERRIDES = ("eval.batch_size=64",)
KEPT_FILES = ("run.json", "config.yaml", "metrics.jsonl", "final_policy.json", "eval/comparison.json", "eval/results.md")


def demo_command(run_dir: Path, rehearse: bool) -> list[str]:
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
            "-m", "cxrl", "train", "--config", str(ROOT / "cxrl" / "configs" / "demo.yaml"),
            f"log.output_dir={run_dir}", "log.progress=false"]
    return argv + list(REHEARSAL if rehearse else GPU_OVERRIDES)


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:   # a line cut by the timeout
            break
    return rows


def demo_step(rec: StepRecord, rehearse: bool) -> None:
    timeout = float(os.environ.get("CXRL_SUITE_STEP_TIMEOUT_S") or 120) - MARGIN_S
    results = Path(os.environ.get("CXRL_BENCH_RESULTS") or ROOT / "benchmarks" / "results")
    run_dir = results.parent / "demo_run"
    shutil.rmtree(run_dir, ignore_errors=True)
    argv = demo_command(run_dir, rehearse)
    print("$ " + " ".join(argv), flush=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    t0 = time.perf_counter()
    try:
        code = subprocess.run(argv, cwd=ROOT, env=env, timeout=max(timeout, 5)).returncode
    except subprocess.TimeoutExpired:
        code = None
    wall = time.perf_counter() - t0
    rec.add_time(run_s=wall)
    rec.headline(wall_s=round(wall, 1), exit_code=code, timeout_s=round(timeout, 1))

    kept = results / "demo"
    for name in KEPT_FILES:
        if (run_dir / name).exists():
            (kept / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(run_dir / name, kept / name)

    run = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").exists() else {}
    machine = run.get("machine", {})
    seconds = (run.get("seconds") or [{}])[-1]
    rec.headline(device=machine.get("device", "cpu"), yardstick_tflops=machine.get("matmul_fp32_1024_1thread_tflops"),
                 **{f"{k}_s": v for k, v in seconds.items()})
    epochs = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("epoch", -1) >= 0
              and "throughput/epoch_seconds" in r]
    for r in epochs:
        rec.row({"epoch": r["epoch"], **{k.split("/")[1]: round(v, 3) for k, v in r.items()
                                        if k.startswith("throughput/") and isinstance(v, (int, float))},
                 "reward": r.get("reward/combined/mean")})
    if epochs:
        rec.headline(epochs_done=len(epochs),
                     epoch_s_median=statistics.median(r["throughput/epoch_seconds"] for r in epochs[1:] or epochs),
                     first_epoch_s=epochs[0]["throughput/epoch_seconds"])
    comparison = run_dir / "eval" / "comparison.json"
    if comparison.exists():
        table = json.loads(comparison.read_text())["comparison"]
        for metric in ("posture", "consistency", "auroc"):   # None where undefined (AUROC on too few prompts)
            cell = table.get(metric, {})
            rec.headline(**{f"{metric}_{k}": None if cell.get(k) is None else round(cell[k], 4)
                            for k in ("diff", "ci_low")})
    if code is None:
        rec.note(f"the run was stopped at {timeout:.0f} s, its files as they were then are kept (results/demo/)")
    rec.check("cxrl train ran to the end under torchrun", code == 0, f"exit code {code}, {wall:.0f} s")
    if not rehearse:
        rec.check("the run trained on the GPU", "device" in machine, f"run.json machine: {machine}")
    rec.check("the evaluation wrote its tuned - base table", comparison.exists(), str(comparison))
