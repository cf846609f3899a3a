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

from cxrl.data import labeler_eval, synth_mimic
from cxrl.data.labels import CHEXPERT_LABELS

SOURCES = ("phantom", "iuxray", "mimic")


def _add_source_args(p: argparse.ArgumentParser, default_source: str = "phantom") -> None:
    p.add_argument("--source", choices=SOURCES, default=default_source)
    p.add_argument("--root", help="MIMIC-CXR-JPG root (mimic) or Open-i PNG directory (iuxray, optional)")
    p.add_argument("--reports-root", help="MIMIC-CXR reports root holding files/pXX/... .txt (mimic)")
    p.add_argument("--split", default="train")
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
    synth_mimic.add_arguments(p)


def build_dataset(args, cache_dir=None):
    if args.source == "phantom":
        from cxrl.data.phantom import PhantomCXR

        return PhantomCXR(split=_iu_split(args.split), resolution=args.resolution or 64, seed=args.seed,
                          posture_strength=args.posture_strength)
    if args.source == "iuxray":
        from cxrl.data.iuxray import IUXrayReports

        return IUXrayReports(split=_iu_split(args.split), images_dir=args.root, resolution=args.resolution or 512,
                             strict=args.strict)
    if not args.root:
        raise SystemExit("cxrl data: --root is required for --source mimic (the MIMIC-CXR-JPG directory)")
    from cxrl.data.mimic import MimicCXR

    views = tuple(v.strip() for v in args.views.split(","))
    return MimicCXR(args.root, split=args.split, views=views, resolution=args.resolution or 512,
                    reports_root=args.reports_root, cache_dir=cache_dir, strict=args.strict)


def _iu_split(split: str) -> str:
    return {"validate": "validation", "val": "validation"}.get(split, split)


def label_matrix(dataset) -> torch.Tensor:
    """[N, 14] labels of every item without decoding images where the reader allows it."""
    if hasattr(dataset, "label_tensor"):
        return torch.stack([dataset.label_tensor(i) for i in range(len(dataset))])
    if hasattr(dataset, "labels") and isinstance(dataset.labels, list):
        return torch.stack(dataset.labels) if dataset.labels else torch.empty(0, 14)
    reports = dataset.reports  # PhantomCXR: labels follow its reports
    return torch.stack([reports.label_tensor(i % len(reports)) for i in range(len(dataset))])


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


def write_grid(items: list[dict], out: Path, tile: int = 160) -> None:
    from PIL import Image, ImageDraw

    cols = int(np.ceil(np.sqrt(len(items))))
    rows = int(np.ceil(len(items) / cols))
    caption = 34
    canvas = Image.new("L", (cols * tile, rows * (tile + caption)), 0)
    draw = ImageDraw.Draw(canvas)
    for k, item in enumerate(items):
        r, c = divmod(k, cols)
        x, y = c * tile, r * (tile + caption)
        if item["image"] is not None:
            arr = (item["image"][0].clamp(0, 1).numpy() * 255).astype(np.uint8)
            canvas.paste(Image.fromarray(arr).resize((tile, tile), Image.BILINEAR), (x, y))
        text = _short_labels(item["labels"])
        draw.text((x + 2, y + tile + 1), text[:30], fill=255)
        draw.text((x + 2, y + tile + 16), text[30:60], fill=255)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)


def run(args) -> int:
    if args.action == "labeler-eval":
        return labeler_eval.run(args)
    if args.action == "synth-mimic":
        return synth_mimic.run(args)
    dataset = build_dataset(args, cache_dir=getattr(args, "cache_dir", None))
    if args.action == "prepare":
        if args.source != "mimic":
            raise SystemExit("cxrl data prepare: only --source mimic has images to cache")
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
