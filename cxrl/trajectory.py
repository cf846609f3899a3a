"""The trajectory store and advantage tracker: the Python face of ``cxrl._C``.

``TrajectoryStore`` keeps one epoch of rollouts (API in docs/architecture.md, layout in
:mod:`cxrl.trajectory_reference`). Backends, chosen once per store and recorded in
``cxrl.backend_report()`` -- never silently:

* ``"cpp"`` (CPU stores when ``cxrl._C`` imports): one contiguous, zero-initialised C++ arena, pinned
  with ``cudaHostRegister`` when CUDA is present; the ``latents``/``rewards``/... properties are
  zero-copy torch views of it; writes, gathers (multi-threaded, GIL released, into a reusable
  staging buffer), plans and save/load run in C++.
* ``"torch"`` (stores on a GPU, or on request): the same API on torch tensors on the store's device;
  the C++ extension only builds the plans.
* ``"reference"`` (no extension): the pure-Python spec.

``AdvantageTracker`` runs its statistics in C++ when available, else in Python; results agree.
"""
from __future__ import annotations

import os
import weakref
from typing import Iterator

import torch

from cxrl import _backend
from cxrl.trajectory_reference import (
    DTYPE_CODES, AdvantageTrackerBase, Minibatch, MinibatchPlan, ReferenceAdvantageTracker,
    ReferenceTrajectoryStore, TrajectoryFormatError, num_trained_steps, read_store_file, reference_plan,
)

__all__ = ["TrajectoryStore", "AdvantageTracker", "Minibatch", "MinibatchPlan", "TrajectoryFormatError",
           "num_trained_steps", "reference_plan"]

_STATUS = _backend.cpp_store()
if _STATUS.active:
    from cxrl import _C
else:
    _C = None

_MODE_CODES = {"per_prompt": 0, "group": 1}


def _default_threads() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _words(t: torch.Tensor):
    """A numpy view of a contiguous CPU tensor for the buffer protocol; 2-byte floats travel as raw
    16-bit words because numpy has no bfloat16 (the C++ copies bytes, it never interprets them)."""
    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.view(torch.int16)
    return t.numpy()


def _resolve_backend(device: torch.device, backend: str | None) -> str:
    on_cpu = device.type == "cpu"
    if backend is None:
        backend = ("cpp" if on_cpu else "torch") if _C is not None else "reference"
        why = _STATUS.reason if _C is None else f"{device} store"
        _backend.record_choice("trajectory_store", f"{backend} ({why})")
    if backend not in ("cpp", "torch", "reference"):
        raise ValueError(f"backend must be 'cpp', 'torch' or 'reference', got {backend!r}")
    if backend in ("cpp", "torch") and _C is None:
        raise RuntimeError(f"backend={backend!r} needs the C++ extension: {_STATUS.reason}")
    if backend == "cpp" and not on_cpu:
        raise ValueError(f"the C++ arena lives in host memory; device={device} needs backend='torch'")
    return backend


def _unpin(ptr: int, _owner) -> None:
    # _owner (the arena) is kept alive by this finalizer until the pages are unregistered
    torch.cuda.cudart().cudaHostUnregister(ptr)


