"""An evaluation from the configuration: the held-out items of ``eval.source`` / ``eval.split``, the held-out
evaluators and the FID features, handed to :func:`cxrl.eval.run.run_evaluation` by ``cxrl train`` (end of run)
and ``cxrl evaluate`` alike."""
from __future__ import annotations

from dataclasses import dataclass

from cxrl.compose.rewards import build_evaluators, fid_extractor
from cxrl.compose.sources import held_out_items, open_dataset
from cxrl.config import Config
from cxrl.eval.evaluators import Evaluators


@dataclass
class EvaluationInputs:
    items: list[dict]
    evaluators: Evaluators
    feature_extractor: object | None


def evaluation_inputs(cfg: Config, resolution: int, device) -> EvaluationInputs:
    """Items of ``eval.num_prompts`` distinct held-out prompts (reference images at ``eval.resolution``, or
    ``resolution`` — the generator's output size — when that is 0), evaluators and FID features. The evaluators
    are loaded first, so a missing or forbidden evaluator fails before anything is sampled. (That the split is
    held out from a run's RL prompts is checked when an ``eval.enabled`` config is loaded.)"""
    e, d = cfg.eval, cfg.data
    evaluators = build_evaluators(cfg, device)
    dataset = open_dataset(e.source, e.split, path=d.path if e.source != "phantom" else "", reports_path=d.reports_path,
                           resolution=e.resolution or resolution)
    items = held_out_items(dataset, e.num_prompts, e.seed)
    has_references = sum(item.get("image") is not None for item in items) >= 2
    return EvaluationInputs(items, evaluators, fid_extractor(e, evaluators, has_references=has_references, device=device))
