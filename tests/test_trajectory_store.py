"""The C++ store (and the torch-tensor backend) against the pure-Python spec: writes, views, plans,
gathers. Random schedules, odd shapes and every latent dtype."""
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cxrl
from cxrl import trajectory
from cxrl.trajectory import TrajectoryStore, num_trained_steps
from cxrl.trajectory_reference import ReferenceTrajectoryStore, reference_plan

pytestmark = pytest.mark.skipif(trajectory._C is None, reason="cxrl._C is not built")

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SECTIONS = ("latents", "log_probs", "timesteps", "prompt_ids", "rewards", "advantages")


def make_stores(n, t, shape, k, dtype):
    return [TrajectoryStore(n, t, shape, k, dtype), TrajectoryStore(n, t, shape, k, dtype, backend="torch"),
            ReferenceTrajectoryStore(n, t, shape, k, dtype)]


def fill(stores, n, t, shape, k, dtype, splits, gen):
    """Write one epoch in batches of the given sizes (a rollout schedule); returns what was written."""
    written = {"latents": torch.randn((n, t + 1, *shape), generator=gen).to(dtype),
               "log_probs": torch.randn((n, t), generator=gen), "timesteps": torch.randint(0, 1000, (n, t), generator=gen),
               "prompt_ids": torch.randint(-5, 50, (n,), generator=gen), "rewards": torch.randn((n, k), generator=gen),
               "advantages": torch.randn((n,), generator=gen)}
    start = 0
    for b in splits:
        rows = slice(start, start + b)
        for s in stores:
            s.write_initial(start, written["latents"][rows, 0].clone())
            for step in range(t):
                ts = written["timesteps"][rows, step]
                if b > 1 and bool((ts == ts[0]).all()):
                    ts = int(ts[0])  # exercise the int form too
                s.write_step(step, start, written["latents"][rows, step + 1].clone(),
                             written["log_probs"][rows, step].double(), ts)
            s.write_prompt_ids(start, written["prompt_ids"][rows])
            s.write_rewards(start, written["rewards"][rows])
            s.write_advantages(start, written["advantages"][rows])
        start += b
    return written


@st.composite
def schedules(draw):
    n = draw(st.integers(1, 9))
    t = draw(st.integers(1, 6))
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=3)))
    k = draw(st.integers(1, 3))
    dtype = draw(st.sampled_from(DTYPES))
    splits, left = [], n
    while left:
        splits.append(draw(st.integers(1, left)))
        left -= splits[-1]
    return n, t, shape, k, dtype, splits, draw(st.integers(0, 2**32))


@SETTINGS
@given(schedules())
def test_batched_writes_match_reference_and_inputs(case):
    n, t, shape, k, dtype, splits, seed = case
    stores = make_stores(n, t, shape, k, dtype)
    written = fill(stores, n, t, shape, k, dtype, splits, torch.Generator().manual_seed(seed))
    for s in stores:
        assert s.latents.shape == (n, t + 1, *shape) and s.latents.dtype == dtype
        for name in SECTIONS:
            assert torch.equal(getattr(s, name), written[name].to(getattr(s, name).dtype)), (s.backend, name)


@SETTINGS
@given(schedules(), st.integers(1, 10), st.sampled_from([1.0, 0.5, 0.34, 0.1]), st.integers(0, 2**64 - 1))
def test_gathers_equal_direct_indexing(case, batch_size, fraction, plan_seed):
    n, t, shape, k, dtype, splits, seed = case
    stores = make_stores(n, t, shape, k, dtype)
    fill(stores, n, t, shape, k, dtype, splits, torch.Generator().manual_seed(seed))
    ref = stores[-1]
    for s in stores:
        plan = s.plan(batch_size, fraction, seed=plan_seed)
        count = 0
        for m, mb in enumerate(s.minibatches(plan)):
            i, j = mb.sample_idx, mb.step_idx
            assert torch.equal(mb.x_t, ref.latents[i, j]) and torch.equal(mb.x_prev, ref.latents[i, j + 1])
            assert torch.equal(mb.timesteps, ref.timesteps[i, j]) and torch.equal(mb.log_probs, ref.log_probs[i, j])
            assert torch.equal(mb.advantages, ref.advantages[i]) and torch.equal(mb.prompt_ids, ref.prompt_ids[i])
            single = s.gather(plan, m)
            assert torch.equal(single.x_prev, ref.latents[i, j + 1])
            count += 1
        assert count == len(plan)