class TrajectoryStore(ReferenceTrajectoryStore):
    """One epoch of rollouts; see the module docstring for backends and docs/architecture.md for the API.

    ``backend`` forces "cpp", "torch" or "reference" (tests, debugging); ``threads`` sets the C++
    copy threads (default min(8, cpu_count)); ``pin`` (default: CUDA available) page-locks the arena.
    """

    def __init__(self, num_samples: int, num_steps: int, latent_shape, num_rewards: int = 1,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", *,
                 backend: str | None = None, threads: int | None = None, pin: bool | None = None,
                 _arena=None):
        self._configure(num_samples, num_steps, latent_shape, num_rewards, dtype, device)
        self.backend = _resolve_backend(self.device, backend)
        self.threads = _default_threads() if threads is None else max(1, int(threads))
        self._pin_requested = torch.cuda.is_available() if pin is None else bool(pin)
        self.pinned = False
        self._staging = None
        self._arena = _arena
        self._allocate()

    # --- storage
    def _allocate(self) -> None:
        if self.backend != "cpp":
            return super()._allocate()
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
        if self.backend != "cpp" or x.device.type != "cpu":
            return super()._store_latents(start, slot, x)  # GPU source: one DMA copy into the (pinned) view
        self._arena.write_latents(start, slot, _words(x.detach().contiguous()), self.threads)

    def _store_step_scalars(self, start, step, log_prob, timestep) -> None:
        if self.backend != "cpp":
            return super()._store_step_scalars(start, step, log_prob, timestep)
        self._arena.write_step_scalars(start, step, log_prob.detach().cpu().contiguous().numpy(),
                                       timestep.detach().cpu().contiguous().numpy())

    def _store_rows(self, name: str, start: int, values: torch.Tensor) -> None:
        if self.backend != "cpp":
            return super()._store_rows(name, start, values)
        getattr(self._arena, f"write_{name}")(start, values.detach().cpu().contiguous().numpy())

    # --- plans and gathers
    def _build_plan(self, n, t, batch_size, trained, seed):
        if self.backend == "reference":
            return reference_plan(n, t, batch_size, trained, seed)
        return tuple(torch.from_numpy(a) for a in _C.build_plan(n, t, batch_size, trained, seed))

    def _staging_for(self, rows: int) -> dict[str, torch.Tensor]:
        """Reusable gather targets (pinned when the arena is), grown only when a plan needs more rows."""
        if self._staging is None or self._staging["x_t"].shape[0] < rows:
            pin = self.pinned
            empty = lambda shape, dtype: torch.empty(shape, dtype=dtype, pin_memory=pin)  # noqa: E731
            self._staging = {
                "x_t": empty((rows, *self.latent_shape), self.dtype),
                "x_prev": empty((rows, *self.latent_shape), self.dtype),
                "timesteps": empty((rows,), torch.int64), "log_probs": empty((rows,), torch.float32),
                "advantages": empty((rows,), torch.float32), "prompt_ids": empty((rows,), torch.int64),
            }
            self._staging_np = {k: _words(v) for k, v in self._staging.items()}
        return self._staging

    def gather(self, plan: MinibatchPlan, m: int) -> Minibatch:
        """Minibatch ``m`` of ``plan``. C++ backend: the tensors are views of the staging buffer and
        are overwritten by the next gather."""
        if self.backend != "cpp":
            return super().gather(plan, m)
        self._check_plan(plan)
        b, e = plan.bounds(m)
        st = self._staging_for(max(plan.batch_size, e - b))
        np_ = self._staging_np
        self._arena.gather(plan.sample_idx.numpy(), plan.step_idx.numpy(), b, e, np_["x_t"], np_["x_prev"],
                           np_["timesteps"], np_["log_probs"], np_["advantages"], np_["prompt_ids"], self.threads)
        n = e - b
        return Minibatch(st["x_t"][:n], st["x_prev"][:n], st["timesteps"][:n], st["log_probs"][:n],
                         st["advantages"][:n], st["prompt_ids"][:n], plan.sample_idx[b:e], plan.step_idx[b:e])

    def minibatches(self, plan: MinibatchPlan, device: str | torch.device | None = None) -> Iterator[Minibatch]:
        """Gather the plan's minibatches in order. ``device``: move each minibatch there. From the C++
        store to a GPU the copies are asynchronous out of the pinned staging buffer, and the buffer is
        not overwritten before its copy has finished (an event per minibatch)."""
        if self.backend != "cpp":
            yield from super().minibatches(plan, device)
            return
        self._check_plan(plan)
        dev = torch.device(device) if device is not None else None
        for m in range(len(plan)):
            mb = self.gather(plan, m)
            if dev is None or dev.type == "cpu":
                yield mb
                continue
            moved = {k: v.to(dev, non_blocking=self.pinned) for k, v in vars(mb).items()
                     if k not in ("sample_idx", "step_idx")}
            if self.pinned and dev.type == "cuda":
                # the next gather rewrites the staging buffer: wait until this H2D copy has read it
                done = torch.cuda.Event()
                done.record()
                yield Minibatch(**moved, sample_idx=mb.sample_idx, step_idx=mb.step_idx)
                done.synchronize()
            else:
                yield Minibatch(**moved, sample_idx=mb.sample_idx, step_idx=mb.step_idx)

    # --- persistence
    def save(self, path: str | os.PathLike) -> None:
        """Checksummed file (format in csrc/arena_io.cpp); readable by every backend."""
        if self.backend != "cpp":
            return super().save(path)
        self._arena.save(os.fspath(path))

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu", *, backend: str | None = None,
             **kwargs) -> "TrajectoryStore":
        """Read a saved store; a missing, truncated or corrupted file raises a clear error."""
        chosen = _resolve_backend(torch.device(device), backend)
        if chosen != "cpp":
            return read_store_file(path, lambda n, t, shape, k, dtype: cls(n, t, shape, k, dtype, device,
                                                                          backend=chosen, **kwargs))
        if not os.path.isfile(path):
            raise FileNotFoundError(f"trajectory file '{os.fspath(path)}' does not exist")
        try:
            arena = _C.TrajectoryArena.load(os.fspath(path))
        except _C.TrajectoryFormatError as err:
            raise TrajectoryFormatError(str(err)) from None
        dtype = {code: d for d, code in DTYPE_CODES.items()}[arena.dtype_code]
        return cls(arena.num_samples, arena.num_steps, tuple(arena.latent_shape), arena.num_rewards, dtype,
                   "cpu", backend="cpp", _arena=arena, **kwargs)


