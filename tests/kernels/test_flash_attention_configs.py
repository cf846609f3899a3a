"""Flash-attention launch settings: autotune configs pruned to the device's shared memory, the head dim
as a compile-time constant, and TF32 only when torch allows it.

The pruning is plain Python and is checked for the limits of an H200, an A100 and a consumer GPU. The
compile tests build the kernels for Hopper (sm_90) with Triton's bundled compiler, no GPU needed, and
compare the compiler's shared-memory use with the estimate the pruning relies on.
"""
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

if os.environ.get("CXRL_TEST_GPU") != "1" or not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before the first triton import, as tests/conftest.py
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"

triton = pytest.importorskip("triton")

from cxrl.kernels import flash_attention_common as common  # noqa: E402

fa = importlib.import_module("cxrl.kernels.flash_attention")  # the module: the package re-exports the function
fb = importlib.import_module("cxrl.kernels.flash_attention_bwd")

REPO = Path(__file__).resolve().parents[2]
# per-block opt-in limits (cudaDevAttrMaxSharedMemoryPerBlockOptin)
LIMITS = {"H200": 232448, "A100": 166912, "consumer (sm_86/89)": 101376}
HEAD_DIMS = [40, 64, 80, 128, 160, 256]
ELEM_SIZES = {"fp16": 2, "fp32": 4}


@pytest.mark.parametrize("kernel", common.KERNELS)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("dtype", ELEM_SIZES)
@pytest.mark.parametrize("device", LIMITS)
def test_every_tier_keeps_a_config_that_fits(kernel, head_dim, dtype, device):
    block = common.block_d(head_dim)
    kept = common.fitting_configs(kernel, block, ELEM_SIZES[dtype], LIMITS[device])
    assert kept
    for m, n, _, stages in kept:
        assert common.shared_memory_bytes(kernel, m, n, block, stages, ELEM_SIZES[dtype]) <= LIMITS[device]


@pytest.mark.parametrize("kernel", common.KERNELS)
@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_bigger_devices_keep_more_configs(kernel, head_dim):
    for size in ELEM_SIZES.values():
        h200, a100, small = (set(common.fitting_configs(kernel, head_dim, size, LIMITS[d])) for d in LIMITS)
        assert small <= a100 <= h200
    # fp16 at D <= 128 keeps the whole tier on an H200; fp32 at D = 256 on a consumer GPU only the small tile
    table = common.FWD_CONFIGS if kernel == "fwd" else common.BWD_CONFIGS
    if head_dim <= 128:
        assert common.fitting_configs(kernel, head_dim, 2, LIMITS["H200"]) == table[head_dim]
    else:
        assert common.fitting_configs(kernel, 256, 4, LIMITS["consumer (sm_86/89)"]) == [table[256][-1]]


def test_a_device_below_every_estimate_still_gets_the_smallest_config():
    for kernel in common.KERNELS:
        table = common.FWD_CONFIGS if kernel == "fwd" else common.BWD_CONFIGS
        kept = common.fitting_configs(kernel, 256, 4, limit_bytes=1024)
        smallest = min(table[256], key=lambda c: common.shared_memory_bytes(kernel, c[0], c[1], 256, c[3], 4))
        assert kept == [smallest]


def test_shared_memory_estimate_counts_resident_streamed_and_score_tiles():
    # forward, 128 x 64 tiles, D 64, 3 stages, fp16: Q once, K and V per stage, P once
    assert common.shared_memory_bytes("fwd", 128, 64, 64, 3, 2) == 2 * (128 * 64 + 3 * 2 * 64 * 64 + 128 * 64)
    # dK/dV keeps K, V; streams Q, dO; P^T and dS^T. dQ keeps Q, dO; streams K, V; dS
    dkdv = 4 * (2 * 64 * 128 + 2 * 2 * 32 * 128 + 2 * 32 * 64)
    assert common.shared_memory_bytes("bwd_dkdv", 32, 64, 128, 2, 4) == dkdv
    assert common.shared_memory_bytes("bwd_dq", 32, 64, 128, 2, 4) == 4 * (2 * 32 * 128 + 2 * 2 * 64 * 128 + 32 * 64)
    with pytest.raises(ValueError, match="kernel must be one of"):
        common.shared_memory_bytes("bwd", 32, 32, 64, 1, 2)


