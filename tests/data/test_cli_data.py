import numpy as np
from PIL import Image

from cxrl.cli import main


def test_preview_phantom_writes_grid_and_prints_prevalence(tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["data", "preview", "--source", "phantom", "--split", "test", "--n", "4", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "phantom [test]" in text and "Cardiomegaly" in text and "wrote" in text
    grid = np.asarray(Image.open(out))
    assert grid.shape[0] > 100 and grid.std() > 20


def test_inspect_and_prepare_mimic_fixture(tmp_path, capsys):
    from mimic_fixture import make_fixture

    root = make_fixture(tmp_path / "mimic")
    assert main(["data", "inspect", "--source", "mimic", "--root", str(root), "--resolution", "16"]) == 0
    text = capsys.readouterr().out
    assert "mimic [train]: 4 items" in text and "missing_image: 1" in text and "path_escapes_root: 1" in text
    cache = tmp_path / "cache"
    args = ["data", "prepare", "--root", str(root), "--resolution", "16", "--cache-dir", str(cache)]
    assert main(args) == 0
    assert "3 done, 1 unreadable, 0 pending" in capsys.readouterr().out
    assert main(args) == 0
    assert "(4 were already done)" in capsys.readouterr().out


def test_labeler_eval_command(capsys):
    assert main(["data", "labeler-eval", "--split", "test"]) == 0
    assert "| Cardiomegaly |" in capsys.readouterr().out