class AdvantageTracker(AdvantageTrackerBase):
    """Per-prompt / group advantages; exact semantics in :class:`AdvantageTrackerBase`. Statistics in
    C++ (``cxrl._C.AdvantageStats``) when the extension is built, else the Python reference."""

    def __init__(self, mode: str = "per_prompt", window: int = 16, min_count: int = 16,
                 group_size: int | None = None, clip: float = 5.0, eps: float = 1e-6):
        super().__init__(mode, window, min_count, group_size, clip, eps)
        if _C is None:
            self._impl = ReferenceAdvantageTracker(mode, window, min_count, group_size, clip, eps)
            _backend.record_choice("advantage_tracker", f"reference ({_STATUS.reason})")
        else:
            self._impl = _C.AdvantageStats(_MODE_CODES[mode], self.window, self.min_count, self.group_size or 0,
                                           self.clip, self.eps)
            _backend.record_choice("advantage_tracker", "cpp (cxrl._C.AdvantageStats)")
        self.backend = "reference" if _C is None else "cpp"

    def _compute_ids(self, ids: list[int], rewards: torch.Tensor) -> torch.Tensor:
        if self.backend == "reference":
            return self._impl._compute_ids(ids, rewards)
        keys = torch.tensor(ids, dtype=torch.int64).numpy()
        return torch.from_numpy(self._impl.compute(keys, rewards.contiguous().numpy()))

    def _export(self):
        if self.backend == "reference":
            return self._impl._export()
        keys, counts, values = self._impl.export_state()
        windows, off = [], 0
        for c in counts.tolist():
            windows.append(values[off:off + c].tolist())
            off += c
        return keys.tolist(), windows

    def _import(self, keys, windows) -> None:
        if self.backend == "reference":
            return self._impl._import(keys, windows)
        flat = [v for w in windows for v in w]
        as_np = lambda xs, dtype: torch.tensor(xs, dtype=dtype).reshape(-1).numpy()  # noqa: E731
        self._impl.import_state(as_np(keys, torch.int64), as_np([len(w) for w in windows], torch.int64),
                                as_np(flat, torch.float64))
