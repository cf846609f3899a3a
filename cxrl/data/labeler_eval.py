"""Measure the rule labeler on the IU X-ray reports against their MeSH annotations.

``python -m cxrl.data.labeler_eval [--split test] [--errors LABEL]`` (or ``cxrl data labeler-eval``)
prints per-label support, precision, recall and F1. A label counts as predicted when the labeler says
1 or -1 (uncertain mentions are findings the annotators usually indexed); the truth is a MeSH major
term mapped below. Reports indexed "No Indexing" are left out (no annotation to compare with).
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

from cxrl.data.iuxray import load_iu_reports, split_of
from cxrl.data.labeler import label_sections

# CheXpert label -> MeSH major-term prefixes (a term "A/B/C" matches prefix "A" or "A/B").
MESH_TO_LABEL: dict[str, tuple[str, ...]] = {
    "No Finding": ("normal",),
    "Enlarged Cardiomediastinum": ("Mediastinum/prominent", "Mediastinum/widened", "Mediastinum/enlarged"),
    "Cardiomegaly": ("Cardiomegaly",),
    "Lung Opacity": ("Opacity/lung", "Airspace Disease", "Density/lung", "Infiltrate"),
    "Lung Lesion": ("Nodule", "Mass", "Neoplasm"),
    "Edema": ("Pulmonary Edema", "Edema", "Pulmonary Congestion"),
    "Consolidation": ("Consolidation",),
    "Pneumonia": ("Pneumonia",),
    "Atelectasis": ("Pulmonary Atelectasis",),
    "Pneumothorax": ("Pneumothorax",),
    # the labeler reads "blunting of the costophrenic angle" as effusion, so the blunted-angle tag counts
    "Pleural Effusion": ("Pleural Effusion", "Costophrenic Angle/blunted", "Costophrenic Angle/left/blunted",
                         "Costophrenic Angle/right/blunted", "Costophrenic Angle/bilateral/blunted"),
    "Pleural Other": ("Thickening/pleura",),
    "Fracture": ("Fractures, Bone",),
    "Support Devices": ("Catheters, Indwelling", "Implanted Medical Device", "Medical Device", "Tube, Inserted", "Stents"),
}
NO_PATHOLOGY = "No Finding (CheXpert definition)"
MIN_SUPPORT = 20  # labels with fewer positives are printed but left out of the macro average


def mesh_truth(mesh_major) -> dict[str, bool]:
    terms = [t.strip() for t in mesh_major]
    out = {}
    for label, prefixes in MESH_TO_LABEL.items():
        out[label] = any(t == p or t.startswith(p + "/") for t in terms for p in prefixes)
    # CheXpert's own definition, comparable with the labeler: no mapped pathology is tagged. MeSH
    # "normal" is stricter (granulomas, spine degeneration, hyperinflation are not CheXpert labels).
    out[NO_PATHOLOGY] = not any(out[name] for name in MESH_TO_LABEL if name not in ("No Finding", "Support Devices"))
    return out


@dataclass
class LabelScore:
    label: str
    support: int
    predicted: int
    true_positive: int

    @property
    def precision(self) -> float:
        return self.true_positive / self.predicted if self.predicted else 0.0

    @property
    def recall(self) -> float:
        return self.true_positive / self.support if self.support else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


def evaluate(split: str | None = None, uncertain_as_positive: bool = False) -> tuple[list[LabelScore], int]:
    """Scores per label over the IU X-ray reports of ``split`` (None: all); returns (scores, n_reports).

    A label is predicted when the labeler says 1 (and also -1 with ``uncertain_as_positive``): MeSH
    indexers mostly tag what a report asserts, not what it hedges ("may represent pneumonia")."""
    predicted_values = (1, -1) if uncertain_as_positive else (1,)
    reports, _ = load_iu_reports()
    counts = {label: [0, 0, 0] for label in (*MESH_TO_LABEL, NO_PATHOLOGY)}  # support, predicted, tp
    n = 0
    for report in reports:
        if split is not None and split_of(report.id) != split:
            continue
        if not report.mesh_major or "No Indexing" in report.mesh_major:
            continue
        if not (report.sections.get("findings") or report.sections.get("impression")):
            continue
        n += 1
        truth = mesh_truth(report.mesh_major)
        labels = label_sections(report.sections)   # the current labeler, not the phantom world's frozen labels
        for label, c in counts.items():
            pred = labels[label.split(" (")[0]] in predicted_values
            c[0] += truth[label]
            c[1] += pred
            c[2] += truth[label] and pred
    return [LabelScore(label, *c) for label, c in counts.items()], n


def macro_f1(scores: list[LabelScore], min_support: int = MIN_SUPPORT) -> float:
    kept = [s.f1 for s in scores if s.support >= min_support and s.label != "No Finding"]
    return sum(kept) / len(kept) if kept else 0.0


def format_table(scores: list[LabelScore], n_reports: int) -> str:
    lines = [f"IU X-ray reports evaluated: {n_reports}", "",
             "| Label | Support | Predicted | Precision | Recall | F1 |", "|---|---|---|---|---|---|"]
    for s in scores:
        lines.append(f"| {s.label} | {s.support} | {s.predicted} | {s.precision:.3f} | {s.recall:.3f} | {s.f1:.3f} |")
    lines.append("")
    lines.append(f"Macro F1 over labels with support >= {MIN_SUPPORT} (No Finding counted by its CheXpert "
                 f"definition): {macro_f1(scores):.3f}")
    return "\n".join(lines)


def list_errors(label: str, split: str | None = None, kind: str = "fp", limit: int = 20) -> list[str]:
    """Report texts the labeler gets wrong for ``label`` (``kind``: fp or fn) — for rule work."""
    if label not in MESH_TO_LABEL:
        raise ValueError(f"label '{label}' is not a CheXpert label")
    out = []
    for report in load_iu_reports()[0]:
        if split is not None and split_of(report.id) != split or "No Indexing" in report.mesh_major:
            continue
        truth, pred = mesh_truth(report.mesh_major)[label], label_sections(report.sections)[label] == 1
        if (kind == "fp" and pred and not truth) or (kind == "fn" and truth and not pred):
            out.append(f"[{report.id}] mesh={list(report.mesh_major)}\n  F: {report.sections.get('findings', '')}\n"
                       f"  I: {report.sections.get('impression', '')}")
        if len(out) >= limit:
            break
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--split", choices=("train", "validate", "test"), default=None, help="default: all reports")
    parser.add_argument("--json", action="store_true", help="print scores as JSON")
    parser.add_argument("--uncertain-as-positive", action="store_true", help="count -1 as a prediction too")
    parser.add_argument("--errors", metavar="LABEL", help="list false positives/negatives for one label")
    parser.add_argument("--kind", choices=("fp", "fn"), default="fp")
    parser.add_argument("--limit", type=int, default=20)


def run(args: argparse.Namespace) -> int:
    if args.errors:
        print("\n".join(list_errors(args.errors, args.split, args.kind, args.limit)))
        return 0
    scores, n = evaluate(args.split, args.uncertain_as_positive)
    if args.json:
        print(json.dumps({"reports": n, "macro_f1": macro_f1(scores), "labels": [
            {"label": s.label, "support": s.support, "predicted": s.predicted, "precision": s.precision,
             "recall": s.recall, "f1": s.f1} for s in scores]}, indent=2))
    else:
        print(format_table(scores, n))
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    raise SystemExit(run(parser.parse_args()))
