"""Run outputs: JSONL records, resume truncation, sample grids and reward curves."""
import importlib.util
import json

import pytest
import torch
from PIL import Image

from cxrl.data.prompt_files import read_prompt_file
from cxrl.rl.logging import MetricsLogger, plot_reward_curves, read_metrics


def test_jsonl_truncate_and_curves(tmp_path):
    log = MetricsLogger(tmp_path, tensorboard="off", progress=False)
    for e in range(4):
        log.log(e, {"reward/a/mean": torch.tensor(e * 0.5), "reward/b/mean": float(e), "n": 3})
    log.truncate_after(1)          # a resume from the checkpoint after epoch 1 re-runs epochs 2, 3
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert records == [{"epoch": 0, "reward/a/mean": 0.0, "reward/b/mean": 0.0, "n": 3},
                       {"epoch": 1, "reward/a/mean": 0.5, "reward/b/mean": 1.0, "n": 3}]
    png = plot_reward_curves(tmp_path / "metrics.jsonl", tmp_path / "curves.png")
    assert Image.open(png).size[0] >= 400
    with pytest.raises(ValueError, match="no 'reward"):
        (tmp_path / "empty.jsonl").write_text(json.dumps({"epoch": 0, "x": 1}) + "\n")
        plot_reward_curves(tmp_path / "empty.jsonl", tmp_path / "x.png")
    # a resume keeps epochs <= its checkpoint's and drops a line a kill cut short (the file is whole again)
    with open(tmp_path / "metrics.jsonl", "a") as fh:
        fh.write('{"epoch": 2, "reward/a/me')
    log.truncate_after(0)
    assert read_metrics(tmp_path / "metrics.jsonl") == records[:1]
    log.truncate_after(-1)   # no checkpoint at all: the run restarts at epoch 0
    assert (tmp_path / "metrics.jsonl").read_text() == ""
    (tmp_path / "bad.jsonl").write_text('{"epoch": 0}\nnot json\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not a JSON record"):
        read_metrics(tmp_path / "bad.jsonl")
    silent = MetricsLogger(tmp_path / "rank1", enabled=False)
    silent.log(0, {"x": 1})
    assert not (tmp_path / "rank1").exists()
    if importlib.util.find_spec("tensorboard") is None:
        with pytest.raises(RuntimeError, match="pip install tensorboard"):
            MetricsLogger(tmp_path / "tb", tensorboard="on")
    else:
        MetricsLogger(tmp_path / "tb", tensorboard="on").log(0, {"reward/a/mean": 1.0})
        assert any((tmp_path / "tb" / "tensorboard").iterdir())


def test_prompt_files(tmp_path):
    (tmp_path / "p.txt").write_text("a b\n\n c d \n")
    assert [e["prompt"] for e in read_prompt_file(tmp_path / "p.txt")] == ["a b", "c d"]
    (tmp_path / "p.csv").write_text("id,report\n1,heart normal\n2,\n3,effusion\n")
    assert [e["prompt"] for e in read_prompt_file(tmp_path / "p.csv")] == ["heart normal", "effusion"]
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "x", "labels": {"Cardiomegaly": 1}}) + "\n"
                                      + json.dumps({"prompt": "y", "labels": [0] * 13 + [None]}) + "\n")
    entries = read_prompt_file(tmp_path / "p.jsonl")
    assert entries[0]["labels"][2] == 1.0 and torch.isnan(entries[0]["labels"][0])
    assert entries[1]["labels"][0] == 0.0 and torch.isnan(entries[1]["labels"][13])
    (tmp_path / "bad.jsonl").write_text('{"prompt": "x", "labels": [1, 2]}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: 'labels' has 2 entries"):
        read_prompt_file(tmp_path / "bad.jsonl")
    with pytest.raises(ValueError, match="unsupported prompt file type"):
        (tmp_path / "p.md").write_text("x")
        read_prompt_file(tmp_path / "p.md")
