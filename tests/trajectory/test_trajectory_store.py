"""The C++ store (and the torch-tensor backend) against the pure-Python spec: writes, views, plans,
gathers. Random schedules, odd shapes and every latent dtype."""
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cxrl
from cxrl.trajectory import CppTrajectoryStore, TorchTrajectoryStore, TrajectoryStore
from cxrl.trajectory.extension import _C
from cxrl.trajectory.plan import num_trained_steps, reference_plan
from cxrl.trajectory.reference import ReferenceTrajectoryStore

pytestmark = pytest.mark.skipif(_C is None, reason="cxrl._C is not built")

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


@SETTINGS
@given(st.integers(1, 20), st.integers(2, 12), st.integers(1, 8), st.floats(0.05, 1.0), st.integers(0, 2**64 - 1), st.data())
def test_a_step_window_plans_only_its_steps_on_every_backend(n, t, batch_size, fraction, seed, data):
    first = data.draw(st.integers(0, t - 1))
    end = data.draw(st.integers(first + 1, t))
    trained = num_trained_steps(end - first, fraction)
    ref = reference_plan(n, end - first, batch_size, trained, seed)
    for store in make_stores(n, t, (1,), 1, torch.float32):
        plan = store.plan(batch_size, fraction, seed, steps=(first, end))
        assert plan.trained_steps == trained and plan.num_steps == t
        # the window's plan is the plan of a trajectory of end - first steps, shifted to start at `first`
        assert torch.equal(plan.sample_idx, ref[0]) and torch.equal(plan.step_idx, ref[1] + first)
        assert torch.equal(plan.offsets, ref[2])
        assert all(first <= j < end for j in plan.step_idx.tolist())


@pytest.mark.parametrize("steps", [(2, 2), (3, 1), (-1, 2), (0, 5), (1.0, 2)])
def test_a_step_window_outside_the_trajectory_is_refused(steps):
    store = TrajectoryStore(3, 4, (1,), 1)
    with pytest.raises(ValueError, match="trained steps"):
        store.plan(2, 1.0, 0, steps=steps)


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


class FakeStream:
    """Stands in for a GPU stream on the CPU: an asynchronous copy is only queued, and reads its source
    when an event recorded after it is synchronized -- as a DMA engine may read a pinned buffer long
    after ``.to(non_blocking=True)`` returned. ``honest=False`` gives events that do not wait."""

    def __init__(self, honest: bool = True):
        self.honest, self.copies, self.done, self.log = honest, [], 0, []

    def copy(self, src: torch.Tensor) -> torch.Tensor:
        dst = torch.full_like(src, -1)
        self.copies.append((dst, src))
        return dst

    def event(self):
        return FakeEvent(self)

    def complete(self, upto: int) -> None:
        """Run the queued copies in order up to position ``upto`` (a stream is FIFO)."""
        for dst, src in self.copies[self.done:upto]:
            dst.copy_(src)
        self.done = max(self.done, upto)

    def finish(self) -> None:
        self.complete(len(self.copies))


class FakeEvent:
    def __init__(self, stream: FakeStream):
        self.stream, self.position = stream, 0

    def record(self) -> None:
        self.position = len(self.stream.copies)
        self.stream.log.append("record")

    def synchronize(self) -> None:
        if self.stream.honest:
            self.stream.complete(self.position)
        self.stream.log.append("sync")


def filled_pair(n=7, t=3, shape=(2, 3), seed=0):
    store, ref = TrajectoryStore(n, t, shape, 1, backend="cpp"), ReferenceTrajectoryStore(n, t, shape, 1)
    fill([store, ref], n, t, shape, 1, torch.float32, [n], torch.Generator().manual_seed(seed))
    return store, ref


def assert_equals_reference(mb, ref):
    i, j = mb.sample_idx, mb.step_idx
    assert torch.equal(mb.x_t, ref.latents[i, j]) and torch.equal(mb.x_prev, ref.latents[i, j + 1])
    assert torch.equal(mb.timesteps, ref.timesteps[i, j]) and torch.equal(mb.log_probs, ref.log_probs[i, j])
    assert torch.equal(mb.advantages, ref.advantages[i]) and torch.equal(mb.prompt_ids, ref.prompt_ids[i])


def logging_gathers(store, stream, monkeypatch):
    real = store.gather

    def gather(plan, m):
        mb = real(plan, m)
        stream.log.append("gather")
        return mb

    monkeypatch.setattr(store, "gather", gather)