@pytest.mark.parametrize("kernel_name", common.KERNELS)
def test_autotuner_prune_hook_keeps_exactly_the_fitting_configs(kernel_name, monkeypatch):
    tuned = {"fwd": fa._attn_fwd_tuned, "bwd_dkdv": fb._attn_bwd_dkdv_tuned,
             "bwd_dq": fb._attn_bwd_dq_tuned}[kernel_name]
    monkeypatch.setattr(common, "device_shared_memory", lambda device: LIMITS["A100"])
    q = torch.empty(1, 1, 4, 80, dtype=torch.float32)
    pruned = tuned.early_config_prune(tuned.configs, {"Q": q}, BLOCK_D=128)
    as_tuples = sorted((c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) for c in pruned)
    assert as_tuples == sorted(common.fitting_configs(kernel_name, 128, 4, LIMITS["A100"]))


class LaunchSpy:
    """Wraps a @triton.jit kernel: records each launch's keyword arguments, then launches it."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.append(kwargs)
            return self.kernel[grid](*args, **kwargs)
        return launch


@pytest.mark.skipif(not INTERPRETED, reason="spies on the interpreter's plain kernels")
@pytest.mark.parametrize("allow_tf32", [True, False])
def test_tf32_reaches_every_kernel_only_when_torch_allows_it(allow_tf32, monkeypatch):
    spies = {"fwd": LaunchSpy(fa._attn_fwd_kernel), "dkdv": LaunchSpy(fb._attn_bwd_dkdv_kernel),
             "dq": LaunchSpy(fb._attn_bwd_dq_kernel)}
    monkeypatch.setattr(fa, "_attn_fwd_kernel", spies["fwd"])
    monkeypatch.setattr(fb, "_attn_bwd_dkdv_kernel", spies["dkdv"])
    monkeypatch.setattr(fb, "_attn_bwd_dq_kernel", spies["dq"])
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    try:
        for dtype, expected in ((torch.float32, "tf32" if allow_tf32 else "ieee"), (torch.float16, "ieee")):
            q = torch.randn(1, 1, 5, 40, dtype=dtype, requires_grad=True)
            assert fa.forward_launch_settings(q) == {"HEAD_DIM": 40, "BLOCK_D": 64, "DOT_PRECISION": expected}
            fa.flash_attention(q, q, q).sum().backward()
            for name, spy in spies.items():
                assert spy.launches[-1]["DOT_PRECISION"] == expected, (name, dtype)
                assert (spy.launches[-1]["HEAD_DIM"], spy.launches[-1]["BLOCK_D"]) == (40, 64), name
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


# ----------------------------------------------------------------------------------------------
# compiled for Hopper on this machine (no GPU): shared memory and the head-dim masks
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hopper_builds():
    """compile_for_hopper.py's report, run in a subprocess: this process's kernels are interpreted ones."""
    if importlib.util.find_spec("triton.backends.nvidia") is None:
        pytest.skip("triton's nvidia backend is not installed")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + sys.path)
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("compile_for_hopper.py"))], env=env,
                          capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return {(r["kernel"], r["head_dim"]): r for r in json.loads(done.stdout.splitlines()[-1])}


@pytest.mark.parametrize("head_dim", [40, 64])
@pytest.mark.parametrize("kernel", common.KERNELS)
def test_hopper_build_masks_the_head_dim_only_when_padded_and_fits_the_estimate(hopper_builds, kernel, head_dim):
    build = hopper_builds[(kernel, head_dim)]
    if head_dim == 64:  # power of two: the loads carry the sequence masks only
        assert not build["head_dim_mask"] and not build["compares_with_40"]
    else:  # padded: a compile-time column mask against the constant 40
        assert build["head_dim_mask"] and build["compares_with_40"]
    m, n, _, stages = build["config"]
    assert build["shared_bytes"] <= common.shared_memory_bytes(kernel, m, n, 64, stages, 2)
    assert build["wgmma"]  # Hopper's warpgroup matrix instructions, not the sm_80 mma path
