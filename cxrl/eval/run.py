"""The one evaluation path, shared by ``cxrl train`` (end of run) and ``cxrl evaluate``: sample the models on
the held-out items from shared initial noises, score them with the held-out evaluators, compare tuned with
base paired by prompt (when both are given), and write metrics.json / run.json / results.md /
comparison.json / grids."""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from cxrl.config import EvalConfig, SamplingConfig
from cxrl.data.labels import CHEXPERT_LABELS
from cxrl.eval.auroc import supported_label_columns
from cxrl.eval.cache import SHIPPED_CACHE, EvaluationCache
from cxrl.eval.compare import comparison_markdown, improved, paired_bootstrap, paired_bootstrap_per_label
from cxrl.eval.evaluate import evaluate_models
from cxrl.eval.evaluators import Evaluators
from cxrl.eval.report import showcase_order, table_notes, write_report
from cxrl.eval.scoring import item_labels, reference_images
from cxrl.eval.tables import markdown_table

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    """What :func:`run_evaluation` measured: ``results`` as in metrics.json, ``comparison`` = tuned − base per
    metric (``diff``, bootstrap ``ci_low``/``ci_high``/``std``; None without both models), ``per_label`` the same
    for each label of the AUROC, the Markdown ``table`` (with the comparison section) and where it went."""

    results: dict
    comparison: dict | None
    table: str
    out_dir: Path | None
    seconds: float
    prompt_ids: list[str] = field(default_factory=list)
    per_label: dict | None = None

    def improved(self, metric: str) -> bool:
        """True when tuned beats base on ``metric`` (one of posture, auroc, consistency)."""
        return self.comparison is not None and improved(self.comparison, metric)


def run_evaluation(models: dict, items: Sequence[dict], evaluators: Evaluators, feature_extractor, e: EvalConfig,
                   s: SamplingConfig, *, aces: dict | None = None, out_dir: str | Path | None = None,
                   extra: dict | None = None) -> Evaluation:
    """Evaluate ``models`` (``{name: Generator}``; ``base`` and ``tuned`` get a paired comparison) on ``items``;
    ``out_dir`` None writes nothing. ``extra`` goes into run.json beside the evaluators and prompt ids."""
    start = time.perf_counter()
    log.info("evaluation: %s on %d held-out prompts x %d samples, scored by the held-out evaluators (%s), "
             "not the reward models", " vs ".join(models), len(items), e.samples_per_prompt,
             ", ".join(evaluators.describe().values()))
    cache = EvaluationCache([SHIPPED_CACHE], e.cache_dir or None) if e.use_cache else None
    measured = evaluate_models(models, items, evaluators, feature_extractor, e, s, aces=aces, cache=cache)
    results = measured.results
    comparison = per_label = None
    if "base" in measured.scores and "tuned" in measured.scores:
        labels = item_labels(items).double()
        columns = supported_label_columns(labels, e.min_label_prompts)
        comparison = paired_bootstrap(measured.scores["base"], measured.scores["tuned"], labels, e.bootstrap, e.seed,
                                      columns=columns)
        per_label = paired_bootstrap_per_label(measured.scores["base"], measured.scores["tuned"], labels, e.bootstrap,
                                               e.seed, CHEXPERT_LABELS, columns=columns)
    table = markdown_table(results, table_notes(results))
    if comparison is not None:
        table += "\n" + comparison_markdown(comparison, e.bootstrap)
    seconds = time.perf_counter() - start
    prompt_ids = [str(item.get("id", i)) for i, item in enumerate(items)]
    if out_dir is not None:
        out = Path(out_dir)
        references = reference_images(items)
        every_item_has_image = references is not None and references.shape[0] == len(items)
        reference_label = "phantom render" if e.source == "phantom" else "real"
        info = {"evaluators": evaluators.describe(), "feature_extractor": getattr(feature_extractor, "name", None),
                "feature_extractor_reason": getattr(feature_extractor, "reason", "") or None,
                "fid_features_setting": e.fid_features, "prompt_ids": prompt_ids,
                "comparison_grid_columns": [*models, *([reference_label] * every_item_has_image)], **(extra or {})}
        write_report(results, out, measured.samples, [item["prompt"] for item in items], extra=info,
                     references=references if every_item_has_image else None,
                     grid_order=showcase_order(item_labels(items)),
                     reference_label=reference_label)
        if comparison is not None:
            (out / "comparison.json").write_text(json.dumps({"comparison": comparison, "auroc_per_label": per_label,
                                                             "bootstrap_resamples": e.bootstrap,
                                                             "seconds": round(seconds, 2)}, indent=2) + "\n")
            with open(out / "results.md", "a") as fh:
                fh.write("\n" + comparison_markdown(comparison, e.bootstrap, per_label))
    return Evaluation(results=results, comparison=comparison, table=table,
                      out_dir=Path(out_dir) if out_dir is not None else None, seconds=seconds, prompt_ids=prompt_ids,
                      per_label=per_label)
