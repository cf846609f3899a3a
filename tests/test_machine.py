"""The machine yardstick: a real measurement (positive, finite, of the right order for a CPU core), that leaves
the caller's thread count as it found it."""
import math

import pytest
import torch

from cxrl.machine import matmul_tflops, yardstick


def test_matmul_yardstick_measures_and_restores_threads():
    before = torch.get_num_threads()
    small = matmul_tflops(size=256, repeats=3)
    assert math.isfinite(small) and 1e-4 < small < 50          # one CPU core: 0.01-5 TFLOP/s in practice
    assert torch.get_num_threads() == before
    record = yardstick()
    assert record["matmul_fp32_1024_1thread_tflops"] > 0 and record["torch"] == torch.__version__
    assert "device" not in yardstick("cpu")   # a CPU run names no accelerator


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the GPU suite's demo step runs it)")
def test_yardstick_names_the_gpu_of_a_cuda_run():
    assert yardstick("cuda")["device"] == torch.cuda.get_device_name(0)


def test_auto_threads_leave_a_core_to_the_scoring_thread_and_share_cores_between_ranks(monkeypatch):
    from cxrl import machine

    monkeypatch.setattr(machine.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert machine.auto_threads("cpu") == 8
    assert machine.auto_threads("cpu", scoring_thread=True) == 7
    assert machine.auto_threads("cpu", world_size=2, scoring_thread=True) == 3
    assert machine.auto_threads("cpu", world_size=16, scoring_thread=True) == 1
    assert machine.auto_threads("cuda", scoring_thread=True) is None


def test_intra_op_threads_sets_then_restores_even_on_error():
    from cxrl.machine import intra_op_threads

    before = torch.get_num_threads()
    target = 2 if before != 2 else 1
    with intra_op_threads(target):
        assert torch.get_num_threads() == target
    assert torch.get_num_threads() == before
    try:
        with intra_op_threads(target):
            raise KeyError("boom")
    except KeyError:
        pass
    assert torch.get_num_threads() == before
    with intra_op_threads(0):   # 0: leave the setting alone
        assert torch.get_num_threads() == before


def _spin_setting_after_cli_import(env_extra: dict) -> tuple[str, str]:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    env.update(env_extra)
    code = ("import os, sys, cxrl.cli; "
            "print(os.environ.get('GOMP_SPINCOUNT', '-'), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    spin, torch_loaded = out.stdout.split()
    return spin, torch_loaded


def test_cli_shortens_the_openmp_spin_before_torch_loads_and_keeps_the_users_choice():
    from cxrl.cli import OPENMP_SPIN_COUNT

    # set before torch is imported: libgomp reads it once, when torch loads it
    assert _spin_setting_after_cli_import({}) == (OPENMP_SPIN_COUNT, "False")
    assert _spin_setting_after_cli_import({"GOMP_SPINCOUNT": "123"}) == ("123", "False")
    assert _spin_setting_after_cli_import({"OMP_WAIT_POLICY": "PASSIVE"}) == ("-", "False")


def test_map_batches_keeps_order_grad_mode_and_threads_and_raises():
    import threading

    from cxrl.machine import map_batches

    before = torch.get_num_threads()
    seen = []

    def job(k):
        seen.append((threading.get_ident(), torch.get_num_threads(), torch.is_grad_enabled()))
        return k * k

    with torch.no_grad():
        assert map_batches(job, range(7), workers=2) == [k * k for k in range(7)]
    assert {threads for _, threads, _ in seen} == {1} and not any(grad for *_, grad in seen)
    assert threading.get_ident() not in {ident for ident, *_ in seen}
    assert torch.get_num_threads() == before
    seen.clear()
    assert map_batches(job, range(3), workers=0) == [0, 1, 4]   # inline: the caller's thread and settings
    assert {ident for ident, *_ in seen} == {threading.get_ident()} and all(grad for *_, grad in seen)
    assert map_batches(job, range(3), workers=4, device_type="cuda") == [0, 1, 4]
    seen.clear()
    assert map_batches(job, [5], workers=2) == [25]                # one job: the caller's thread, one intra-op thread
    assert seen[0][:2] == (threading.get_ident(), 1) and torch.get_num_threads() == before

    def fails(k):
        if k == 2:
            raise ValueError("job 2")
        return k

    with pytest.raises(ValueError, match="job 2"):
        map_batches(fails, range(5), workers=2)
    assert torch.get_num_threads() == before