@SETTINGS
@given(st.integers(1, 40), st.integers(1, 30), st.integers(1, 50), st.floats(0.01, 1.0), st.integers(0, 2**64 - 1))
def test_plan_properties_and_cpp_equals_reference(n, t, batch_size, fraction, seed):
    store = TrajectoryStore(n, t, (1,), 1)
    plan = store.plan(batch_size, fraction, seed)
    trained = num_trained_steps(t, fraction)
    assert plan.trained_steps == trained == max(1, math.ceil(round(t * fraction, 9)))
    ref = reference_plan(n, t, batch_size, trained, seed)
    assert all(torch.equal(a, b) for a, b in zip((plan.sample_idx, plan.step_idx, plan.offsets), ref))
    # every sample appears with exactly `trained` distinct steps, each (sample, step) exactly once
    pairs = list(zip(plan.sample_idx.tolist(), plan.step_idx.tolist()))
    assert len(pairs) == len(set(pairs)) == n * trained
    assert sorted({s for s, _ in pairs}) == list(range(n))
    assert all(0 <= j < t for _, j in pairs)
    # minibatches: sample batches outer (same samples for `trained` consecutive minibatches), steps inner
    sizes = (plan.offsets[1:] - plan.offsets[:-1]).tolist()
    assert len(plan) == math.ceil(n / batch_size) * trained
    assert all(sz == batch_size for sz in sizes[:-trained]) and all(1 <= sz <= batch_size for sz in sizes)
    for b in range(0, len(plan), trained):
        lo, hi = plan.bounds(b)
        first = plan.sample_idx[lo:hi]
        for m in range(b, b + trained):
            assert torch.equal(plan.sample_idx[slice(*plan.bounds(m))], first)
    again = store.plan(batch_size, fraction, seed)
    assert torch.equal(again.sample_idx, plan.sample_idx) and torch.equal(again.step_idx, plan.step_idx)


def test_plan_is_shuffled_and_seed_dependent():
    store = TrajectoryStore(32, 20, (1,), 1)
    a, b = store.plan(8, seed=0), store.plan(8, seed=1)
    assert not torch.equal(a.sample_idx, b.sample_idx)
    assert not torch.equal(a.sample_idx[:32], torch.arange(32))  # samples are shuffled
    # each sample gets its own permutation of steps (DDPO), not one shared order
    first_steps = {}
    for s, j in zip(a.sample_idx[:8 * 20].tolist(), a.step_idx[:8 * 20].tolist()):
        first_steps.setdefault(s, j)
    assert len(set(first_steps.values())) > 1


def test_num_trained_steps_is_immune_to_float_noise():
    assert num_trained_steps(50, 0.3) == 15  # 50 * 0.3 == 15.000000000000002
    assert num_trained_steps(50, 1.0) == 50 and num_trained_steps(50, 1e-6) == 1 and num_trained_steps(7, 0.5) == 4


def test_views_are_zero_copy_and_threaded_gather_matches():
    # 256 rows x 32 KiB: the batched write (8 MiB) and the gather (2 x 8 MiB) both cross the C++
    # multi-thread threshold (kParallelCopyBytes, 8 MiB), so the threaded paths are the ones compared
    shape, n = (8, 32, 32), 256
    store = TrajectoryStore(n, 2, shape, 1, threads=4)
    assert store.latents.data_ptr() == store._arena.data_ptr  # the view is the arena
    x = torch.randn(n, *shape)
    store.write_step(1, 0, x, torch.randn(n), 7)  # threaded batched write
    assert torch.equal(store.latents[:, 2], x)
    store.latents.copy_(torch.randn(store.latents.shape))  # writing through the view is visible to C++
    store.advantages.copy_(torch.randn(n))
    one = TrajectoryStore(n, 2, shape, 1, threads=1)
    one.latents.copy_(store.latents)
    one.advantages.copy_(store.advantages)
    plan = store.plan(n, seed=5)
    for a, b in zip(store.minibatches(plan), one.minibatches(plan)):
        assert torch.equal(a.x_t, b.x_t) and torch.equal(a.x_prev, b.x_prev)
        assert torch.equal(a.x_t, store.latents[a.sample_idx, a.step_idx])
        assert torch.equal(a.x_prev, store.latents[a.sample_idx, a.step_idx + 1])
        assert torch.equal(a.advantages, store.advantages[a.sample_idx])


def test_minibatches_to_device_and_staging_reuse():
    store = TrajectoryStore(6, 2, (3,), 1)
    store.latents.copy_(torch.randn(store.latents.shape))
    plan = store.plan(3, seed=1)
    kept = [mb.x_t.clone() for mb in store.minibatches(plan, device="cpu")]
    for mb, x in zip(store.minibatches(plan), kept):
        assert torch.equal(mb.x_t, x)


def test_backend_choice_is_recorded():
    TrajectoryStore(2, 2, (1,), 1)
    assert cxrl.backend_report()["choices"]["trajectory_store"].startswith("cpp")
    assert cxrl.backend_report()["cpp_store"]["active"]
