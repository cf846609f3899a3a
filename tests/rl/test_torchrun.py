"""`torchrun --nproc_per_node 2 -m cxrl train` (gloo on CPU) ends where a single process with the same
global batch ends, within float tolerance."""
import socket
import subprocess
import sys

import pytest
import torch

from rl_run_helpers import REPO, subprocess_env, tiny_overrides
from cxrl.rl import checkpoint as ck


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("text_encoder", [False, True], ids=["frozen_text_encoder", "trained_text_encoder"])
def test_two_ranks_equal_one_process(tiny_pixel_dir, tmp_path, text_encoder):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("small left pleural effusion\nno acute process\nmild cardiomegaly\nright pneumothorax\n")
    # Global batch: 4 images in rollout chunks of 2; one optimizer step per epoch over all of them and
    # every timestep (a timestep subset would be drawn per rank and differ from the single plan).
    # adam_eps well above the gradient scale keeps AdamW's step linear in the gradient: with the
    # default 1e-8, elements whose gradient is ~0 take a +-lr step whose sign is float noise.
    common = ["data.source=file", f"data.path={prompts}", "train.timestep_fraction=1.0", "train.batch_size=1",
              "train.adam_eps=1e-3", f"model.train_text_encoder={str(text_encoder).lower()}"]
    single, multi = tmp_path / "single", tmp_path / "multi"
    env = subprocess_env()
    one = subprocess.run([sys.executable, "-m", "cxrl", "train",
                          *tiny_overrides(tiny_pixel_dir, single, epochs=2, extra=[*common, "train.gradient_accumulation=4"])],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                          "--master_port", str(_port()), "-m", "cxrl", "train",
                          *tiny_overrides(tiny_pixel_dir, multi, epochs=2, extra=[*common, "train.gradient_accumulation=2"])],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    _, a = ck.load_checkpoint(single / "checkpoints" / "epoch_000002")
    _, b = ck.load_checkpoint(multi / "checkpoints" / "epoch_000002")
    assert a["trainer"]["updater"]["global_step"] == b["trainer"]["updater"]["global_step"] == 2
    # Tolerance: 0.1% of one AdamW step (lr = 1e-3). The summed policy gradient cancels heavily
    # (group advantages are +-1 over near-identical samples), so reordering the sum across ranks
    # moves it by ~1e-4 relative; a sharding or averaging bug moves weights by a whole step.
    for k, v in a["weights"].items():
        torch.testing.assert_close(b["weights"][k], v, atol=1e-6, rtol=1e-4, msg=k)
    # training actually moved the weights away from the LoRA init (B = 0), so the comparison is not vacuous
    moved = sum(int(v.abs().max() > 0) for k, v in a["weights"].items() if "lora_B" in k)
    assert moved > 0
    assert any(k.startswith("text_encoder.") for k in a["weights"]) == text_encoder   # each rank's own prompts, one average
    assert a["tracker"] == b["tracker"]
