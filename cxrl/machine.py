"""The machine yardstick a measured time is quoted with: single-thread fp32 1024³ matmul TFLOP/s.

Shared machines differ ~2x in speed from one session to the next, so an absolute time (a demo run, an epoch)
means little alone; measured at the start of the same run, this number lets a reader scale it (the docs'
quiet reference machine reads 0.112)."""
from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")


def matmul_tflops(size: int = 1024, threads: int = 1, repeats: int = 7) -> float:
    """Median TFLOP/s of ``repeats`` fp32 ``size``³ matrix products on the CPU with ``threads`` intra-op threads
    (the caller's thread setting is restored)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        generator = torch.Generator().manual_seed(0)
        a, b = torch.randn(size, size, generator=generator), torch.randn(size, size, generator=generator)
        out = torch.empty(size, size)
        torch.mm(a, b, out=out)   # warm-up: first-call allocation and dispatch
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mm(a, b, out=out)
            seconds.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(before)
    return 2.0 * size ** 3 / statistics.median(seconds) / 1e12


def yardstick(device: torch.device | str | None = None) -> dict:
    """What a run records beside its times (run.json): the matmul yardstick and where it was measured; for a run on
    a GPU also the accelerator's name (the CPU yardstick then times only the run's host side)."""
    record = {"matmul_fp32_1024_1thread_tflops": round(matmul_tflops(), 4), "cpu": platform.processor() or platform.machine(),
              "torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":
        record["device"] = torch.cuda.get_device_name(device)
        record["cuda"] = torch.version.cuda
    return record


def auto_threads(device_type: str, world_size: int = 1, scoring_thread: bool = False) -> int | None:
    """Intra-op threads for a CPU rank: the cores it may use (``cores / ranks``), one fewer when a scoring thread
    runs beside the main one; None (torch's default) off the CPU."""
    if device_type != "cpu":
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, world_size) - (1 if scoring_thread else 0))


@contextmanager
def intra_op_threads(threads: int):
    """Run the block with ``threads`` torch intra-op threads (0: leave the setting alone), then restore it.
    Used for forward-only stages: the demo UNet's forward pass gives the same bits on 1 and 2 CPU threads (measured;
    not every model's does: the tiny test UNet's 1x1 convolutions round differently), its backward pass does not (the
    weight-gradient sums are split across threads), so the update keeps its own thread count."""
    before = torch.get_num_threads()
    if threads and threads != before:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def map_batches(fn: Callable[[T], R], jobs: Sequence[T], workers: int = 0, device_type: str = "cpu") -> list[R]:
    """``[fn(job) for job in jobs]``; with ``workers > 1`` on the CPU, ``workers`` jobs at a time, each on its own
    thread with one intra-op torch thread (restored after). For small forward passes this beats one job at a time
    on ``workers`` intra-op threads (demo UNet, 8 forwards of 32 rows, 2 vCPUs: 998 vs 1122 ms;
    ``python -m benchmarks.cpu_sampling``): the per-op thread
    hand-offs and the serial parts of each op run side by side. ``fn`` must not depend on the order the jobs run in
    (seed each job's randomness from the job) and may only write to what its job owns; the results keep the jobs'
    order, the caller's grad mode holds in the workers, and the first exception is raised."""
    jobs = list(jobs)
    if workers <= 1 or device_type != "cpu":
        return [fn(job) for job in jobs]
    if len(jobs) <= 1:   # still one thread: a job's bits must not depend on how many jobs there were
        with intra_op_threads(1):
            return [fn(job) for job in jobs]
    grad_enabled = torch.is_grad_enabled()   # thread-local in torch: carry the caller's into the workers

    def run(job):
        with torch.set_grad_enabled(grad_enabled):
            return fn(job)

    with intra_op_threads(1), ThreadPoolExecutor(max_workers=min(workers, len(jobs)),
                                                 thread_name_prefix="cxrl-batch") as pool:
        return list(pool.map(run, jobs))