def test_async_copies_finish_before_the_staging_buffer_is_rewritten(monkeypatch):
    store, ref = filled_pair()
    plan = store.plan(2, seed=4)  # 4 sample batches x 3 steps, the last batch short
    stream = FakeStream()
    logging_gathers(store, stream, monkeypatch)
    moved = list(store.copied_out(plan, stream.copy, stream.event))
    store._staging.wait()  # the last copy is waited for by the next gather; finish it here
    assert stream.log == ["gather", "record"] + ["sync", "gather", "record"] * (len(plan) - 1) + ["sync"]
    assert len(moved) == len(plan) == 12
    for mb in moved:  # each copy read its own minibatch, not a later one written over it
        assert_equals_reference(mb, ref)

    # the same harness catches a protocol that does not wait: late copies read later minibatches
    lying = FakeStream(honest=False)
    early = list(store.copied_out(plan, lying.copy, lying.event))
    lying.finish()
    wrong = [m for m, mb in enumerate(early) if not torch.equal(mb.x_t, ref.latents[mb.sample_idx, mb.step_idx])]
    assert wrong == list(range(len(plan) - 1))  # every minibatch but the last was overwritten


def test_a_gather_after_leaving_the_loop_still_waits_for_the_copy(monkeypatch):
    store, ref = filled_pair(seed=1)
    plan = store.plan(3, seed=2)
    stream = FakeStream()
    first = next(iter(store.copied_out(plan, stream.copy, stream.event)))  # consumer stops after one minibatch
    other = store.gather(plan, len(plan) - 1)  # reuses the staging buffer while the copy is in flight
    assert stream.log == ["record", "sync"]
    assert_equals_reference(first, ref)
    assert_equals_reference(other, ref)


def test_minibatches_to_the_cpu_are_staging_views_overwritten_by_the_next_gather():
    store, ref = filled_pair(seed=2)
    plan = store.plan(3, seed=1)
    views = []
    for mb in store.minibatches(plan, device="cpu"):
        assert_equals_reference(mb, ref)  # correct while it is the current minibatch
        views.append(mb)
    assert len({mb.x_t.data_ptr() for mb in views}) == 1  # one buffer, reused (documented in Minibatch)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend, pin", [("cpp", True), ("cpp", False), ("torch", None)])
def test_minibatches_to_cuda_equal_the_reference(backend, pin):
    n, t, shape = 96, 4, (4, 32, 32)  # 16 KiB latents: copies long enough for a missing wait to show
    store = TrajectoryStore(n, t, shape, 1, device="cuda" if backend == "torch" else "cpu", backend=backend, pin=pin)
    ref = ReferenceTrajectoryStore(n, t, shape, 1)
    fill([store, ref], n, t, shape, 1, torch.float32, [40, n - 40], torch.Generator().manual_seed(3))
    if backend == "cpp":
        assert store.pinned == pin
    plan = store.plan(8, 0.5, seed=7)
    moved = list(store.minibatches(plan, device="cuda"))  # all kept: each must survive the later gathers
    torch.cuda.synchronize()
    assert len(moved) == len(plan)
    for mb in moved:
        assert mb.x_t.is_cuda and mb.advantages.is_cuda
        assert_equals_reference(mb.to(torch.device("cpu")), ref)
    if backend == "torch":
        for mb in store.minibatches(plan, device="cpu"):
            assert_equals_reference(mb, ref)


@pytest.mark.parametrize("device, backend, cls", [
    ("cpu", None, CppTrajectoryStore), ("meta", None, TorchTrajectoryStore), ("cpu", "cpp", CppTrajectoryStore),
    ("cpu", "torch", TorchTrajectoryStore), ("cpu", "reference", ReferenceTrajectoryStore),
])
def test_constructor_and_load_return_the_chosen_backend(tmp_path, device, backend, cls):
    store = TrajectoryStore(3, 2, (2,), 1, device=device, backend=backend)
    assert type(store) is cls and isinstance(store, TrajectoryStore) and store.backend == cls.backend
    if device == "cpu":
        store.latents.copy_(torch.randn(store.latents.shape))
        store.save(tmp_path / "s.cxrl")
        loaded = TrajectoryStore.load(tmp_path / "s.cxrl", backend=backend)
        assert type(loaded) is cls and torch.equal(loaded.latents, store.latents)
        assert type(cls.load(tmp_path / "s.cxrl")) is cls
    with pytest.raises(ValueError, match=f"is the '{cls.backend}' backend; got backend='nope'"):
        cls(3, 2, (2,), backend="nope")


def test_backend_choice_is_recorded():
    TrajectoryStore(2, 2, (1,), 1)
    assert cxrl.backend_report()["choices"]["trajectory_store"].startswith("cpp")
    assert cxrl.backend_report()["cpp_store"]["active"]
