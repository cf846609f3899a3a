"""How well each shipped reward model (and each ensemble of them) agrees with its held-out evaluator, within a prompt.

What the RL uses of a reward is its ranking of one prompt's images against each other (group-relative advantages),
so the number that matters is the within-prompt correlation of the reward with the held-out evaluator's score of the
same images. Images: the shipped base model's evaluation samples (``cxrl/assets/eval_cache``: 246 test-split prompts
x 4 samples, the end-of-run evaluation's noises). The evaluator's diagnostic score is s_diag computed from its own
probabilities (−mean BCE over the labelled classes), its consistency score is its s_cons.

``python -m benchmarks.reward_agreement`` prints one line per model or ensemble (within-prompt std of the reward and
its correlation with the evaluator) and writes benchmarks/results/reward_agreement.json (``--out`` elsewhere);
docs/rewards.md ("Ensembles") quotes it.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from benchmarks.harness import write_record

ROOT = Path(__file__).resolve().parent.parent
ENTRIES = {   # name -> the reward entry's path (a list = an ensemble, the mean of its members)
    "consistency": ["asset:rewards/consistency", "asset:rewards/consistency-seed1", "asset:rewards/consistency-seed2"],
    "diagnostic": ["asset:rewards/diagnostic", "asset:rewards/diagnostic-seed1", "asset:rewards/diagnostic-seed2"],
}


def within_prompt_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of ``[P, S]`` scores after removing each prompt's mean from both."""
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return float((a * b).sum() / (a.norm() * b.norm()))


def base_samples():
    """(images [P*S, C, H, W] in [0, 1], prompts, metadata, P, S) of the shipped base evaluation."""
    from safetensors.torch import load_file

    from cxrl.compose.sources import held_out_items, open_dataset

    files = sorted((ROOT / "cxrl" / "assets" / "eval_cache").glob("*.safetensors"))
    if len(files) != 1:
        raise SystemExit(f"expected one shipped evaluation in cxrl/assets/eval_cache, found {len(files)}")
    samples = load_file(files[0])["samples"]
    items = held_out_items(open_dataset("phantom", "test", resolution=32), 0, 1234)
    prompts_n, per_prompt = samples.shape[:2]
    if prompts_n != len(items):
        raise SystemExit(f"the shipped evaluation has {prompts_n} prompts, the test split {len(items)}")
    meta = [{"labels": torch.as_tensor(it["labels"]).float()} for it in items for _ in range(per_prompt)]
    prompts = [it["prompt"] for it in items for _ in range(per_prompt)]
    return samples.float().flatten(0, 1) / 255.0, prompts, meta, prompts_n, per_prompt


def evaluator_scores(images, prompts, meta, shape) -> dict[str, torch.Tensor]:
    from cxrl.eval.evaluators import load_evaluators
    from cxrl.eval.metrics import batched_scores

    ev = load_evaluators()
    with torch.no_grad():
        p = ev.diagnostic.predict_proba(images).double().clamp(1e-6, 1 - 1e-6)
    y = torch.stack([m["labels"].double() for m in meta])
    known = torch.isfinite(y) & (y >= 0)
    y = torch.nan_to_num(y).clamp(0, 1)
    diag = ((y * p.log() + (1 - y) * (1 - p).log()) * known).sum(1) / known.sum(1).clamp(min=1)
    cons = batched_scores(ev.consistency, images, prompts, meta).double()
    return {"diagnostic": diag.view(shape), "consistency": cons.view(shape)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "reward_agreement.json"))
    args = parser.parse_args(argv)
    from cxrl.compose.rewards import reward_from_config

    torch.set_num_threads(1)
    images, prompts, meta, n_prompts, per_prompt = base_samples()
    evaluator = evaluator_scores(images, prompts, meta, (n_prompts, per_prompt))
    rows = []
    for kind, paths in ENTRIES.items():
        for path in [*paths, paths]:   # each member alone, then the ensemble
            model, _ = reward_from_config({"name": kind, "path": path})
            with torch.no_grad():
                score = model(images, prompts, meta).double().view(n_prompts, per_prompt)
            row = {"reward": kind, "path": path, "within_prompt_std": float(score.std(1, unbiased=False).square().mean().sqrt()),
                   "correlation_with_evaluator": within_prompt_correlation(score, evaluator[kind])}
            rows.append(row)
            name = f"mean of {len(path)}" if isinstance(path, list) else path
            print(f"{kind:12s} {name:34s} within-prompt std {row['within_prompt_std']:.4f}  "
                  f"correlation with the held-out evaluator {row['correlation_with_evaluator']:+.3f}")
    write_record({"images": f"{n_prompts} test prompts x {per_prompt} base samples", "rows": rows}, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
