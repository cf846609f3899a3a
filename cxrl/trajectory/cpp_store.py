"""The C++ arena backend: the CPU store of ``cxrl._C``.

One contiguous, zero-initialised C++ arena holds the six sections; it is pinned with
``cudaHostRegister`` when CUDA is present so host<->GPU copies are DMA. The ``latents``/``rewards``/...
properties are zero-copy torch views of it. Writes, gathers (multi-threaded, GIL released, into a
reusable :class:`~cxrl.trajectory.staging.StagingBuffer`), plans and save/load run in C++.
"""
from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Iterator

import torch

from cxrl import _backend
from cxrl.trajectory import extension
from cxrl.trajectory.extension import _C, as_buffer
from cxrl.trajectory.format import CODE_DTYPES, DTYPE_CODES, TrajectoryFormatError
from cxrl.trajectory.plan import Minibatch, MinibatchPlan
from cxrl.trajectory.staging import StagingBuffer
from cxrl.trajectory.store import TrajectoryStore


def _default_threads() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _unpin(ptr: int, _owner) -> None:
    # _owner (the arena) is kept alive by this finalizer until the pages are unregistered
    torch.cuda.cudart().cudaHostUnregister(ptr)


class CppTrajectoryStore(TrajectoryStore):
    """The store in a C++ arena in host memory; ``threads`` C++ copy threads, ``pin`` page-locks it."""

    backend = "cpp"
    needs_extension = True

    def __init__(self, num_samples: int, num_steps: int, latent_shape, num_rewards: int = 1,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", *,
                 backend: str | None = None, threads: int | None = None, pin: bool | None = None, _arena=None):
        self.threads = _default_threads() if threads is None else max(1, int(threads))
        self._pin_requested = torch.cuda.is_available() if pin is None else bool(pin)
        self.pinned = False
        self._arena = _arena  # given by load(); else _allocate creates it
        super().__init__(num_samples, num_steps, latent_shape, num_rewards, dtype, device)
        self._staging = StagingBuffer(self.latent_shape, self.dtype, pinned=self.pinned)

    @classmethod
    def check_device(cls, device: torch.device) -> None:
        if device.type != "cpu":
            raise ValueError(f"the C++ arena lives in host memory; device={device} needs backend='torch'")

    # --- storage
    def _allocate(self) -> None:
        if self._arena is None:
            self._arena = _C.TrajectoryArena(self.num_samples, self.num_steps, list(self.latent_shape),
                                             self.num_rewards, DTYPE_CODES[self.dtype])
        view = lambda name: torch.from_numpy(self._arena.section(name))  # noqa: E731  (zero-copy)
        self._latents = view("latents").view(self.dtype)
        for name in ("log_probs", "timesteps", "prompt_ids", "rewards", "advantages"):
            setattr(self, f"_{name}", view(name))
        if self._pin_requested:
            self._pin()

    def _pin(self) -> None:
        """Page-lock the arena so host<->GPU copies are DMA (and can be asynchronous)."""
        if not torch.cuda.is_available():
            _backend.record_choice("trajectory_pinning", "not pinned: CUDA is not available")
            return
        ptr, nbytes = self._arena.data_ptr, self._arena.nbytes
        err = torch.cuda.cudart().cudaHostRegister(ptr, nbytes, 0)
        code = int(getattr(err, "value", err))
        if code != 0:
            _backend.record_choice("trajectory_pinning", f"cudaHostRegister failed with error {code}; arena not pinned")
            return
        self.pinned = True
        weakref.finalize(self, _unpin, ptr, self._arena)
        _backend.record_choice("trajectory_pinning", f"arena of {nbytes} bytes pinned with cudaHostRegister")

    def _store_latents(self, start: int, slot: int, x: torch.Tensor) -> None:
        if x.device.type != "cpu":  # a GPU source: one DMA copy into the (pinned) view
            self._latents[start:start + x.shape[0], slot].copy_(x)
            return
        self._arena.write_latents(start, slot, as_buffer(x.detach().contiguous()), self.threads)

    def _store_step_scalars(self, start: int, step: int, log_prob: torch.Tensor, timestep: torch.Tensor) -> None:
        self._arena.write_step_scalars(start, step, log_prob.detach().cpu().contiguous().numpy(),
                                       timestep.detach().cpu().contiguous().numpy())

    def _store_rows(self, name: str, start: int, values: torch.Tensor) -> None:
        getattr(self._arena, f"write_{name}")(start, values.detach().cpu().contiguous().numpy())

    # --- plans and gathers
    def _build_plan(self, num_samples, num_steps, batch_size, trained_steps, seed):
        return extension.build_plan(num_samples, num_steps, batch_size, trained_steps, seed)

    def gather(self, plan: MinibatchPlan, m: int) -> Minibatch:
        """Minibatch ``m`` of ``plan``. The tensors are views of the staging buffer and are
        overwritten by the next gather (which first waits for any copy still reading them)."""
        self._check_plan(plan)
        b, e = plan.bounds(m)
        views, buffers = self._staging.claim(max(plan.batch_size, e - b))
        self._arena.gather(plan.sample_idx.numpy(), plan.step_idx.numpy(), b, e, *buffers, self.threads)
        return Minibatch(**{name: v[:e - b] for name, v in views.items()},
                         sample_idx=plan.sample_idx[b:e], step_idx=plan.step_idx[b:e])

    def minibatches(self, plan: MinibatchPlan, device: str | torch.device | None = None) -> Iterator[Minibatch]:
        """Gather the plan's minibatches in order. ``device``: move each minibatch there. From the
        pinned arena to a GPU the copies are asynchronous out of the staging buffer, and the buffer is
        not overwritten before its copy has finished (:meth:`copied_out`)."""
        self._check_plan(plan)
        dev = torch.device(device) if device is not None else None
        if self.pinned and dev is not None and dev.type == "cuda":
            yield from self.copied_out(plan, lambda t: t.to(dev, non_blocking=True), torch.cuda.Event)
            return
        for m in range(len(plan)):
            mb = self.gather(plan, m)
            # a blocking copy from pageable memory has finished reading the buffer when it returns
            yield mb if dev is None or dev.type == "cpu" else mb.to(dev)

    def copied_out(self, plan: MinibatchPlan, copy: Callable[[torch.Tensor], torch.Tensor],
                   new_event: Callable[[], object]) -> Iterator[Minibatch]:
        """Each minibatch gathered into the staging buffer and copied out of it by ``copy``, which may
        return before it has read the buffer (``non_blocking=True``). An event from ``new_event()``,
        recorded after the copies, goes to the staging buffer, so the next gather into it waits for
        them. ``copy`` and ``new_event`` are parameters so the protocol can be checked without a GPU."""
        for m in range(len(plan)):
            moved = self.gather(plan, m).map_data(copy)
            done = new_event()
            done.record()
            self._staging.release_after(done)
            yield moved

    # --- persistence
    def save(self, path: str | os.PathLike) -> None:
        """Checksummed file (format in csrc/arena_io.cpp); readable by every backend."""
        self._arena.save(os.fspath(path))

    @classmethod
    def _from_file(cls, path: str | os.PathLike, device, **options) -> CppTrajectoryStore:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"trajectory file '{os.fspath(path)}' does not exist")
        try:
            arena = _C.TrajectoryArena.load(os.fspath(path))
        except _C.TrajectoryFormatError as err:
            raise TrajectoryFormatError(str(err)) from None
        return cls(arena.num_samples, arena.num_steps, tuple(arena.latent_shape), arena.num_rewards,
                   CODE_DTYPES[arena.dtype_code], "cpu", _arena=arena, **options)
