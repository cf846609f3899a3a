"""The trajectory benchmark's providers do the same work (a benchmark comparing unequal work is a lie)."""
import pytest
import torch

from benchmarks import bench_trajectory as bench
from cxrl import trajectory
from cxrl.trajectory.extension import _C

pytestmark = pytest.mark.skipif(_C is None, reason="cxrl._C is not built")


def test_providers_gather_the_same_amount_and_cxrl_data_is_right():
    w = bench.Workload(70, 3, (2, 5), "cpu", reps=1, warmup=0)  # N not a multiple of either batch size
    store = trajectory.TrajectoryStore(w.n, w.t, w.shape, 1)
    tracker = trajectory.AdvantageTracker()
    expected = 2 * w.n * w.t * 10
    assert bench.cxrl_epoch(store, tracker, w, seed=0) == expected
    assert bench.ddpo_epoch(w, bench.NumpyPerPromptTracker(), seed=0) == expected
    plain = bench.TorchIndexingStore(w)
    assert plain.epoch(seed=0) == expected
    # both stores hold the same epoch after writing it
    assert torch.equal(store.latents, plain.lat) and torch.equal(store.timesteps, plain.ts)
    assert torch.equal(store.log_probs, plain.lp) and torch.equal(store.prompt_ids, plain.pid)


def test_run_case_reports_ratios_and_memory():
    results = bench.run_case(bench.Workload(40, 2, (1, 4, 4), "cpu", reps=1, warmup=0))
    assert [r.mode for r in results] == ["epoch", "gather"]
    assert set(results[0].timings) == {"ddpo_list_stack", "torch_indexing", "cxrl"}
    assert results[0].extra["cxrl_peak_mem_over_arena"] > 0 and results[0].extra["backend"] == "cpp"
