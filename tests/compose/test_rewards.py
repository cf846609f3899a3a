"""The anchor-score cache of a composed reward suite is keyed on what the anchor scores depend on: a reward
retrained (or edited) in place at the same path misses; the same weights saved again hit."""
import torch

from cxrl.compose import build_reward_suite
from cxrl.config import RewardsConfig, SamplingConfig
from cxrl.rewards import PostureNet, PostureReward

USER_REWARD = "def score(images, prompts, metadata):\n    return images.mean(dim=(1, 2, 3)) * {factor}\n"


def _suite(posture_dir, user_file, cache_path, anchor_hash="anchor-weights"):
    components = [{"name": "posture", "path": str(posture_dir), "comparative": True},
                  {"name": "user", "callable": f"{user_file}:score"}]
    return build_reward_suite(RewardsConfig(components=components), SamplingConfig(), "cpu", anchor_sampler=None,
                              anchor_hash=anchor_hash, latent_shape=(1, 16, 16), seed=0, cache_path=cache_path)


def _entries_after_reload(posture_dir, user_file, cache_path, **kw) -> int:
    return len(_suite(posture_dir, user_file, cache_path, **kw).cache)


def test_reward_retrained_in_place_misses_the_anchor_cache(tmp_path):
    torch.manual_seed(0)
    net = PostureNet(widths=(4, 8), feature_dim=8, resolution=16)
    posture_dir, user_file, cache_path = tmp_path / "posture", tmp_path / "user_reward.py", tmp_path / "cache.json"
    PostureReward(net).save(posture_dir)
    user_file.write_text(USER_REWARD.format(factor=1.0))
    suite = _suite(posture_dir, user_file, cache_path)
    suite.cache.put("small left effusion", 7, {"posture": -0.25, "user": 0.5})
    suite.flush()

    PostureReward(net).save(posture_dir)                # the same weights written again: still the same reward
    assert _entries_after_reload(posture_dir, user_file, cache_path) == 1
    assert _entries_after_reload(posture_dir, user_file, cache_path, anchor_hash="another anchor") == 0
    with torch.no_grad():                               # retrained in place: same path, same config entry
        net.head.bias[2] += 0.01
    PostureReward(net).save(posture_dir)
    retrained = _suite(posture_dir, user_file, cache_path)
    assert len(retrained.cache) == 0 and retrained.cache.namespace != suite.cache.namespace
    assert retrained.cache.meta["rewards"]["posture"]["weights"] != suite.cache.meta["rewards"]["posture"]["weights"]
    assert retrained.cache.meta["rewards"]["user"] == suite.cache.meta["rewards"]["user"]

    net.head.bias.data[2] -= 0.01                       # back to the first weights, but the user's code changed
    PostureReward(net).save(posture_dir)
    user_file.write_text(USER_REWARD.format(factor=2.0))
    assert _entries_after_reload(posture_dir, user_file, cache_path) == 0
    user_file.write_text(USER_REWARD.format(factor=1.0))
    assert _entries_after_reload(posture_dir, user_file, cache_path) == 1
