"""Grids: layout, pixel content and caption rendering; tables: Paper layout, bold best, n/a."""
import numpy as np
import pytest
import torch
from PIL import Image

from cxrl.eval.grids import save_comparison_grid, save_grid, tensor_to_pil
from cxrl.eval.tables import markdown_table


def test_save_grid_layout_and_pixels(tmp_path):
    images = torch.zeros(5, 1, 64, 64)
    for i in range(5):
        images[i] = i / 4.0
    path = save_grid(images, [f"prompt {i} " + "with words " * 10 for i in range(5)], tmp_path / "g" / "grid.png", ncols=3)
    grid = np.asarray(Image.open(path).convert("L"))
    # 64 px images are upscaled x2 to 128 px cells; 3 columns, 2 rows, 4 px padding
    assert grid.shape[1] == 3 * (128 + 4) + 4
    assert grid[4 + 64, 4 + 64] == 0                   # first image: black
    assert grid[4 + 64, 4 + 2 * 132 + 64] == 128       # third image: 0.5 grey
    # the caption area under the first image has dark text pixels on the white background
    caption = grid[4 + 128 + 2: 4 + 128 + 36, 4: 4 + 128]
    assert (caption < 100).any() and (caption > 250).any()


def test_save_grid_without_captions_and_errors(tmp_path):
    path = save_grid(torch.rand(2, 3, 200, 200), None, tmp_path / "rgb.png", ncols=4)
    assert Image.open(path).size == (2 * 204 + 4, 204 + 4)
    with pytest.raises(ValueError, match="captions"):
        save_grid(torch.rand(2, 1, 8, 8), ["one"], tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"\[N, 1 or 3, H, W\]"):
        save_grid(torch.rand(2, 8, 8), None, tmp_path / "x.png")


def test_comparison_grid_rows_and_columns(tmp_path):
    base, tuned = torch.zeros(2, 1, 64, 64), torch.ones(2, 1, 64, 64)
    path = save_comparison_grid({"base": base, "tuned": tuned}, ["no finding", "large effusion"], tmp_path / "cmp.png")
    grid = np.asarray(Image.open(path).convert("L"))
    label_w, header_h = 240, 20
    # row 0: base tile black, tuned tile white at their column offsets
    assert grid[header_h + 10, 4 + label_w + 10] == 0
    assert grid[header_h + 10, 4 + label_w + 132 + 10] == 255
    with pytest.raises(ValueError, match="same shape"):
        save_comparison_grid({"a": base, "b": torch.zeros(3, 1, 64, 64)}, ["x", "y"], tmp_path / "bad.png")


def test_tensor_to_pil_rounds():
    img = tensor_to_pil(torch.full((1, 2, 2), 0.5))
    assert img.mode == "L" and np.asarray(img)[0, 0] == 128


def test_markdown_table_layout_bold_best_and_missing():
    results = {
        "base": {"posture": -0.363, "auroc": 0.65, "consistency": 0.285, "fid": 2.58, "ms_ssim": 0.197},
        "tuned": {"posture": -0.246, "auroc": float("nan"), "consistency": 0.343, "fid": 1.51, "ms_ssim": 0.147},
    }
    table = markdown_table(results, notes=["FID features: toy"])
    lines = table.splitlines()
    assert lines[0] == "| Model | r_align ↑ | AUROC ↑ | sim ↑ | FID ↓ | MS-SSIM ↓ |"
    assert lines[2] == "| base | -0.363 | 0.650 | 0.285 | 2.580 | 0.197 |"
    assert lines[3] == "| tuned | **-0.246** | n/a | **0.343** | **1.510** | **0.147** |"
    assert lines[-1] == "- FID features: toy"
    with pytest.raises(ValueError, match="no models"):
        markdown_table({})
