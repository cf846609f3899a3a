"""AdvantageTracker (C++ statistics) against the Python spec and against hand-written formulas;
state that survives epochs, checkpoints and files."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cxrl.trajectory import AdvantageTracker, TrajectoryFormatError
from cxrl.trajectory.advantages import ReferenceAdvantageTracker
from cxrl.trajectory.extension import _C

HAS_C = _C is not None
PROMPTS = ["no finding", "small left pleural effusion", "cardiomegaly", "AP view, lines and tubes", "ödem"]


@st.composite
def epochs(draw):
    mode = draw(st.sampled_from(["per_prompt", "group", "group_batch"]))
    window = draw(st.integers(1, 8))
    config = dict(mode=mode, window=window, min_count=draw(st.integers(1, window)),
                  clip=draw(st.sampled_from([0.5, 5.0])))
    batches = []
    if mode != "per_prompt":
        config["group_size"] = g = draw(st.integers(1, 4))
    for _ in range(draw(st.integers(1, 4))):
        if mode != "per_prompt":
            prompts = draw(st.lists(st.sampled_from(PROMPTS), min_size=1, max_size=3, unique=True)) * g
        else:
            prompts = draw(st.lists(st.sampled_from(PROMPTS), min_size=1, max_size=12))
        rewards = draw(st.lists(st.floats(-100, 100, allow_nan=False), min_size=len(prompts), max_size=len(prompts)))
        batches.append((prompts, rewards))
    return config, batches


@pytest.mark.skipif(not HAS_C, reason="cxrl._C is not built")
@settings(max_examples=40, deadline=None)
@given(epochs())
def test_cpp_tracker_matches_reference_over_epochs(case):
    config, batches = case
    group_size = config.pop("group_size", None)
    fast, ref = AdvantageTracker(**config, group_size=group_size), ReferenceAdvantageTracker(**config, group_size=group_size)
    assert fast.backend == "cpp"
    for prompts, rewards in batches:
        r = torch.tensor(rewards, dtype=torch.float32)
        a, b = fast.compute(prompts, r), ref.compute(prompts, r)
        assert a.dtype == torch.float32 and a.shape == r.shape
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
        assert float(a.abs().max()) <= config["clip"]
    assert fast.state_dict() == ref.state_dict()


def ddpo_per_prompt(history, prompts, rewards, window, min_count, eps=1e-6):
    """DDPO's PerPromptStatTracker with a window, written independently with numpy."""
    prompts, rewards = np.array(prompts), np.asarray(rewards, dtype=np.float64)
    out = np.empty_like(rewards)
    for p in np.unique(prompts):
        mine = rewards[prompts == p]
        history[p] = (history.get(p, []) + list(mine))[-window:]
        pool = rewards if len(history[p]) < min_count else np.array(history[p])
        out[prompts == p] = (mine - pool.mean()) / (pool.std() + eps)
    return out


@pytest.mark.parametrize("cls", [AdvantageTracker, ReferenceAdvantageTracker])
def test_per_prompt_batch_statistics_until_min_count(cls):
    tracker, history = cls(window=4, min_count=3, clip=100.0), {}
    rng = np.random.default_rng(0)
    for _ in range(5):
        prompts = list(rng.choice(PROMPTS[:3], size=5))
        rewards = rng.normal(size=5) * 3 + 1
        got = tracker.compute(prompts, torch.tensor(rewards))
        np.testing.assert_allclose(got.numpy(), ddpo_per_prompt(history, prompts, rewards, 4, 3), rtol=1e-5, atol=1e-6)
    # by hand: one prompt, min_count 3 -> first call (2 rewards) uses batch stats over all 4 rewards
    t = cls(window=3, min_count=3, clip=100.0)
    a = t.compute(["x", "x", "y", "y"], torch.tensor([0.0, 2.0, 4.0, 6.0]))
    mean, std = 3.0, math.sqrt(5.0)
    torch.testing.assert_close(a, torch.tensor([(0 - mean) / (std + 1e-6), (2 - mean) / (std + 1e-6),
                                                (4 - mean) / (std + 1e-6), (6 - mean) / (std + 1e-6)]))
    # second call: "x" window = [2, 10, 12] (oldest 0 dropped) -> its own statistics
    a = t.compute(["x", "x", "y"], torch.tensor([10.0, 12.0, 8.0]))
    w = np.array([2.0, 10.0, 12.0])
    assert a[0].item() == pytest.approx((10 - w.mean()) / (w.std() + 1e-6), rel=1e-6)
    w_y = np.array([4.0, 6.0, 8.0])
    assert a[2].item() == pytest.approx((8 - w_y.mean()) / (w_y.std() + 1e-6), rel=1e-6)


@pytest.mark.parametrize("cls", [AdvantageTracker, ReferenceAdvantageTracker])
def test_group_mode_formula_clip_and_group_size(cls):
    t = cls(mode="group", group_size=3, clip=1.0)
    r = torch.tensor([1.0, 2.0, 6.0, 5.0, 5.0, 5.0])
    a = t.compute(["a", "a", "a", "b", "b", "b"], r)
    g = np.array([1.0, 2.0, 6.0])
    expect = np.clip((g - g.mean()) / (g.std() + 1e-6), -1, 1)
    np.testing.assert_allclose(a[:3].numpy(), expect, rtol=1e-6)
    assert a[:3].abs().max() == 1.0  # the 6.0 sample is clipped
    assert torch.equal(a[3:], torch.zeros(3))  # zero spread -> zero advantage, not nan
    with pytest.raises(ValueError, match="prompt 'b' has 2 samples in this batch; group mode needs exactly group_size=3"):
        t.compute(["a", "a", "a", "b", "b"], torch.randn(5))


