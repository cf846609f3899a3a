"""Posture geometry against the phantom renderer, reward formula, and the train-reward command end to end."""
import json

import numpy as np
import pytest
import torch

from cxrl.data.phantom import render_phantom
from cxrl.rewards import (IDENTITY_POSTURE, PostureNet, PostureReward, canonicalize, load_reward_model, pose_images,
                          posture_matrix, sample_postures)


def test_posture_matrix_matches_the_documented_formula():
    psi = torch.tensor([[1.1, 0.9, 0.05, -0.1, 0.3]])
    sx, sy, tx, ty, th = psi[0].tolist()
    expected = torch.tensor([[[sx * np.cos(th), -sy * np.sin(th), tx], [sx * np.sin(th), sy * np.cos(th), ty]]])
    torch.testing.assert_close(posture_matrix(psi), expected.float())
    with pytest.raises(ValueError, match=r"\[B, 5\]"):
        posture_matrix(torch.zeros(2, 4))


def test_pose_images_follows_the_phantom_convention():
    labels = torch.full((14,), float("nan"))
    psi = np.array([1.08, 0.95, 0.07, -0.05, 0.15], dtype=np.float32)
    canonical = torch.from_numpy(render_phantom(labels, None, seed=4, resolution=64)[0])[None, None]
    posed = torch.from_numpy(render_phantom(labels, psi, seed=4, resolution=64)[0])[None, None]
    ours = pose_images(canonical, torch.from_numpy(psi)[None])
    inner = (slice(None), slice(None), slice(12, 52), slice(12, 52))  # borders: the renderer sees beyond the frame
    err = (ours - posed)[inner].abs().mean()
    wrong_way = (canonicalize(canonical, torch.from_numpy(psi)[None]) - posed)[inner].abs().mean()
    assert err < 0.04 and wrong_way > 3 * err
    back = canonicalize(posed, torch.from_numpy(psi)[None])
    assert (back - canonical)[inner].abs().mean() < 0.04


def test_reward_formula_and_weights():
    class Fixed(PostureNet):
        def forward(self, x):
            return torch.tensor([[1.2, 1.0, 0.1, 0.0, -0.2]]).expand(x.shape[0], 5)

    images = torch.rand(2, 3, 32, 32)
    r = PostureReward(Fixed())(images, ["a", "b"])
    torch.testing.assert_close(r, torch.full((2,), -float(np.sqrt(0.04 + 0.01 + 0.04))))
    r_w = PostureReward(Fixed(), weights=(0, 0, 1, 1, 0))(images, ["a", "b"])
    torch.testing.assert_close(r_w, torch.full((2,), -0.1))
    with pytest.raises(ValueError, match="5 entries"):
        PostureReward(Fixed(), weights=(1, 1))


def test_fresh_posture_net_says_aligned_and_samples_span_ranges():
    net = PostureNet()
    torch.testing.assert_close(net(torch.rand(3, 1, 64, 64)), torch.tensor([IDENTITY_POSTURE] * 3))
    psi = sample_postures(4000, torch.Generator().manual_seed(0), 0.1, 0.2, 0.3, identity_fraction=0.25)
    dev = (psi - torch.tensor(IDENTITY_POSTURE)).abs()
    assert (dev.amax(0) <= torch.tensor([0.1, 0.1, 0.2, 0.2, 0.3]) + 1e-6).all()
    assert (dev.amax(0) > torch.tensor([0.09, 0.09, 0.18, 0.18, 0.27])).all()
    assert 0.2 < float((dev.sum(1) == 0).float().mean()) < 0.3


def test_train_reward_command_end_to_end(tmp_path):
    from cxrl.cli import main

    out = tmp_path / "diag"
    cache = tmp_path / "data.safetensors"
    args = ["train-reward", "diagnostic", "--data", "phantom", "--out", str(out), "--seed", "3", "--epochs", "1",
            "--max-items", "48", "--renders-per-report", "2", "--batch-size", "16", "--data-cache", str(cache)]
    assert main(args) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["kind"] == "diagnostic" and config["training"]["config"]["seed"] == 3
    assert config["training"]["data"]["n"] == 48 and config["training"]["data"]["subset"] == "reward"
    reward = load_reward_model("diagnostic", out)
    x = torch.rand(2, 1, 64, 64)
    labels = torch.zeros(14)
    assert torch.isfinite(reward(x, ["a", "b"], [{"labels": labels}] * 2)).all()
    assert cache.is_file()
    # the second run reuses the rendered set and, with the same seed, reproduces the weights exactly
    out2 = tmp_path / "diag2"
    assert main(args[:5] + [str(out2)] + args[6:]) == 0
    assert (out / "model.safetensors").read_bytes() == (out2 / "model.safetensors").read_bytes()
