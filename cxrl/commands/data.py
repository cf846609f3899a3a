"""``cxrl data``: inspect / preview / prepare datasets, and measure the report labeler.

  cxrl data inspect --source mimic --root /data/mimic-cxr-jpg --split train
  cxrl data preview --source phantom --out phantom_grid.png --n 16
  cxrl data prepare --root /data/mimic-cxr-jpg --split train --resolution 512
  cxrl data labeler-eval [--split test]
  cxrl data synth-mimic OUT [--resolution 64] [--studies N] [--seed 0] [--generator-out DIR]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from cxrl.compose import open_dataset, prompt_entries
from cxrl.compose.sources import DATASET_SOURCES
from cxrl.config import SPLITS
from cxrl.data import labeler_eval, synth_mimic
from cxrl.data.labels import CHEXPERT_LABELS, NUM_LABELS
from cxrl.diffusion.roentgen_layout import make_roentgen_layout_generator
from cxrl.eval.grids import save_grid


def _add_source_args(p: argparse.ArgumentParser, default_source: str = "phantom") -> None:
    p.add_argument("--source", choices=DATASET_SOURCES, default=default_source)
    p.add_argument("--root", help="MIMIC-CXR-JPG root (mimic) or Open-i PNG directory (iuxray, optional)")
    p.add_argument("--reports-root", help="MIMIC-CXR reports root holding files/pXX/... .txt (mimic)")
    p.add_argument("--split", choices=SPLITS, default="train")
    p.add_argument("--resolution", type=int, default=None, help="default: 64 for phantom, 512 otherwise")
    p.add_argument("--views", default="PA,AP", help="comma-separated ViewPosition values; add an empty item (PA,AP,) for blank views")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--posture-strength", type=float, default=0.5)
    p.add_argument("--strict", action="store_true", help="stop at the first bad data item")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser("inspect", help="counts, label prevalence and the bad-data summary")
    _add_source_args(p)
    p = sub.add_parser("preview", help="write a labelled sample grid PNG and print counts")
    _add_source_args(p)
    p.add_argument("--out", default="data_preview.png")
    p.add_argument("--n", type=int, default=16, help="number of samples in the grid")
    p = sub.add_parser("prepare", help="cache resized MIMIC images in one memmap (resumable)")
    _add_source_args(p, default_source="mimic")
    p.add_argument("--cache-dir", help="default ~/.cache/cxrl/mimic")
    p.add_argument("--limit", type=int, help="decode at most this many images now (re-run to continue)")
    p = sub.add_parser("labeler-eval", help="labeler precision/recall on IU X-ray vs MeSH")
    labeler_eval.add_arguments(p)
    p = sub.add_parser("synth-mimic", help="write a synthetic MIMIC-CXR-JPG-layout tree (phantoms + IU X-ray reports)")
    add_synth_mimic_arguments(p)


def build_dataset(args, cache_dir=None):
    views = tuple(v.strip() for v in args.views.split(","))
    return open_dataset(args.source, args.split, path=args.root or "", reports_path=args.reports_root or "",
                        resolution=args.resolution, seed=args.seed, posture_strength=args.posture_strength, views=views,
                        cache_dir=cache_dir, strict=args.strict)


def label_matrix(dataset) -> torch.Tensor:
    """[N, NUM_LABELS] labels of every item, without decoding images."""
    entries = prompt_entries(dataset)
    return torch.stack([e["labels"] for e in entries]) if entries else torch.empty(0, NUM_LABELS)


def format_prevalence(labels: torch.Tensor) -> str:
    lines = [f"{'label':28s} {'pos':>7s} {'uncert':>7s} {'neg':>7s} {'blank':>7s}"]
    for j, name in enumerate(CHEXPERT_LABELS):
        col = labels[:, j] if len(labels) else torch.empty(0)
        lines.append(f"{name:28s} {int((col == 1).sum()):7d} {int((col == -1).sum()):7d} {int((col == 0).sum()):7d} "
                     f"{int(torch.isnan(col).sum()):7d}")
    return "\n".join(lines)


def _short_labels(labels: torch.Tensor) -> str:
    parts = []
    for j, name in enumerate(CHEXPERT_LABELS):
        if labels[j] == 1:
            parts.append(name)
        elif labels[j] == -1:
            parts.append(name + "?")
    return ", ".join(parts) or "(none)"


def write_grid(items: list[dict], out: Path) -> Path:
    """The items' images captioned with their labels ("Cardiomegaly, Edema?": ? = uncertain)."""
    shown = [item for item in items if item["image"] is not None]
    if not shown:
        raise ValueError("cxrl data preview: none of the chosen items has an image (iuxray needs --root with the Open-i PNGs)")
    images = torch.stack([item["image"].float() for item in shown])
    return save_grid(images, [_short_labels(item["labels"]) for item in shown], out,
                     ncols=int(np.ceil(np.sqrt(len(shown)))), caption_lines=2)


