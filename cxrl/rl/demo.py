"""End-of-run evaluation: the base generator vs the RL-tuned one on held-out prompts.

``evaluate_run(cfg, tuned_gen, ace=..., base_gen=...)`` is what ``cxrl train`` calls after the last epoch when
``eval.enabled`` is set (the demo config does). It

* takes ``eval.num_prompts`` distinct IU X-ray reports of ``eval.split`` (the test split by default — never seen
  by pretraining, by the reward models, by the evaluators or by the RL, whose prompts come from ``data.split``),
  with their phantom renders as the FID reference set;
* samples both generators with the training sampler (``sampling.num_steps`` / ``guidance_scale`` / ``eta``),
  ``eval.samples_per_prompt`` images per prompt, sample ``s`` of prompt ``p`` from the *same* initial noise for
  both models (``cxrl.eval.evaluate_models``);
* scores them with the **held-out evaluators** (``cxrl/assets/evaluators`` or ``eval.evaluators``), never the
  reward models the run optimised — those directories are refused;
* writes metrics.json / run.json / results.md / grids under ``<output>/<eval.output_subdir>`` and adds the paired
  tuned − base differences with bootstrap confidence intervals over prompts (``comparison.json`` and a section
  of results.md), so a reader can tell an improvement from evaluation noise.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

# (metrics.json key, higher is better) of the three reward-like metrics the RL is meant to improve
TARGET_METRICS = (("posture", True), ("auroc", True), ("consistency", True))
REPORTED_METRICS = ("posture", "auroc", "consistency", "fid", "ms_ssim")


@dataclass
class RunEvaluation:
    """What :func:`evaluate_run` measured: ``results`` as in metrics.json, ``comparison`` = tuned − base per
    metric (``diff``, bootstrap ``ci_low``/``ci_high``/``std``), the Markdown ``table`` and where it went."""

    results: dict
    comparison: dict
    table: str
    out_dir: Path | None
    seconds: float
    prompt_ids: list[str] = field(default_factory=list)

    def improved(self, metric: str) -> bool:
        """True when tuned beats base on ``metric`` (one of posture, auroc, consistency)."""
        higher = dict(TARGET_METRICS)[metric]
        diff = self.comparison[metric]["diff"]
        return diff is not None and (diff > 0 if higher else diff < 0)


def held_out_items(split: str, num_prompts: int, seed: int, resolution: int) -> list[dict]:
    """``num_prompts`` dataset items of distinct IU X-ray prompts of ``split`` (chosen by ``seed``; 0 = all of
    them, in report order), each with its phantom render at ``resolution`` (the FID reference image)."""
    from cxrl.data import PhantomCXR

    dataset = PhantomCXR(split=split, resolution=resolution)
    first_of_prompt: dict[str, int] = {}
    for index, prompt in enumerate(dataset.reports.prompts):
        first_of_prompt.setdefault(prompt, index)
    candidates = sorted(first_of_prompt.values())
    if num_prompts == 0:
        return [dataset[i] for i in candidates]
    if num_prompts > len(candidates):
        raise ValueError(f"eval.num_prompts={num_prompts}: the '{split}' split has only {len(candidates)} distinct prompts")
    order = torch.randperm(len(candidates), generator=torch.Generator().manual_seed(int(seed)))[:num_prompts]
    return [dataset[candidates[i]] for i in sorted(order.tolist())]


@torch.no_grad()
def per_prompt_scores(samples: torch.Tensor, items: Sequence[dict], evaluators, batch_size: int) -> dict:
    """Evaluator outputs per sample for the bootstrap: ``posture``/``consistency`` ``[P, S]`` and the diagnostic
    evaluator's probabilities ``probs [P, S, 14]`` (None where that evaluator is absent)."""
    from cxrl.eval.metrics import batched_scores
    from cxrl.eval.scoring import item_labels

    num_prompts, per_prompt = samples.shape[:2]
    images = samples.flatten(0, 1)
    prompts = [items[p]["prompt"] for p in range(num_prompts) for _ in range(per_prompt)]
    labels = item_labels(items).repeat_interleave(per_prompt, dim=0)
    metadata = [{"labels": labels[i]} for i in range(images.shape[0])]
    out: dict = {}
    for kind in ("posture", "consistency"):
        model = getattr(evaluators, kind)
        out[kind] = (batched_scores(model, images, prompts, metadata, batch_size).view(num_prompts, per_prompt)
                     if model is not None else None)
    if evaluators.diagnostic is not None:
        probs = torch.cat([evaluators.diagnostic.predict_proba(images[i:i + batch_size]).detach().cpu().double()
                           for i in range(0, images.shape[0], batch_size)])
        out["probs"] = probs.view(num_prompts, per_prompt, -1)
    else:
        out["probs"] = None
    return out


