"""Custom rewards (issue #10): loading a named callable / RewardModel class and checking what it returns."""
import textwrap

import pytest
import torch

from cxrl.compose import reward_from_config
from cxrl.rewards import FunctionReward, RewardError, RewardSuite, load_custom_reward

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

    def divides_by_zero(images, prompts, metadata):
        scale = 1 / 0
        return images.mean(dim=(1, 2, 3)) * scale

    class Raises(RewardModel):
        def score(self, images, prompts, metadata):
            return {}["missing key"]

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


def test_function_from_module(tmp_path, monkeypatch):
    (tmp_path / "site_rewards.py").write_text(SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))   # an importable module, as a user's installed package would be
    images = torch.rand(3, 1, 8, 8)
    reward = load_custom_reward("site_rewards:brightness", name="b")
    assert isinstance(reward, FunctionReward) and reward.name == "b"
    torch.testing.assert_close(reward(images, ["a", "b", "c"]), images.mean(dim=(1, 2, 3)))


def test_class_with_kwargs(reward_file):
    model, weight = reward_from_config({"name": "sc", "callable": f"{reward_file}:Scaled", "kwargs": {"factor": 3.0}, "weight": 0.5})
    images = torch.rand(2, 1, 4, 4)
    torch.testing.assert_close(model(images, ["a", "b"]), 3.0 * images.mean(dim=(1, 2, 3)))
    assert weight == 0.5 and model.name == "sc" and model.comparative is False


@pytest.mark.parametrize("fn, error, match", [
    ("wrong_shape", RewardError, r"returned shape \(2, 1\)"),
    ("wrong_dtype", RewardError, "dtype torch.int64"),
    ("not_a_tensor", RewardError, "returned list"),
    ("divides_by_zero", RewardError, r"raised ZeroDivisionError: division by zero \(at .*my_rewards.py:\d+\)"),
    ("Raises", RewardError, r"raised KeyError: 'missing key' \(at .*my_rewards.py:\d+\)"),
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
    with pytest.raises(RewardError, match="no attribute 'missing'"):
        load_custom_reward(f"{reward_file}:missing")
    with pytest.raises(RewardError, match="no module named 'no_such_reward_module'"):
        load_custom_reward("no_such_reward_module:f")
    broken = tmp_path / "broken.py"
    broken.write_text("import torch\n\ndef f(images, prompts, metadata)\n    return images\n")
    with pytest.raises(RewardError, match=r"importing it raised SyntaxError.*broken.py:3"):
        load_custom_reward(f"{broken}:f")
    with pytest.raises(RewardError, match=r"Scaled\(\*\*kwargs\) raised TypeError.*unexpected keyword"):
        load_custom_reward(f"{reward_file}:Scaled", kwargs={"facter": 2})
    with pytest.raises(ValueError, match="unknown keys"):
        reward_from_config({"name": "x", "callable": f"{reward_file}:brightness", "wieght": 1})
    with pytest.raises(ValueError, match="batch of 2"):
        load_custom_reward(f"{reward_file}:brightness")(torch.rand(2, 1, 4, 4), ["only one"])
