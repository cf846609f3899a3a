"""Two real gloo processes: gradient averaging, gathers, sharding, and an error in one rank reaching
the other as an error (not a hang)."""
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cxrl.rl.distributed import DistContext, RemoteRankError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, results):
    import datetime

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    ctx = DistContext(rank=rank, world_size=world, initialized_here=True)
    try:
        out = {}
        p = torch.nn.Parameter(torch.zeros(3))
        q = torch.nn.Parameter(torch.zeros(2, 2, dtype=torch.float64))
        p.grad = torch.full((3,), float(rank + 1))
        q.grad = None if rank == 0 else torch.ones(2, 2, dtype=torch.float64) * 4
        ctx.average_gradients([p, q])
        out["p"], out["q"] = p.grad.tolist(), q.grad.tolist()
        out["gather"] = ctx.all_gather_cat(torch.tensor([[rank, rank * 10]])).tolist()
        out["shard"] = (ctx.shard(6).start, ctx.shard(6).stop)
        out["any"] = (ctx.any_true(rank == 1), ctx.any_true(False))
        try:
            with ctx.stage("ok stage"):
                pass
            with ctx.stage("failing stage"):
                if rank == 1:
                    raise ValueError("boom in rank 1")
            out["stage"] = "no error"
        except RemoteRankError as err:
            out["stage"] = f"remote: {err}"
        except ValueError as err:
            out["stage"] = f"local: {err}"
        results[rank] = out
    finally:
        ctx.close()


def test_two_gloo_ranks():
    port = _free_port()
    with mp.Manager() as manager:
        results = manager.dict()
        mp.start_processes(_worker, args=(2, port, results), nprocs=2, join=True, start_method="spawn")
        r0, r1 = results[0], results[1]
    for r in (r0, r1):
        assert r["p"] == [1.5, 1.5, 1.5]
        assert r["q"] == [[2.0, 2.0], [2.0, 2.0]]      # a missing grad counts as zeros
        assert r["gather"] == [[0, 0], [1, 10]]
        assert r["any"] == (True, False)
    assert r0["shard"] == (0, 3) and r1["shard"] == (3, 6)
    assert r1["stage"] == "local: boom in rank 1"
    assert r0["stage"].startswith("remote: another rank failed during stage 'failing stage'")


def test_single_process_context_is_a_no_op():
    ctx = DistContext()
    t = torch.arange(4.0)
    assert ctx.all_gather_cat(t) is t and ctx.any_true(True) and not ctx.any_true(False)
    assert ctx.shard(5) == slice(0, 5)
    with pytest.raises(ValueError, match="split evenly"):
        DistContext(rank=0, world_size=2).shard(5)
    with pytest.raises(KeyError):
        with ctx.stage("x"):
            raise KeyError("local errors pass through unchanged")
