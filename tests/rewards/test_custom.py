"""Custom rewards (issue #10): loading a named callable / RewardModel class and checking what it returns."""
import textwrap

import pytest
import torch

from cxrl.compose import reward_from_config
from cxrl.rewards import FunctionReward, RewardSuite, load_custom_reward

SOURCE = textwrap.dedent('''
    import torch
    from cxrl.rewards import RewardModel

    def brightness(images, prompts, metadata):
        return images.mean(dim=(1, 2, 3))

    def with_info(images, prompts, metadata):
        return images.amax(dim=(1, 2, 3)), {"note": "max"}

    def wrong_shape(images, prompts, metadata):
        return images.mean(dim=(2, 3))

    def wrong_dtype(images, prompts, metadata):
        return torch.ones(images.shape[0], dtype=torch.long)

    def not_a_tensor(images, prompts, metadata):
        return [1.0] * images.shape[0]

    def non_finite(images, prompts, metadata):
        return torch.full((images.shape[0],), float("inf"))

    class Scaled(RewardModel):
        name = "scaled"
        comparative = False

        def __init__(self, factor=1.0):
            super().__init__()
            self.factor = factor

        def score(self, images, prompts, metadata):
            return images.mean(dim=(1, 2, 3)) * self.factor
''')


@pytest.fixture()
def reward_file(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(SOURCE)
    return path


def test_function_from_file(reward_file):
    images = torch.rand(3, 1, 8, 8)
    reward = load_custom_reward(f"{reward_file}:brightness")
    assert reward.name == "brightness" and reward.comparative
    torch.testing.assert_close(reward(images, ["a", "b", "c"]), images.mean(dim=(1, 2, 3)))
    info = load_custom_reward(f"{reward_file}:with_info", name="peak")
    torch.testing.assert_close(info(images, ["a", "b", "c"]), images.amax(dim=(1, 2, 3)))
    assert info.last_info == {"note": "max"} and info.name == "peak"


def test_function_from_module():
    reward = load_custom_reward("torch.nn.functional:relu", name="relu")
    assert isinstance(reward, FunctionReward)


def test_class_with_kwargs(reward_file):
    model, weight = reward_from_config({"name": "sc", "callable": f"{reward_file}:Scaled", "kwargs": {"factor": 3.0}, "weight": 0.5})
    images = torch.rand(2, 1, 4, 4)
    torch.testing.assert_close(model(images, ["a", "b"]), 3.0 * images.mean(dim=(1, 2, 3)))
    assert weight == 0.5 and model.name == "sc" and model.comparative is False


@pytest.mark.parametrize("fn, error, match", [
    ("wrong_shape", ValueError, r"returned shape \(2, 1\)"),
    ("wrong_dtype", TypeError, "dtype torch.int64"),
    ("not_a_tensor", TypeError, "returned list"),
])
def test_bad_outputs_name_the_reward(reward_file, fn, error, match):
    reward = load_custom_reward(f"{reward_file}:{fn}", name=f"my_{fn}")
    with pytest.raises(error, match=match) as info:
        reward(torch.rand(2, 1, 4, 4), ["a", "b"])
    assert f"my_{fn}" in str(info.value)


def test_non_finite_strict_raises_lenient_is_excluded(reward_file):
    strict = load_custom_reward(f"{reward_file}:non_finite", strict=True)
    with pytest.raises(ValueError, match="non_finite.*non-finite"):
        strict(torch.rand(2, 1, 4, 4), ["a", "b"])
    lenient = load_custom_reward(f"{reward_file}:non_finite")
    out = RewardSuite([lenient], feedback="direct").score(torch.rand(2, 1, 4, 4), ["a", "b"])
    assert not out.valid.any() and torch.isfinite(out.combined).all()


def test_bad_specs(reward_file, tmp_path):
    with pytest.raises(ValueError, match="module:function"):
        load_custom_reward("no_colon_here")
    with pytest.raises(FileNotFoundError, match="does_not_exist.py"):
        load_custom_reward(f"{tmp_path}/does_not_exist.py:f")
    with pytest.raises(AttributeError, match="no attribute 'missing'"):
        load_custom_reward(f"{reward_file}:missing")
    with pytest.raises(ValueError, match="unknown keys"):
        reward_from_config({"name": "x", "callable": f"{reward_file}:brightness", "wieght": 1})
    with pytest.raises(ValueError, match="batch of 2"):
        load_custom_reward(f"{reward_file}:brightness")(torch.rand(2, 1, 4, 4), ["only one"])
