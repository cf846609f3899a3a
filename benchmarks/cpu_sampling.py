"""Side-by-side sampling batches on the CPU: ``threads`` workers of one intra-op thread each
(:func:`cxrl.machine.map_batches`, what ``eval.sampling_workers`` and ``train.rollout_workers`` do) against one batch
at a time on ``threads`` intra-op threads, timed in alternation in the same run (median of repeats), on the demo
UNet: 8 classifier-free-guided forwards of an eval batch (16 images = 32 rows) and of a rollout chunk (8 images =
16 rows).

``python -m benchmarks.cpu_sampling`` prints a JSON record with the machine yardstick and writes it to
benchmarks/results/cpu_sampling.json (``--out`` elsewhere); docs/demo.md ("Speed") quotes it.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from benchmarks.harness import write_record

ROOT = Path(__file__).resolve().parent.parent
UNET_DIR = ROOT / "cxrl" / "assets" / "base" / "unet"


def _median_ms(fn, reps: int) -> float:
    fn()   # warm-up (oneDNN primitive creation)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def _pair(a, b, reps: int) -> tuple[float, float]:
    """Medians of ``a`` and ``b`` timed in alternation, so a change in machine load hits both."""
    ta, tb = [], []
    for _ in range(reps):
        ta.append(_median_ms(a, 1))
        tb.append(_median_ms(b, 1))
    return statistics.median(ta), statistics.median(tb)


def _record(name: str, before: float, after: float, what: tuple[str, str]) -> dict:
    return {"case": name, what[0] + "_ms": round(before, 3), what[1] + "_ms": round(after, 3),
            "speedup": round(before / after, 3)}


def run(threads: int = 2, reps: int = 15) -> dict:
    from diffusers import UNet2DConditionModel

    from cxrl.machine import map_batches, yardstick

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_pretrained(str(UNET_DIR)).eval()
    width = unet.config.sample_size

    def forward(job):
        return unet(*job).sample

    results = []
    for what, rows in (("eval batch", 32), ("rollout chunk", 16)):
        batches = [(torch.randn(rows, 1, width, width), torch.full((rows,), 500),
                    torch.randn(rows, 20, unet.config.cross_attention_dim)) for _ in range(8)]
        with torch.no_grad():
            a, b = _pair(lambda b=batches: map_batches(forward, b, 0), lambda b=batches: map_batches(forward, b, threads),
                         max(3, reps // 3))
        results.append(_record(f"8 forwards of {rows} rows ({what})", a, b,
                               (f"one_at_a_time_{threads}_threads", f"{threads}_workers_1_thread")))
    return {"machine": yardstick(), "threads": threads, "reps": reps, "results": results}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads, and workers of the side-by-side case")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cpu_sampling.json"))
    args = ap.parse_args(argv)
    write_record(run(args.threads, args.reps), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