def run(args) -> int:
    if args.action == "labeler-eval":
        return labeler_eval.run(args)
    if args.action == "synth-mimic":
        return run_synth_mimic(args)
    if args.action == "prepare" and args.source != "mimic":
        raise ValueError("cxrl data prepare: only --source mimic has images to cache")
    dataset = build_dataset(args, cache_dir=getattr(args, "cache_dir", None))
    if args.action == "prepare":
        result = dataset.prepare(limit=args.limit, progress=lambda done, total: print(f"  {done}/{total}", flush=True))
        print(f"cache {dataset.cache_stem}: {result['done']} done, {result['failed']} unreadable, "
              f"{result['pending']} pending ({result['skipped']} were already done)")
        print(dataset.issues.summary())
        return 0
    labels = label_matrix(dataset)
    print(f"{args.source} [{args.split}]: {len(dataset)} items")
    print(format_prevalence(labels))
    if args.action == "preview":
        picks = np.linspace(0, len(dataset) - 1, num=min(args.n, len(dataset))).astype(int) if len(dataset) else []
        items = [dataset[int(i)] for i in picks]
        write_grid(items, Path(args.out))
        print(f"wrote {args.out} ({len(items)} samples)")
    issues = getattr(dataset, "issues", None) or getattr(getattr(dataset, "reports", None), "issues", None)
    if issues is not None:
        print(issues.summary())
    return 0


def _studies_arg(value: str):
    if value == "all":
        return None
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'all', got {value!r}") from None


def add_synth_mimic_arguments(parser) -> None:
    parser.add_argument("out", type=Path, help="directory to write the MIMIC-CXR-JPG-layout tree into")
    parser.add_argument("--resolution", type=int, default=64, help="image side in pixels (default 64)")
    parser.add_argument("--studies", type=_studies_arg, default=synth_mimic.DEFAULT_STUDIES,
                        help=f"number of studies, or 'all' (default {synth_mimic.DEFAULT_STUDIES})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--corrupt", type=int, default=2, help="unreadable JPEGs written on purpose (default 2)")
    parser.add_argument("--missing", type=int, default=2, help="rows whose JPEG is left out on purpose (default 2)")
    parser.add_argument("--blank-views", type=int, default=None,
                        help="frontal rows with an empty ViewPosition (default 4%% of frontal images, at least 1)")
    parser.add_argument("--reports-out", type=Path, default=None, help="reports tree (default OUT/reports)")
    parser.add_argument("--generator-out", type=Path, default=None,
                        help="also write a random-init RoentGen-layout generator at --resolution here")
    parser.add_argument("--overwrite", action="store_true", help="replace a synthetic tree written before")


def run_synth_mimic(args) -> int:
    world = synth_mimic.write_synthetic_mimic(args.out, resolution=args.resolution, num_studies=args.studies, seed=args.seed,
                                  num_corrupt=args.corrupt, num_missing=args.missing,
                                  num_blank_views=args.blank_views, reports_out=args.reports_out,
                                  overwrite=args.overwrite)
    print(synth_mimic.marker_text(world, args.seed).split("\n\n")[-1].strip())
    print(f"images + CSVs: {world.root}\nreports: {world.reports_root}")
    print(f"read it with: cxrl data inspect --source mimic --root {world.root} --reports-root {world.reports_root}")
    if args.generator_out is not None:
        train_texts = [study.text for study in world.studies if study.split == "train"]
        path = make_roentgen_layout_generator(args.generator_out, args.resolution, tokenizer_texts=train_texts,
                                              seed=args.seed, overwrite=args.overwrite)
        print(f"RoentGen-layout generator (random weights, tokenizer trained on the train reports): {path}")
    return 0
