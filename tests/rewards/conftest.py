import pytest


@pytest.fixture
def anchor_cache_namespace(tmp_path):
    """``namespace(kwargs)``: the anchor-score cache namespace of a comparative suite whose one entry is the shipped
    diagnostic reward with ``kwargs`` (None: none) — entries that score other numbers must not share a cache."""
    from cxrl.compose import build_reward_suite
    from cxrl.config import RewardsConfig, SamplingConfig

    def namespace(kwargs):
        entry = {"name": "diagnostic", **({"kwargs": kwargs} if kwargs else {})}
        rewards = RewardsConfig(components=[entry], feedback="comparative")
        suite = build_reward_suite(rewards, SamplingConfig(), "cpu", anchor_sampler=None, anchor_hash="a",
                                   latent_shape=(1, 32, 32), seed=0, cache_path=tmp_path / "cache.json")
        return suite.cache.namespace

    return namespace
