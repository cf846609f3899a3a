"""Data parallelism under torchrun: sharding, gathers, gradient all-reduce, and error propagation.

Gradients are averaged with a manual all-reduce of the trainable parameters' ``.grad`` (one
flattened bucket per dtype/device), which works the same for LoRA, full fine-tuning and ACE and
keeps the training step free of DDP's hooks (the update loop calls the UNet several times per
optimizer step). An exception in one rank reaches the others through :meth:`DistContext.stage`:
every stage ends with an all-reduce of an error flag, so the others raise instead of waiting on a
collective that will never come; the process-group timeout covers a rank that hangs outright.
"""
from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


class RemoteRankError(RuntimeError):
    """Another rank failed in a stage; this rank stops cleanly."""


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized_here: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- collectives (no-ops in a single process) ------------------------------------------------

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def any_true(self, flag: bool) -> bool:
        """True if ``flag`` is set on any rank (an all-reduce MAX of one integer)."""
        if not self.enabled:
            return bool(flag)
        t = torch.tensor([1 if flag else 0], dtype=torch.int64, device=self._comm_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def all_gather_cat(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate equally-shaped per-rank tensors along dim 0, in rank order."""
        if not self.enabled:
            return tensor
        local = tensor.detach().to(self._comm_device()).contiguous()
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(parts, local)
        return torch.cat(parts, dim=0).to(tensor.device)

    def all_reduce_mean_(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
            tensor.div_(self.world_size)
        return tensor

    def average_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Average ``.grad`` of ``params`` over ranks; a missing grad counts as zeros on that rank."""
        if not self.enabled:
            return
        buckets: dict[tuple, list[torch.nn.Parameter]] = {}
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            buckets.setdefault((p.grad.dtype, p.grad.device), []).append(p)
        for group in buckets.values():
            flat = torch.cat([p.grad.reshape(-1) for p in group])
            self.all_reduce_mean_(flat)
            offset = 0
            for p in group:
                n = p.grad.numel()
                p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
                offset += n

    def shard(self, global_count: int) -> slice:
        """This rank's contiguous slice of ``global_count`` items (must divide evenly)."""
        if global_count % self.world_size:
            raise ValueError(f"{global_count} items cannot be split evenly over {self.world_size} ranks; "
                             "choose sampling.samples_per_epoch as a multiple of the world size")
        n = global_count // self.world_size
        return slice(self.rank * n, (self.rank + 1) * n)

    @contextlib.contextmanager
    def stage(self, name: str):
        """Run a stage; if it raises on any rank, every rank raises (no deadlock at the next collective)."""
        failed = False
        try:
            yield
        except BaseException:
            failed = True
            if self.enabled:
                with contextlib.suppress(Exception):  # tell the others, then re-raise our own error
                    self.any_true(True)
            raise
        finally:
            if not failed and self.enabled and self.any_true(False):
                raise RemoteRankError(f"another rank failed during stage '{name}'; stopping rank {self.rank}")

    def _comm_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")

    def close(self) -> None:
        if self.initialized_here and dist.is_initialized():
            dist.destroy_process_group()


def resolve_device(requested: str, local_rank: int) -> torch.device:
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("model.device is 'cuda' but no CUDA device is available")
    torch.cuda.set_device(local_rank % torch.cuda.device_count())
    return torch.device("cuda", torch.cuda.current_device())


def init_distributed(device: str = "auto", backend: str = "auto", timeout_s: float = 600.0) -> DistContext:
    """A :class:`DistContext` from torchrun's environment (``WORLD_SIZE``/``RANK``/``LOCAL_RANK``),
    or a single-process context when those are absent."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world <= 1:
        return DistContext(device=dev)
    chosen = backend if backend != "auto" else ("nccl" if dev.type == "cuda" else "gloo")
    if chosen == "nccl" and dev.type != "cuda":
        raise ValueError("dist.backend 'nccl' needs CUDA devices; use 'gloo' on CPU")
    here = False
    if not dist.is_initialized():
        dist.init_process_group(backend=chosen, rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=timeout_s),
                                device_id=dev if dev.type == "cuda" else None)
        here = True
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=dev, initialized_here=here)
