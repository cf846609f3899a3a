"""Markdown results table laid out like the paper's Tables 1–2: one row per model, columns
r_align ↑, AUROC ↑, sim ↑, FID ↓, MS-SSIM ↓; the best value of each column in bold. Missing or
undefined values (e.g. AUROC when no label had both classes) print as ``n/a``.
"""
from __future__ import annotations

import math

# (metrics.json key, header, higher is better, decimals)
COLUMNS = (
    ("posture", "r_align ↑", True, 3),
    ("auroc", "AUROC ↑", True, 3),
    ("consistency", "sim ↑", True, 3),
    ("fid", "FID ↓", False, 3),
    ("ms_ssim", "MS-SSIM ↓", False, 3),
)


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def markdown_table(results: dict[str, dict], notes: list[str] | None = None) -> str:
    """Render ``results`` (``{model name: metrics dict}`` as in ``metrics.json``) as a Markdown table,
    followed by ``notes`` (which evaluators and feature extractor were used) as a bullet list."""
    if not results:
        raise ValueError("markdown_table: no models in results")
    best: dict[str, float] = {}
    for key, _, higher, _ in COLUMNS:
        values = [v for v in (_number(m.get(key)) for m in results.values()) if v is not None]
        if len(values) > 1:  # bold only when there is something to compare
            best[key] = max(values) if higher else min(values)
    lines = ["| Model | " + " | ".join(h for _, h, _, _ in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for name, metrics in results.items():
        cells = []
        for key, _, _, decimals in COLUMNS:
            value = _number(metrics.get(key))
            if value is None:
                cells.append("n/a")
                continue
            text = f"{value:.{decimals}f}"
            cells.append(f"**{text}**" if key in best and round(value, decimals) == round(best[key], decimals) else text)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if notes:
        lines.append("")
        lines.extend(f"- {note}" for note in notes)
    return "\n".join(lines) + "\n"
