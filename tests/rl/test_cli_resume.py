"""`python -m cxrl train` as a real subprocess: SIGKILL at an arbitrary moment, `--resume`, and the
final weights are bitwise equal to an uninterrupted run's. Plus the CLI's error paths."""
import random
import signal
import subprocess
import sys
import time

import torch

from rl_run_helpers import REPO, subprocess_env, tiny_overrides
from cxrl.rl import checkpoint as ck

PROMPTS = "small left pleural effusion\nno acute cardiopulmonary process\nmild cardiomegaly\n"


def _cmd(*args):
    return [sys.executable, "-m", "cxrl", "train", *args]


def _run(args, timeout=300):
    return subprocess.run(_cmd(*args), cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=timeout)


def test_sigkill_then_resume_is_bitwise_equal(tiny_pixel_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPTS)
    data = ["data.source=file", f"data.path={prompts}"]
    epochs = 3
    a, b = tmp_path / "a", tmp_path / "b"
    full = _run(tiny_overrides(tiny_pixel_dir, a, epochs=epochs, extra=data))
    assert full.returncode == 0, full.stderr[-3000:]

    proc = subprocess.Popen(_cmd(*tiny_overrides(tiny_pixel_dir, b, epochs=epochs, extra=data)), cwd=REPO,
                            env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first = b / "checkpoints" / "epoch_000001" / "manifest.json"
    deadline = time.time() + 240
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(random.uniform(0.0, 1.5))   # somewhere inside epoch 1 or 2: rollout, update or a save
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    # a partial checkpoint newer than everything (no manifest: its write never finished) is skipped
    (b / "checkpoints" / "epoch_000099").mkdir()
    (b / "checkpoints" / "epoch_000099" / "weights.safetensors").write_bytes(b"partial")

    resumed = _run(["--resume", str(b)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "skipping checkpoint" in resumed.stderr and "epoch_000099" in resumed.stderr
    assert "resumed from" in resumed.stderr

    name = f"epoch_{epochs:06d}"
    _, ga = ck.load_checkpoint(a / "checkpoints" / name)
    _, gb = ck.load_checkpoint(b / "checkpoints" / name)
    assert set(ga["weights"]) == set(gb["weights"]) and len(ga["weights"]) > 0
    for k in ga["weights"]:
        assert torch.equal(ga["weights"][k], gb["weights"][k]), k
    for pid, state in ga["optimizer"]["state"].items():
        for k, v in state.items():
            assert torch.equal(v, gb["optimizer"]["state"][pid][k]), (pid, k)
    assert ga["tracker"] == gb["tracker"]
    assert ga["trainer"]["updater"] == gb["trainer"]["updater"]
    # every finished run (evaluation off here) saves the tuned generator in the diffusers layout
    from safetensors.torch import load_file

    unet_a, unet_b = (sorted((run / "final" / "unet").glob("*.safetensors")) for run in (a, b))
    assert unet_a and [f.name for f in unet_a] == [f.name for f in unet_b]
    for fa, fb in zip(unet_a, unet_b):
        wa, wb = load_file(fa), load_file(fb)
        assert set(wa) == set(wb) and all(torch.equal(wa[k], wb[k]) for k in wa)
        # ...the trained weights, not the starting ones
        start = load_file(tiny_pixel_dir / "unet" / fa.name)
        assert any(not torch.equal(wa[k], start[k].to(wa[k].dtype)) for k in wa)


def test_cli_errors_are_clear_and_non_zero(tmp_path, capsys):
    from cxrl.cli import main

    assert main(["train", "--output", str(tmp_path), "train.learnig_rate=1"]) == 2
    assert "did you mean 'train.learning_rate'" in capsys.readouterr().err
    assert main(["train", "--output", str(tmp_path), "sampling.num_steps=0"]) == 2
    assert "sampling.num_steps" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "nowhere")]) == 2
    assert "config.yaml" in capsys.readouterr().err
    assert main(["train", "--output", str(tmp_path), "model.path=asset:no/such", "model.device=cpu",
                 "data.source=file", f"data.path={tmp_path / 'none.txt'}"]) == 2
    assert "asset 'no/such'" in capsys.readouterr().err
    assert main(["train", "--output", str(tmp_path), "model.path=tiny", "model.device=cpu",
                 "data.source=file", f"data.path={tmp_path / 'none.txt'}"]) == 2
    assert "none.txt" in capsys.readouterr().err


def test_train_without_arguments_runs_the_demo_or_says_what_is_missing(tmp_path, monkeypatch, capsys):
    from cxrl.cli import main
    from cxrl.compose import resolve_asset

    try:
        resolve_asset("asset:base")
    except FileNotFoundError:
        monkeypatch.chdir(tmp_path)
        assert main(["train"]) == 2
        err = capsys.readouterr().err
        assert "shipped asset 'base' is not installed" in err and "model.path" in err
    else:  # the demo weights are shipped: a no-argument run is the demo; just check it parses
        from cxrl.config import load_config

        assert load_config().model.path == "asset:base"