def _metric_values(scores: dict, labels: torch.Tensor, index: torch.Tensor, columns=None) -> dict[str, float]:
    """posture / consistency / auroc of the prompts ``index`` (with repeats, as a bootstrap draws them); ``auroc``
    over the label ``columns`` (fixed on the full prompt set, so every resample averages the same labels) and
    ``auroc_all_labels`` over every label."""
    from cxrl.eval.auroc import macro_auroc

    values = {}
    for kind in ("posture", "consistency"):
        if scores[kind] is not None:
            values[kind] = float(scores[kind][index].mean())
    if scores["probs"] is not None:
        per_prompt = scores["probs"].shape[1]
        probs = scores["probs"][index].flatten(0, 1)
        repeated = labels[index].repeat_interleave(per_prompt, dim=0)
        values["auroc"] = macro_auroc(probs, repeated, columns=columns).macro
        if columns is not None:
            values["auroc_all_labels"] = macro_auroc(probs, repeated).macro
    return values


def paired_bootstrap(base: dict, tuned: dict, labels: torch.Tensor, resamples: int, seed: int, columns=None) -> dict:
    """tuned − base for posture, AUROC and consistency on all prompts, and over ``resamples`` bootstrap draws
    of the prompts (the same draw for both models: the samples are paired by prompt and initial noise).
    ``columns``: the labels of the AUROC (:func:`cxrl.eval.auroc.supported_label_columns`; None = all).
    Returns ``{metric: {"diff", "std", "ci_low", "ci_high", "resamples"}}`` (2.5 / 97.5 percentiles)."""
    num_prompts = labels.shape[0]
    full = torch.arange(num_prompts)
    base_all, tuned_all = _metric_values(base, labels, full, columns), _metric_values(tuned, labels, full, columns)
    draws: dict[str, list[float]] = {k: [] for k in base_all}
    generator = torch.Generator().manual_seed(int(seed))
    for _ in range(resamples):
        index = torch.randint(num_prompts, (num_prompts,), generator=generator)
        b, t = _metric_values(base, labels, index, columns), _metric_values(tuned, labels, index, columns)
        for key in draws:
            diff = t[key] - b[key]
            if math.isfinite(diff):  # a draw without both classes for any label has no AUROC
                draws[key].append(diff)
    out = {}
    for key in base_all:
        diff = tuned_all[key] - base_all[key]
        entry = {"base": base_all[key], "tuned": tuned_all[key], "diff": diff if math.isfinite(diff) else None,
                 "std": None, "ci_low": None, "ci_high": None, "resamples": len(draws[key])}
        if len(draws[key]) >= 2:
            values = torch.tensor(draws[key], dtype=torch.float64)
            entry.update(std=float(values.std()), ci_low=float(values.quantile(0.025)),
                         ci_high=float(values.quantile(0.975)))
        out[key] = entry
    return out


def comparison_markdown(comparison: dict, resamples: int) -> str:
    lines = ["## Tuned − base (paired by prompt and initial noise)", "",
             f"| metric | base | tuned | tuned − base | bootstrap std | 95% CI ({resamples} prompt resamples) |",
             "|---|---|---|---|---|---|"]
    for key, entry in comparison.items():
        def fmt(v, signed=False):
            return "n/a" if v is None else (f"{v:+.4f}" if signed else f"{v:.4f}")
        ci = "n/a" if entry["ci_low"] is None else f"[{entry['ci_low']:+.4f}, {entry['ci_high']:+.4f}]"
        lines.append(f"| {key} | {fmt(entry['base'])} | {fmt(entry['tuned'])} | {fmt(entry['diff'], True)} | "
                     f"{fmt(entry['std'])} | {ci} |")
    return "\n".join(lines) + "\n"


