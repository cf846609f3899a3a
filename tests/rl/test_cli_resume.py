"""`python -m cxrl train` as a real subprocess: SIGKILL at an arbitrary moment, `--resume`, and the
final weights are bitwise equal to an uninterrupted run's. Plus the CLI's error paths."""
import json
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


def _tensors(directory):
    from safetensors.torch import load_file

    return {f.relative_to(directory).as_posix(): load_file(f) for f in sorted(directory.rglob("*.safetensors"))}


def test_sigkill_then_resume_is_bitwise_equal(tmp_path):
    """model.path=tiny: every process builds the tiny generator (tokenizer included) at load time, so the run
    killed and resumed here is also the check that separate processes build the same generator."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPTS)
    data = ["data.source=file", f"data.path={prompts}"]
    epochs = 3
    a, b = tmp_path / "a", tmp_path / "b"
    full = _run(tiny_overrides("tiny", a, epochs=epochs, extra=data))
    assert full.returncode == 0, full.stderr[-3000:]

    proc = subprocess.Popen(_cmd(*tiny_overrides("tiny", b, epochs=epochs, extra=data)), cwd=REPO,
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

    resumed = _run(["--resume", str(b), "--trust-run-code"])   # its rewards are code named in b/config.yaml
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "skipping checkpoint" in resumed.stderr and "epoch_000099" in resumed.stderr
    assert "resumed from" in resumed.stderr

    # the generator built by the uninterrupted run's process and by the resuming one: the same bytes and weights
    tiny_a, tiny_b = (run / "work" / "rank0" / "tiny_generator_0" for run in (a, b))
    for name in ("vocab.json", "merges.txt"):
        assert (tiny_a / "tokenizer" / name).read_bytes() == (tiny_b / "tokenizer" / name).read_bytes(), name
    built_a, built_b = _tensors(tiny_a), _tensors(tiny_b)
    assert set(built_a) == set(built_b) and {"unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"} <= set(built_a)
    for f in built_a:
        assert built_a[f].keys() == built_b[f].keys() and all(torch.equal(built_a[f][k], built_b[f][k]) for k in built_a[f]), f

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
    unet_a, unet_b = _tensors(a / "final" / "unet"), _tensors(b / "final" / "unet")
    assert unet_a and set(unet_a) == set(unet_b)
    for f, wa in unet_a.items():
        wb = unet_b[f]
        assert set(wa) == set(wb) and all(torch.equal(wa[k], wb[k]) for k in wa)
        # ...the trained weights, not the starting ones
        start = built_a[f"unet/{f}"]
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


def _wait_for(path, proc, seconds):
    deadline = time.time() + seconds
    while not path.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    return path.exists()


def _kill(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def test_train_without_arguments_is_the_demo_and_runs_twice(tmp_path):
    """`cxrl train`, no arguments, in an empty working directory: the packaged demo config, runs/demo, a real first
    epoch (stopped once its checkpoint is on disk); run again, it goes to runs/demo-2 and leaves runs/demo alone."""
    from cxrl.compose import resolve_asset
    from cxrl.config import load_config, to_dict

    try:
        resolve_asset("asset:base")
    except FileNotFoundError:   # a checkout without the shipped weights: the command says what is missing
        done = subprocess.run(_cmd(), cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and "shipped asset 'base' is not installed" in done.stderr, done.stderr
        return
    demo = tmp_path / "runs" / "demo"
    proc = subprocess.Popen(_cmd(), cwd=tmp_path, env=subprocess_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        first = demo / "checkpoints" / "epoch_000001" / "manifest.json"
        assert _wait_for(first, proc, 400), f"no first checkpoint (exit code {proc.poll()})"
    finally:
        _kill(proc)
    packaged = to_dict(load_config(None))
    assert to_dict(load_config(demo / "config.yaml")) == packaged   # exactly the packaged demo, in runs/demo
    record = json.loads((demo / "run.json").read_text())
    epoch, groups = ck.load_checkpoint(first.parent)
    assert epoch == 1 and groups["trainer"]["epoch"] == 1 and groups["trainer"]["run_id"] == record["run_id"]
    assert (first.parent / "config.yaml").read_text() == (demo / "config.yaml").read_text()
    records = [json.loads(line) for line in (demo / "metrics.jsonl").read_text().splitlines()]
    metrics = next(r for r in records if "reward/invalid_samples" in r)   # the demo's monitor logs probes beside them
    assert any("probe/posture" in r for r in records)
    assert metrics["epoch"] == 0 and metrics["reward/invalid_samples"] == 0
    assert {f"reward/{k}/mean" for k in ("posture", "diagnostic", "consistency")} <= set(metrics)
    assert len(groups["weights"]) > 0

    before = {p.relative_to(demo): p.stat().st_mtime_ns for p in demo.rglob("*") if p.is_file()}
    with open(tmp_path / "second.err", "w") as err:
        again = subprocess.Popen(_cmd(), cwd=tmp_path, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=err)
        try:
            assert _wait_for(demo.with_name("demo-2") / "run.json", again, 240), f"no runs/demo-2 ({again.poll()})"
        finally:
            _kill(again)
    assert "runs/demo holds an earlier run; this run goes to runs/demo-2" in (tmp_path / "second.err").read_text()
    second = json.loads((demo.with_name("demo-2") / "run.json").read_text())
    assert second["run_id"] != record["run_id"]
    assert to_dict(load_config(demo.with_name("demo-2") / "config.yaml")) == {**packaged, "log": {
        **packaged["log"], "output_dir": "runs/demo-2"}}
    assert {p.relative_to(demo): p.stat().st_mtime_ns for p in demo.rglob("*") if p.is_file()} == before
