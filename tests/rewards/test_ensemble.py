"""Reward ensembles: a config entry whose ``path`` is a list scores the mean of its members, keys the anchor cache
on every member, counts as optimised (never an evaluator), and bad lists are refused by name."""
import pytest
import torch

from cxrl.compose import build_reward_suite
from cxrl.compose.rewards import forbidden_evaluator_dirs, reward_from_config
from cxrl.config import Config, RewardsConfig, SamplingConfig, apply_overrides, load_config
from cxrl.rewards import PostureNet, PostureReward
from cxrl.rewards.ensemble import EnsembleReward


def _posture_dirs(tmp_path, n=3):
    dirs = []
    for seed in range(n):
        torch.manual_seed(seed)
        d = tmp_path / f"posture{seed}"
        net = PostureNet(widths=(4, 8), feature_dim=8, resolution=16)
        with torch.no_grad():   # the head starts at zero (the identity posture): give each member its own
            net.head.weight.normal_(std=0.5)
            net.head.bias.normal_(std=0.5)
        PostureReward(net).save(d)
        dirs.append(d)
    return dirs


def test_ensemble_scores_the_mean_of_its_members(tmp_path):
    dirs = _posture_dirs(tmp_path)
    model, weight = reward_from_config({"name": "posture", "weight": 2.0, "path": [str(d) for d in dirs]})
    singles = [reward_from_config({"name": "posture", "path": str(d)})[0] for d in dirs]
    assert isinstance(model, EnsembleReward) and weight == 2.0 and model.name == "posture"
    images = torch.rand(5, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    prompts = ["pa view"] * 5
    expected = torch.stack([m(images, prompts) for m in singles]).mean(dim=0)
    torch.testing.assert_close(model(images, prompts), expected)
    assert not torch.allclose(singles[0](images, prompts), expected)   # the members differ: the mean is not one of them


def test_the_shipped_demo_ensemble_loads_its_three_diagnostic_models():
    cfg = load_config(None)   # the packaged demo config: what `cxrl train` runs
    entry = next(e for e in cfg.rewards.components if e["name"] == "diagnostic")
    model, _ = reward_from_config(entry)
    assert isinstance(model, EnsembleReward) and len(model.members) == 3
    assert len({m.fingerprint() for m in model.members}) == 3


def test_anchor_cache_key_covers_every_member(tmp_path):
    dirs = _posture_dirs(tmp_path)

    def namespace(paths):
        rewards = RewardsConfig(components=[{"name": "posture", "path": [str(p) for p in paths]}])
        suite = build_reward_suite(rewards, SamplingConfig(), "cpu", anchor_sampler=None, anchor_hash="a",
                                   latent_shape=(1, 16, 16), seed=0, cache_path=tmp_path / "cache.json")
        return suite.cache.namespace

    first = namespace(dirs)
    assert namespace(dirs) == first
    with torch.no_grad():   # the last member retrained in place: same paths, other scores
        net = PostureReward.load(dirs[2]).net
        net.head.bias[0] += 0.01
        PostureReward(net).save(dirs[2])
    assert namespace(dirs) != first


def test_ensemble_members_are_never_evaluators(tmp_path):
    dirs = _posture_dirs(tmp_path, 2)
    rewards = RewardsConfig(components=[{"name": "posture", "path": [str(d) for d in dirs]},
                                        {"name": "diagnostic", "path": ["asset:rewards/diagnostic-seed1", None]}])
    forbidden = {str(p) for p in forbidden_evaluator_dirs(rewards)}
    assert {str(d) for d in dirs} <= forbidden
    assert any(p.endswith("rewards/diagnostic-seed1") for p in forbidden)


@pytest.mark.parametrize("path,message", [
    (["only-one"], "2 or more"),
    (["a", 3], "2 or more"),
    ([], "2 or more"),
    (5, "a list of them"),
])
def test_bad_ensemble_paths_are_refused_by_name(path, message):
    with pytest.raises(ValueError, match=message) as err:
        apply_overrides(Config(), [f"rewards.components=[{{name: posture, path: {path!r}}}]".replace("'", '"')])
    assert "rewards.components[0].path" in str(err.value)


def test_ensemble_needs_one_kind_of_member(tmp_path):
    dirs = _posture_dirs(tmp_path, 1)
    posture = reward_from_config({"name": "posture", "path": str(dirs[0])})[0]
    diagnostic = reward_from_config({"name": "diagnostic"})[0]
    with pytest.raises(ValueError, match="one kind"):
        EnsembleReward([posture, diagnostic])
    with pytest.raises(ValueError, match="at least 2"):
        EnsembleReward([posture])


def test_a_diagnostic_ensemble_warns_about_unlabelled_prompts_once(caplog):
    import logging

    cfg = load_config(None)
    entry = next(e for e in cfg.rewards.components if e["name"] == "diagnostic")
    model, _ = reward_from_config(entry)
    caplog.set_level(logging.WARNING, logger="cxrl")
    images = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    unlabelled = {"labels": torch.full((14,), float("nan"))}   # no CheXpert class stated positive or negative
    scores = model(images, ["Emphysema."] * 2, [unlabelled, unlabelled])
    assert torch.equal(scores, torch.zeros(2))
    assert caplog.text.count("have no labelled class") == 1
    assert model.members[0].warn_about_inputs and not any(m.warn_about_inputs for m in model.members[1:])
