"""Two CPU jobs on the same cores: what OpenMP's barrier spinning costs, and what ``cxrl``'s spin count buys.

Each worker times the demo UNet's forward + backward with classifier-free guidance (batch 8, so 16 rows, the demo's
training minibatch) with ``--threads`` intra-op threads, in its own process. The driver runs one worker alone and
two side by side, with libgomp's default spin and with the count the ``cxrl`` command sets
(``cxrl.cli.OPENMP_SPIN_COUNT``), and prints milliseconds per sample (median of the timed repeats). The numbers
quoted in docs/demo.md ("Threads") come from ``python -m benchmarks.thread_contention`` on the 2-vCPU VM.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

BATCH = 8   # the demo's training minibatch; CFG doubles the rows


def worker(threads: int, reps: int) -> float:
    """Median ms per sample of the demo UNet's CFG forward + backward at ``threads`` threads (this process)."""
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    torch.set_num_threads(threads)
    unet = UNet2DConditionModel.from_pretrained(Path(__file__).resolve().parent.parent / "cxrl" / "assets" / "base" / "unet")
    x = torch.randn(2 * BATCH, 1, unet.config.sample_size, unet.config.sample_size)
    t = torch.full((2 * BATCH,), 500)
    context = torch.randn(2 * BATCH, 12, unet.config.cross_attention_dim)
    times = []
    for _ in range(reps + 1):                       # the first call warms up oneDNN and is dropped
        start = time.perf_counter()
        unet(x, t, encoder_hidden_states=context).sample.square().mean().backward()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:]) / BATCH * 1000


def run_side_by_side(jobs: int, threads: int, reps: int, spin: str | None) -> list[float]:
    """``jobs`` workers started together; their ms per sample."""
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    if spin is not None:
        env["GOMP_SPINCOUNT"] = spin
    cmd = [sys.executable, "-m", "benchmarks.thread_contention", "--worker", "--threads", str(threads), "--reps", str(reps)]
    root = Path(__file__).resolve().parent.parent
    procs = [subprocess.Popen(cmd, env=env, cwd=root, stdout=subprocess.PIPE, text=True) for _ in range(jobs)]
    out = []
    for p in procs:
        stdout, _ = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"thread_contention worker failed (exit {p.returncode})")
        out.append(float(stdout.strip().splitlines()[-1]))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads per job (default 2)")
    ap.add_argument("--reps", type=int, default=10, help="timed repeats per job (default 10)")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args(argv)
    if args.worker:
        print(f"{worker(args.threads, args.reps):.2f}")
        return 0
    from cxrl.cli import OPENMP_SPIN_COUNT

    rows = []
    for label, spin in (("libgomp default", None), (f"GOMP_SPINCOUNT={OPENMP_SPIN_COUNT} (cxrl)", OPENMP_SPIN_COUNT)):
        for jobs in (1, 2):
            ms = run_side_by_side(jobs, args.threads, args.reps, spin)
            rows.append({"spin": label, "jobs": jobs, "threads": args.threads, "ms_per_sample": [round(m, 1) for m in ms]})
            print(f"{label:32s} {jobs} job(s) x {args.threads} threads: "
                  + ", ".join(f"{m:.1f}" for m in ms) + " ms/sample", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
