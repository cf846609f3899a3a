"""The paired bootstrap of the end-of-run evaluation: every resample at once (:func:`cxrl.eval.compare.paired_bootstrap`)
against building each resample and computing its metrics (:func:`cxrl.eval.compare.metric_values` per draw, what
the comparison did before session 7), on the demo's scores.

Scores: the shipped base model's evaluation (``cxrl/assets/eval_cache``: 246 test prompts x 4 samples) as "base" and
a seeded perturbation of it as "tuned"; labels: the phantom test split's. Both paths draw the same resamples; the
record gives both times, their ratio and the largest difference of any reported number (diff, std, CI ends).

``python -m benchmarks.bootstrap_speed`` writes benchmarks/results/bootstrap.json (``--out`` elsewhere);
docs/demo.md ("Session 7") quotes it.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from benchmarks.harness import write_record

ROOT = Path(__file__).resolve().parent.parent


def per_resample(base, tuned, labels, resamples: int, seed: int, columns) -> dict:
    """The comparison's draws as they were computed before: one resample at a time, metrics from the built resample."""
    from cxrl.eval.compare import metric_values

    draws: dict[str, list[float]] = {}
    generator = torch.Generator().manual_seed(int(seed))
    for _ in range(resamples):
        index = torch.randint(labels.shape[0], (labels.shape[0],), generator=generator)
        b, t = metric_values(base, labels, index, columns), metric_values(tuned, labels, index, columns)
        for key in b:
            if math.isfinite(t[key] - b[key]):
                draws.setdefault(key, []).append(t[key] - b[key])
    out = {}
    for key, values in draws.items():
        v = torch.tensor(values, dtype=torch.float64)
        out[key] = {"std": float(v.std()), "ci_low": float(v.quantile(0.025)), "ci_high": float(v.quantile(0.975))}
    return out


def demo_scores(prompts: int = 0):
    """(base, tuned, labels, columns) from the shipped base evaluation; ``prompts`` > 0 keeps the first ones."""
    from safetensors.torch import load_file

    from cxrl.compose.sources import held_out_items, open_dataset
    from cxrl.eval.auroc import supported_label_columns
    from cxrl.eval.scoring import SampleScores, item_labels

    entry = min((ROOT / "cxrl" / "assets" / "eval_cache").glob("*.safetensors"))
    cached = load_file(str(entry))
    items = held_out_items(open_dataset("phantom", "test", resolution=32), 0, 1234)
    keep = prompts or len(items)
    labels = item_labels(items[:keep]).double()
    g = torch.Generator().manual_seed(0)
    posture, consistency, probs = (cached[k][:keep] for k in ("posture", "consistency", "probs"))
    base = SampleScores(posture, consistency, probs)
    tuned = SampleScores(posture + 0.02 + 0.01 * torch.randn(posture.shape, generator=g, dtype=posture.dtype),
                         consistency + 0.05 * torch.rand(consistency.shape, generator=g, dtype=consistency.dtype),
                         (probs + 0.1 * torch.randn(probs.shape, generator=g, dtype=probs.dtype)).clamp(0, 1))
    return base, tuned, labels, supported_label_columns(labels, 3)


def run(resamples: int = 1000, prompts: int = 0, seed: int = 1234) -> dict:
    from cxrl.eval.compare import paired_bootstrap
    from cxrl.machine import yardstick

    base, tuned, labels, columns = demo_scores(prompts)
    start = time.perf_counter()
    fast = paired_bootstrap(base, tuned, labels, resamples, seed, columns=columns)
    fast_s = time.perf_counter() - start
    start = time.perf_counter()
    slow = per_resample(base, tuned, labels, resamples, seed, columns)
    slow_s = time.perf_counter() - start
    worst = max(abs(fast[k][f] - slow[k][f]) for k in slow for f in ("std", "ci_low", "ci_high"))
    return {"machine": yardstick(), "torch_threads": torch.get_num_threads(), "prompts": labels.shape[0],
            "samples_per_prompt": base.posture.shape[1], "resamples": resamples,
            "per_resample_s": round(slow_s, 3), "all_at_once_s": round(fast_s, 4), "speedup": round(slow_s / fast_s, 1),
            "max_abs_difference": worst}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--prompts", type=int, default=0, help="0 = all 246")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bootstrap.json"))
    args = ap.parse_args(argv)
    write_record(run(args.resamples, args.prompts), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
