"""Every bad input raises a clear Python exception naming what is wrong -- on every backend, and in
the C++ layer itself when the Python checks are bypassed (never a crash or silent corruption)."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from cxrl.trajectory import TrajectoryStore
from cxrl.trajectory.extension import _C
from cxrl.trajectory.reference import ReferenceTrajectoryStore

HAS_C = _C is not None
BACKENDS = [pytest.param("cpp", marks=pytest.mark.skipif(not HAS_C, reason="no cxrl._C")),
            pytest.param("torch", marks=pytest.mark.skipif(not HAS_C, reason="no cxrl._C")), "reference"]


def store_for(backend, n=4, t=3, shape=(2, 3), k=2, dtype=torch.float32):
    if backend == "reference":
        return ReferenceTrajectoryStore(n, t, shape, k, dtype)
    return TrajectoryStore(n, t, shape, k, dtype, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("call, match", [
    (lambda s: s.write_initial(0, torch.zeros(2, 3, 2)), r"x_T must have shape \[B, 2, 3\]"),
    (lambda s: s.write_initial(0, torch.zeros(2, 2, 3, dtype=torch.float16)), "x_T has dtype torch.float16"),
    (lambda s: s.write_initial(3, torch.zeros(2, 2, 3)), r"rows \[3, 5\) are outside the store's capacity of 4"),
    (lambda s: s.write_initial(-1, torch.zeros(1, 2, 3)), "outside the store's capacity"),
    (lambda s: s.write_initial(True, torch.zeros(1, 2, 3)), "start must be an int"),
    (lambda s: s.write_initial(0, np.zeros((1, 2, 3), np.float32)), "x_T must be a torch.Tensor"),
    (lambda s: s.write_step(3, 0, torch.zeros(2, 2, 3), torch.zeros(2), 5), r"step 3 is outside \[0, 3\)"),
    (lambda s: s.write_step(-1, 0, torch.zeros(2, 2, 3), torch.zeros(2), 5), "step -1 is outside"),
    (lambda s: s.write_step(0, 0, torch.zeros(2, 2, 3), torch.zeros(3), 5), r"log_prob must have shape \[2\]"),
    (lambda s: s.write_step(0, 0, torch.zeros(2, 2, 3), torch.zeros(2, dtype=torch.int64), 5), "log_prob must be a floating-point"),
    (lambda s: s.write_step(0, 0, torch.zeros(2, 2, 3), torch.zeros(2), torch.zeros(2)), "timestep must be a integer"),
    (lambda s: s.write_step(0, 0, torch.zeros(2, 2, 3), torch.zeros(2), 2.5), "timestep must be an int"),
    (lambda s: s.write_step(0, 3, torch.zeros(2, 2, 3), torch.zeros(2), 5), "capacity of 4"),
    (lambda s: s.write_prompt_ids(0, torch.zeros(2)), "ids must be a integer"),
    (lambda s: s.write_prompt_ids(0, torch.zeros(2, 1, dtype=torch.int64)), r"ids must have shape \[B\]"),
    (lambda s: s.write_rewards(0, torch.tensor([[1.0, float("nan")]])), r"rewards\[0, 1\] is nan"),
    (lambda s: s.write_rewards(0, torch.tensor([[1.0, float("inf")]])), "must be finite"),
    (lambda s: s.write_rewards(0, torch.zeros(2, 3)), r"rewards must be a float tensor \[B, 2\]"),
    (lambda s: s.write_rewards(0, torch.zeros(2, 2, dtype=torch.int64)), "rewards must be a float tensor"),
    (lambda s: s.write_advantages(2, torch.zeros(3)), "capacity of 4"),
    (lambda s: s.write_advantages(0, torch.tensor([float("nan")])), "must be finite"),
    (lambda s: s.plan(0), "batch_size must be a positive int"),
    (lambda s: s.plan(2, timestep_fraction=0.0), r"timestep_fraction must be in \(0, 1\]"),
    (lambda s: s.plan(2, timestep_fraction=1.5), "timestep_fraction"),
    (lambda s: s.plan(2, seed=-1), r"seed must be an int in \[0, 2\*\*64\)"),
    (lambda s: next(iter(s.minibatches("plan"))), "plan must come from store.plan()"),
    (lambda s: next(iter(s.minibatches(ReferenceTrajectoryStore(5, 3, (1,)).plan(2)))), "the plan is for 5 samples"),
])
def test_bad_input_is_a_clear_error(backend, call, match):
    store = store_for(backend)
    before = {name: getattr(store, name).clone() for name in ("latents", "log_probs", "rewards", "advantages")}
    with pytest.raises(ValueError, match=match):
        call(store)
    for name, value in before.items():  # nothing was written by the failed call
        assert torch.equal(getattr(store, name), value), name


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_samples=0), "num_samples must be >= 1"),
    (dict(num_steps=0), "num_steps must be >= 1"),
    (dict(num_rewards=0), "num_rewards must be >= 1"),
    (dict(latent_shape=(4, 0)), "latent_shape must have 1 to 8 positive"),
    (dict(latent_shape=4), "latent_shape must be a tuple"),
    (dict(latent_shape=(1,) * 9), "1 to 8"),
    (dict(dtype=torch.int32), "dtype must be one of"),
    (dict(num_samples=2.5), "num_samples must be an int"),
    (dict(backend="gpu"), "backend must be"),
])
def test_bad_config_is_a_clear_error(kwargs, match):
    args = dict(num_samples=2, num_steps=2, latent_shape=(1,), num_rewards=1) | kwargs
    with pytest.raises(ValueError, match=match):
        TrajectoryStore(**args)


@pytest.mark.skipif(not HAS_C, reason="no cxrl._C")
def test_cpp_layer_checks_its_own_inputs():
    arena = _C.TrajectoryArena(4, 3, [2, 3], 1, 1)
    ok = np.zeros((2, 2, 3), np.float32)
    with pytest.raises(IndexError, match="outside the store's capacity of 4"):
        arena.write_latents(3, 0, ok)
    with pytest.raises(IndexError, match="latent slot 4"):
        arena.write_latents(0, 4, ok)
    with pytest.raises(ValueError, match="dimension 2 is 2, expected 3"):
        arena.write_latents(0, 0, np.zeros((2, 2, 2), np.float32))
    with pytest.raises(ValueError, match="element size 8"):
        arena.write_latents(0, 0, np.zeros((2, 2, 3), np.float64))
    with pytest.raises(ValueError, match="C-contiguous"):
        arena.write_latents(0, 0, np.zeros((2, 3, 2), np.float32).transpose(0, 2, 1))
    with pytest.raises(ValueError, match="expected floating-point"):
        arena.write_step_scalars(0, 0, np.zeros(2, np.int32), np.zeros(2, np.int64))
    with pytest.raises(ValueError, match="unknown latent dtype code 9"):
        _C.TrajectoryArena(4, 3, [2], 1, 9)
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        _C.TrajectoryArena(0, 3, [2], 1, 1)
    with pytest.raises(ValueError, match="overflows"):
        _C.TrajectoryArena(2**40, 2**20, [2**20], 1, 1)
    stage = [np.zeros((2, 2, 3), np.float32), np.zeros((2, 2, 3), np.float32), np.zeros(2, np.int64),
             np.zeros(2, np.float32), np.zeros(2, np.float32), np.zeros(2, np.int64)]
    with pytest.raises(IndexError, match=r"plan entry 1 = \(sample 4, step 0\)"):
        arena.gather(np.array([0, 4]), np.array([0, 0]), 0, 2, *stage)
    with pytest.raises(IndexError, match=r"step 3\)"):
        arena.gather(np.array([0, 1]), np.array([0, 3]), 0, 2, *stage)
    with pytest.raises(IndexError, match="outside the plan's 2 entries"):
        arena.gather(np.array([0, 1]), np.array([0, 0]), 0, 3, *stage)
    with pytest.raises(ValueError, match="x_t staging: dimension 0 is 1, needs at least 2"):
        arena.gather(np.array([0, 1]), np.array([0, 0]), 0, 2, np.zeros((1, 2, 3), np.float32), *stage[1:])
    with pytest.raises(ValueError, match="read-only"):
        ro = np.zeros((2, 2, 3), np.float32)
        ro.flags.writeable = False
        arena.gather(np.array([0, 1]), np.array([0, 0]), 0, 2, ro, *stage[1:])
    with pytest.raises(ValueError, match="trained_steps must be in"):
        _C.build_plan(4, 3, 2, 4, 0)


@pytest.mark.skipif(not HAS_C, reason="no cxrl._C")
def test_cpp_backend_refuses_a_gpu_device():
    with pytest.raises(ValueError, match="needs backend='torch'"):
        TrajectoryStore(2, 2, (1,), device="meta", backend="cpp")


def test_missing_extension_falls_back_to_reference_and_says_so():
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'cxrl._C': raise ImportError('No module named cxrl._C (blocked by test)')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import torch, cxrl\n"
        "from cxrl.trajectory import TrajectoryStore, AdvantageTracker\n"
        "s = TrajectoryStore(2, 2, (1,)); t = AdvantageTracker()\n"
        "r = cxrl.backend_report()\n"
        "print(s.backend, t.backend, r['cpp_store']['active'], r['choices']['trajectory_store'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    backend, tracker, active, choice = out.stdout.split(" ", 3)
    assert (backend, tracker, active) == ("reference", "reference", "False")
    assert "could not be imported" in choice
