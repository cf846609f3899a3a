"""RLCF conventions: sign, same-noise pairing, seed bank, anchor cache, non-finite handling, async scoring."""
import json
import logging

import pytest
import torch

from cxrl.hashing import state_dict_hash
from cxrl.rewards import AnchorScoreCache, AsyncScorer, FunctionReward, RewardSuite, SeedBank, noise_for


def brightness(images, prompts, metadata):
    return images.mean(dim=(1, 2, 3))


def contrast(images, prompts, metadata):
    return images.std(dim=(1, 2, 3))


class TinySampler:
    """A real (tiny, deterministic) generator: a fixed random conv stack applied to the initial noise.
    Records every call so tests can check which noise the anchor saw."""

    def __init__(self, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.w1 = torch.randn(8, 1, 3, 3, generator=g) * 0.5
        self.w2 = torch.randn(1, 8, 3, 3, generator=g) * 0.5
        self.calls = []

    def __call__(self, prompts, noise):
        self.calls.append((list(prompts), noise.clone()))
        h = torch.nn.functional.conv2d(noise, self.w1, padding=1).tanh()
        bias = torch.tensor([len(p) % 7 for p in prompts], dtype=noise.dtype).view(-1, 1, 1, 1) * 0.05
        return torch.sigmoid(torch.nn.functional.conv2d(h, self.w2, padding=1) + bias)


SHAPE = (1, 8, 8)
PROMPTS = ["small left effusion", "normal chest", "cardiomegaly", "normal chest"]


def make_suite(feedback="comparative", cache=None, sampler=None, **kw):
    models = [FunctionReward(brightness, name="bright"), FunctionReward(contrast, name="contrast", comparative=False)]
    return RewardSuite(models, weights={"bright": 2.0, "contrast": 0.5}, feedback=feedback, anchor_sampler=sampler,
                       cache=cache, seed_bank=SeedBank(2, base_seed=3), latent_shape=SHAPE, **kw)


def test_seed_bank_is_deterministic_and_distinct():
    bank = SeedBank(seeds_per_prompt=3, base_seed=7)
    seeds = bank.seeds_for(["a", "a", "a", "a", "b"])
    assert seeds[:3] == [bank.seed("a", k) for k in range(3)]
    assert seeds[3] == seeds[0]  # the 4th copy wraps around to k = 0
    assert len(set(seeds[:3] + [seeds[4]])) == 4
    assert SeedBank(3, 7).seeds_for(["a", "b"]) == bank.seeds_for(["a", "b"])
    assert SeedBank(3, 8).seed("a", 0) != bank.seed("a", 0)
    with pytest.raises(ValueError, match="seeds_per_prompt"):
        SeedBank(0)
    with pytest.raises(ValueError, match="out of range"):
        bank.seed("a", 3)


def test_noise_for_is_per_seed():
    a = noise_for([1, 2, 3], SHAPE)
    b = noise_for([3, 1], SHAPE)
    assert torch.equal(a[2], b[0]) and torch.equal(a[0], b[1])
    assert not torch.equal(a[0], a[1])
    assert a.shape == (3, *SHAPE)


def test_anchor_hash_tracks_weights():
    net = torch.nn.Linear(4, 3)
    h = state_dict_hash(net)
    assert h == state_dict_hash(net.state_dict()) and len(h) == 64
    with torch.no_grad():
        net.weight[0, 0] += 1e-3
    assert state_dict_hash(net) != h
    assert state_dict_hash({"w": torch.ones(2, dtype=torch.bfloat16)}) != state_dict_hash({"w": torch.ones(2)})


def test_comparative_sign_and_same_noise_pairing():
    sampler = TinySampler()
    suite = make_suite(sampler=sampler)
    seeds = suite.seed_bank.seeds_for(PROMPTS)
    noise = noise_for(seeds, SHAPE)
    policy = TinySampler(seed=1)(PROMPTS, noise)
    out = suite.score(policy, PROMPTS, seeds=seeds, initial_noise=noise)
    # the anchor saw exactly the policy's initial noise, for the same prompts
    assert len(sampler.calls) == 1
    assert sampler.calls[0][0] == PROMPTS and torch.equal(sampler.calls[0][1], noise)
    anchor = TinySampler()(PROMPTS, noise)
    expected_bright = brightness(policy, 0, 0) - brightness(anchor, 0, 0)   # r = s(x) - s(x_hat)
    expected_contrast = contrast(policy, 0, 0)                              # not comparative: direct
    assert out.names == ("bright", "contrast")
    torch.testing.assert_close(out.components[:, 0], expected_bright)
    torch.testing.assert_close(out.components[:, 1], expected_contrast)
    torch.testing.assert_close(out.combined, 2.0 * expected_bright + 0.5 * expected_contrast)
    assert out.valid.all()
    assert torch.isnan(out.anchor_scores[:, 1]).all()
    # an image equal to the anchor's gets exactly zero comparative reward
    same = suite.score(anchor, PROMPTS, seeds=seeds, initial_noise=noise)
    assert torch.equal(same.components[:, 0], torch.zeros(4))


def test_direct_feedback_ignores_anchor():
    sampler = TinySampler()
    suite = make_suite(feedback="direct", sampler=sampler)
    images = torch.rand(4, *SHAPE)
    out = suite.score(images, PROMPTS)
    assert sampler.calls == [] and out.anchor_scores is None
    torch.testing.assert_close(out.components[:, 0], brightness(images, 0, 0))


def test_anchor_cache_hits_on_second_epoch_and_equals_resampling(tmp_path):
    path = tmp_path / "anchor_cache.json"
    settings = {"num_steps": 20, "eta": 1.0, "guidance_scale": 3.0}
    sampler = TinySampler()
    anchor_hash = state_dict_hash({"w1": sampler.w1, "w2": sampler.w2})
    cache = AnchorScoreCache(path, anchor_hash, settings, {"bright": "fn"})
    cached_suite = make_suite(cache=cache, sampler=sampler)
    fresh_sampler = TinySampler()
    uncached_suite = make_suite(sampler=fresh_sampler)
    policy_gen = TinySampler(seed=5)
    for epoch in range(2):
        seeds = cached_suite.seed_bank.seeds_for(PROMPTS)
        noise = noise_for(seeds, SHAPE)
        images = policy_gen(PROMPTS, noise) + 0.01 * epoch  # the policy changes between epochs
        a = cached_suite.score(images, PROMPTS, seeds=seeds, initial_noise=noise)
        b = uncached_suite.score(images, PROMPTS, seeds=seeds, initial_noise=noise)
        torch.testing.assert_close(a.components, b.components)
    # "normal chest" appears twice with different seeds (k = 0, 1): 4 distinct (prompt, seed) pairs
    assert cached_suite.anchor_images_generated == 4 and len(sampler.calls) == 1
    assert uncached_suite.anchor_images_generated == 8
    assert cache.hits == 4 and cache.misses == 4
    cached_suite.flush()
    # a new run with the same anchor + settings reuses the file; another anchor does not
    reopened = AnchorScoreCache(path, anchor_hash, settings, {"bright": "fn"})
    assert len(reopened) == 4
    assert len(AnchorScoreCache(path, "other-anchor", settings, {"bright": "fn"})) == 0
    assert len(AnchorScoreCache(path, anchor_hash, {**settings, "num_steps": 50}, {"bright": "fn"})) == 0
    assert json.loads(path.read_text())["meta"]["anchor_hash"] == anchor_hash


def test_cache_miss_rebuilds_noise_from_seeds():
    sampler = TinySampler()
    suite = make_suite(cache=AnchorScoreCache(None, "h"), sampler=sampler)
    seeds = suite.seed_bank.seeds_for(PROMPTS)
    suite.score(torch.rand(4, *SHAPE), PROMPTS, seeds=seeds)  # no initial_noise given
    assert torch.equal(sampler.calls[0][1], noise_for(seeds, SHAPE))


def test_non_finite_reward_is_reported_and_excluded(caplog):
    def flaky(images, prompts, metadata):
        out = images.mean(dim=(1, 2, 3))
        out[1] = float("nan")
        return out

    suite = RewardSuite([FunctionReward(flaky, name="flaky"), FunctionReward(brightness, name="bright")], feedback="direct")
    with caplog.at_level(logging.ERROR):
        out = suite.score(torch.rand(4, *SHAPE), PROMPTS)
    assert out.valid.tolist() == [True, False, True, True]
    assert torch.isfinite(out.components).all() and torch.isfinite(out.combined).all()
    assert out.combined[1] == 0
    assert "flaky" in caplog.text and "normal chest" in caplog.text


def test_suite_rejects_bad_configuration():
    m = FunctionReward(brightness, name="bright")
    with pytest.raises(ValueError, match="feedback"):
        RewardSuite([m], feedback="relative")
    with pytest.raises(ValueError, match="unknown rewards"):
        RewardSuite([m], weights={"brightness": 1.0})
    with pytest.raises(ValueError, match="anchor_sampler"):
        RewardSuite([m]).score(torch.rand(2, *SHAPE), ["a", "b"], initial_noise=torch.rand(2, *SHAPE))


def test_async_scorer_matches_sync():
    suite = make_suite(sampler=TinySampler())
    seeds = suite.seed_bank.seeds_for(PROMPTS)
    noise = noise_for(seeds, SHAPE)
    images = torch.rand(4, *SHAPE)
    sync = suite.score(images, PROMPTS, seeds=seeds, initial_noise=noise)
    with AsyncScorer(suite) as scorer:
        futures = [scorer.submit(images, PROMPTS, None, seeds=seeds, initial_noise=noise) for _ in range(3)]
        results = [f.result() for f in futures]
    for r in results:
        torch.testing.assert_close(r.combined, sync.combined)

