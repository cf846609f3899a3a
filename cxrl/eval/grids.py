"""Image grids with short wrapped captions (PIL only, so it works headless and needs no font files).

``save_grid`` lays out N images row-major with a caption under each; ``save_comparison_grid`` puts one
prompt per row and one model per column (e.g. base vs tuned) with the column names on top and the
prompt to the left of each row.
"""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from matplotlib import font_manager
from PIL import Image, ImageDraw, ImageFont

LINE_HEIGHT = 12  # PIL's built-in bitmap font is ~11 px high
PAD = 4
MIN_CELL = 128  # small (64 px) images are upscaled so captions stay legible next to them


def _check_images(images: torch.Tensor, what: str = "images") -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] not in (1, 3):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{what} must be a tensor [N, 1 or 3, H, W] in [0, 1], got {shape}")
    if not torch.isfinite(images).all():
        raise ValueError(f"{what} contain NaN or Inf")
    return images.detach().float().cpu().clamp(0, 1)


def tensor_to_pil(image: torch.Tensor) -> Image.Image:
    """``[C, H, W]`` in [0, 1] -> 8-bit PIL image ('L' for one channel, 'RGB' for three)."""
    array = (image.detach().float().cpu().clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).numpy()
    return Image.fromarray(array[0], mode="L") if array.shape[0] == 1 else Image.fromarray(np.transpose(array, (1, 2, 0)), mode="RGB")


_FONT = None


def _font():
    """DejaVu Sans from matplotlib's own font files (a dependency, so always on disk); PIL's built-in
    font only as a fallback — its space glyph is so narrow that captions read as run-together words."""
    global _FONT
    if _FONT is None:
        try:
            _FONT = ImageFont.truetype(font_manager.findfont("DejaVu Sans", fallback_to_default=True), 10)
        except (OSError, ValueError):
            _FONT = ImageFont.load_default()
    return _FONT


def _wrap(text: str, width_px: int, max_lines: int) -> list[str]:
    """Wrap to the cell width (≈6 px per character of the default font), ellipsis past max_lines."""
    chars = max(8, width_px // 6)
    lines = textwrap.wrap(" ".join(str(text).split()), width=chars) or [""]
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][: max(0, chars - 3)].rstrip() + "..."
    return lines


def _cell_size(images: torch.Tensor) -> tuple[int, int]:
    h, w = images.shape[-2:]
    scale = max(1, -(-MIN_CELL // max(h, w)))  # integer upscale: nearest keeps pixels honest
    return w * scale, h * scale


def save_grid(images: torch.Tensor, captions: Sequence[str] | None, path, ncols: int = 4, caption_lines: int = 3) -> Path:
    """Save ``images [N, C, H, W]`` in [0, 1] as one PNG, ``ncols`` per row, each with a wrapped
    caption of at most ``caption_lines`` lines under it. Returns the path written."""
    images = _check_images(images)
    n = images.shape[0]
    if n == 0:
        raise ValueError("save_grid: no images to save")
    if captions is not None and len(captions) != n:
        raise ValueError(f"save_grid: {len(captions)} captions for {n} images")
    if ncols < 1:
        raise ValueError(f"save_grid: ncols must be >= 1, got {ncols}")
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    cell_w, cell_h = _cell_size(images)
    text_h = caption_lines * LINE_HEIGHT + PAD if captions is not None else 0
    canvas = Image.new("RGB", (ncols * (cell_w + PAD) + PAD, nrows * (cell_h + text_h + PAD) + PAD), "white")
    draw, font = ImageDraw.Draw(canvas), _font()
    for i in range(n):
        row, col = divmod(i, ncols)
        x, y = PAD + col * (cell_w + PAD), PAD + row * (cell_h + text_h + PAD)
        canvas.paste(tensor_to_pil(images[i]).convert("RGB").resize((cell_w, cell_h), Image.NEAREST), (x, y))
        if captions is not None:
            for k, line in enumerate(_wrap(captions[i], cell_w, caption_lines)):
                draw.text((x, y + cell_h + 2 + k * LINE_HEIGHT), line, fill="black", font=font)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out


def save_comparison_grid(columns: dict[str, torch.Tensor], prompts: Sequence[str], path, caption_lines: int = 6) -> Path:
    """One row per prompt, one column per model (``columns[name] = images [P, C, H, W]``, row i made
    from ``prompts[i]``), model names as column headers and the wrapped prompt left of each row."""
    if not columns:
        raise ValueError("save_comparison_grid: no models given")
    checked = {name: _check_images(imgs, f"images of '{name}'") for name, imgs in columns.items()}
    shapes = {tuple(v.shape) for v in checked.values()}
    if len(shapes) != 1:
        raise ValueError(f"save_comparison_grid: every model needs images of the same shape, got {sorted(shapes)}")
    num_rows = next(iter(checked.values())).shape[0]
    if len(prompts) != num_rows:
        raise ValueError(f"save_comparison_grid: {len(prompts)} prompts for {num_rows} rows of images")
    cell_w, cell_h = _cell_size(next(iter(checked.values())))
    label_w = max(cell_w, 240)  # prompts are long: give them at least ~40 characters per line
    header_h = LINE_HEIGHT + 2 * PAD
    row_h = max(cell_h, caption_lines * LINE_HEIGHT) + PAD
    width = PAD + label_w + len(checked) * (cell_w + PAD)
    canvas = Image.new("RGB", (width, header_h + num_rows * row_h + PAD), "white")
    draw, font = ImageDraw.Draw(canvas), _font()
    for c, name in enumerate(checked):
        draw.text((PAD + label_w + c * (cell_w + PAD), PAD), _wrap(name, cell_w, 1)[0], fill="black", font=font)
    for r in range(num_rows):
        y = header_h + r * row_h
        for k, line in enumerate(_wrap(prompts[r], label_w - PAD, caption_lines)):
            draw.text((PAD, y + k * LINE_HEIGHT), line, fill="black", font=font)
        for c, images in enumerate(checked.values()):
            tile = tensor_to_pil(images[r]).convert("RGB").resize((cell_w, cell_h), Image.NEAREST)
            canvas.paste(tile, (PAD + label_w + c * (cell_w + PAD), y))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out