def _forbidden_evaluator_dirs(cfg) -> tuple:
    """The shipped reward models plus every reward directory this run optimised: never evaluators."""
    from cxrl.eval.evaluators import SHIPPED_REWARD_ROOT

    dirs = [SHIPPED_REWARD_ROOT]
    dirs += [Path(e["path"]) for e in cfg.rewards.components if isinstance(e, dict) and e.get("path")]
    return tuple(dirs)


def evaluate_run(cfg, tuned_gen, *, ace=None, base_gen, out_dir: str | Path | None = None,
                 log: Callable[[str], None] = print) -> RunEvaluation:
    """Evaluate ``base_gen`` (the anchor, no ACE) against ``tuned_gen`` (+ ``ace``) as configured by
    ``cfg.eval`` and ``cfg.sampling``; writes the report to ``out_dir`` (None: nothing is written)."""
    from cxrl.eval.auroc import supported_label_columns
    from cxrl.eval.evaluate import SamplingSettings, build_feature_extractor, evaluate_models
    from cxrl.eval.evaluators import load_evaluators
    from cxrl.eval.report import table_notes
    from cxrl.eval.scoring import item_labels
    from cxrl.eval.tables import markdown_table

    e, s = cfg.eval, cfg.sampling
    if e.split == cfg.data.split and cfg.data.source in ("phantom", "iu_xray"):
        raise ValueError(f"eval.split {e.split!r} is the RL prompt split (data.split): the evaluation must be held out")
    if tuple(base_gen.latent_shape) != tuple(tuned_gen.latent_shape):
        raise ValueError(f"base and tuned generators differ in latent shape: {base_gen.latent_shape} vs {tuned_gen.latent_shape}")
    start = time.perf_counter()
    device = tuned_gen.device
    evaluators = load_evaluators(e.evaluators or None, device=device, forbidden=_forbidden_evaluator_dirs(cfg))
    items = held_out_items(e.split, e.num_prompts, e.seed, tuned_gen.resolution[0])
    log(f"evaluation: base vs tuned on {len(items)} held-out '{e.split}' prompts x {e.samples_per_prompt} samples, "
        f"scored by the held-out evaluators ({', '.join(evaluators.describe().values())}), not the reward models")
    extractor = build_feature_extractor("evaluator", "phantom", evaluators)
    settings = SamplingSettings(samples_per_prompt=e.samples_per_prompt, num_steps=s.num_steps,
                                guidance_scale=s.guidance_scale, eta=s.eta, seed=e.seed, batch_size=e.batch_size)
    extra = {"data": "phantom", "split": e.split, "rl_prompt_split": cfg.data.split, "torch_threads": torch.get_num_threads(),
             "note": "scored by held-out evaluators, never the reward models the RL optimised"}
    results, samples = evaluate_models({"base": base_gen, "tuned": tuned_gen}, items, evaluators, extractor,
                                       aces={"tuned": ace} if ace is not None else None, settings=settings,
                                       out_dir=out_dir, extra=extra, return_samples=True,
                                       min_label_prompts=e.min_label_prompts)
    labels = item_labels(items).double()
    scores = {name: per_prompt_scores(samples[name], items, evaluators, e.batch_size) for name in ("base", "tuned")}
    columns = supported_label_columns(labels, e.min_label_prompts)
    comparison = paired_bootstrap(scores["base"], scores["tuned"], labels, e.bootstrap, e.seed, columns=columns)
    table = markdown_table(results, table_notes(results))
    seconds = time.perf_counter() - start
    prompt_ids = [str(item["id"]) for item in items]
    if out_dir is not None:
        out = Path(out_dir)
        (out / "comparison.json").write_text(json.dumps({"comparison": comparison, "bootstrap_resamples": e.bootstrap,
                                                         "seconds": round(seconds, 2)}, indent=2) + "\n")
        with open(out / "results.md", "a") as fh:
            fh.write("\n" + comparison_markdown(comparison, e.bootstrap))
    return RunEvaluation(results=results, comparison=comparison, table=table,
                         out_dir=Path(out_dir) if out_dir is not None else None, seconds=seconds, prompt_ids=prompt_ids)