@pytest.mark.parametrize("cls", [AdvantageTracker, ReferenceAdvantageTracker])
def test_group_batch_mode_centres_per_group_and_scales_per_call(cls):
    t = cls(mode="group_batch", group_size=3, clip=5.0)
    r = torch.tensor([1.0, 2.0, 6.0, 10.0, 10.1, 9.9, 0.5, 0.5, 0.5], dtype=torch.float64)
    prompts = ["a", "a", "a", "b", "b", "b", "c", "c", "c"]
    a = t.compute(prompts, r)
    groups = r.numpy().reshape(3, 3)
    centred = (groups - groups.mean(axis=1, keepdims=True)).ravel()   # each prompt against its own mean ...
    np.testing.assert_allclose(a.numpy(), centred / (centred.std() + 1e-6), rtol=1e-6)   # ... one scale for all
    assert torch.equal(a[6:], torch.zeros(3))   # zero spread -> zero advantage
    # what sets it apart from 'group': the nearly flat prompt 'b' stays small instead of being blown up to unit std
    per_group = cls(mode="group", group_size=3).compute(prompts, r)
    assert float(a[3:6].abs().max()) < 0.1
    assert float(per_group[3:6].abs().max()) > 1.0
    # the group size is checked as in 'group', with the same words
    with pytest.raises(ValueError, match="prompt 'b' has 2 samples in this batch; group mode needs exactly group_size=3"):
        t.compute(["a", "a", "a", "b", "b"], torch.randn(5))
    clipped = cls(mode="group_batch", group_size=2, clip=0.5).compute(["a", "a"], torch.tensor([0.0, 1.0]))
    assert torch.equal(clipped, torch.tensor([-0.5, 0.5]))


@pytest.mark.parametrize("cls", [AdvantageTracker, ReferenceAdvantageTracker])
def test_bad_inputs(cls):
    t = cls()
    with pytest.raises(ValueError, match=r"rewards\[2\] is nan"):
        t.compute(["a", "b", "c"], torch.tensor([1.0, 2.0, float("nan")]))
    assert t.prompt_to_id == {}  # a failed call assigns no ids
    with pytest.raises(ValueError, match="3 prompt keys for 2 rewards"):
        t.compute(["a", "b", "c"], torch.zeros(2))
    with pytest.raises(ValueError, match=r"prompt_keys\[1\] is int"):
        t.compute(["a", 3], torch.zeros(2))
    with pytest.raises(ValueError, match="1-D float tensor"):
        t.compute(["a"], torch.zeros(1, dtype=torch.int64))
    t.compute(["a", "b"], torch.zeros(2))
    with pytest.raises(ValueError, match="keyed by prompt texts; got prompt ids"):
        t.compute(torch.tensor([0, 1]), torch.zeros(2))
    for kwargs, match in [(dict(mode="x"), "mode must be"), (dict(window=2, min_count=3), "min_count <= window"),
                          (dict(clip=0.0), "clip must be"), (dict(group_size=0), "group_size must be")]:
        with pytest.raises(ValueError, match=match):
            cls(**kwargs)


@pytest.mark.parametrize("cls", [AdvantageTracker, ReferenceAdvantageTracker])
def test_state_survives_checkpoint_and_file(cls, tmp_path):
    rng = np.random.default_rng(1)
    batches = [(list(rng.choice(PROMPTS, size=6)), torch.tensor(rng.normal(size=6))) for _ in range(4)]
    live = cls(window=5, min_count=2)
    for prompts, r in batches[:2]:
        live.compute(prompts, r)
    torch.save(live.state_dict(), tmp_path / "ckpt.pt")
    resumed = cls(window=5, min_count=2)
    resumed.load_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=True))
    live.save(tmp_path / "tracker.cxrladv")
    from_file = cls.load(tmp_path / "tracker.cxrladv")
    assert resumed.prompt_to_id == live.prompt_to_id == from_file.prompt_to_id
    for prompts, r in batches[2:]:
        expect = live.compute(prompts, r)
        assert torch.equal(resumed.compute(prompts, r), expect) and torch.equal(from_file.compute(prompts, r), expect)
    with pytest.raises(ValueError, match="state has window=5, this tracker 4"):
        cls(window=4, min_count=2).load_state_dict(live.state_dict())
    ids = cls()
    ids.compute(torch.tensor([7, 7, 3]), torch.tensor([1.0, 2.0, 3.0]))
    again = cls()
    again.load_state_dict(ids.state_dict())
    assert again.state_dict() == ids.state_dict() and again.state_dict()["window_keys"] == [3, 7]


def test_tracker_file_corruption_is_rejected(tmp_path):
    t = AdvantageTracker()
    t.compute(["a", "b"], torch.tensor([1.0, 2.0]))
    path = tmp_path / "t.cxrladv"
    t.save(path)
    data = path.read_bytes()
    path.write_bytes(data[:-3])
    with pytest.raises(TrajectoryFormatError, match="truncated"):
        AdvantageTracker.load(path)
    path.write_bytes(data[:-2] + bytes([data[-2] ^ 1]) + data[-1:])
    with pytest.raises(TrajectoryFormatError, match="checksum mismatch"):
        AdvantageTracker.load(path)
    path.write_bytes(b"garbage")
    with pytest.raises(TrajectoryFormatError, match="not a cxrl advantage tracker file"):
        AdvantageTracker.load(path)
    with pytest.raises(FileNotFoundError, match="missing.cxrladv"):
        AdvantageTracker.load(tmp_path / "missing.cxrladv")
