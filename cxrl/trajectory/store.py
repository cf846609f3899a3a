"""``TrajectoryStore``: the store's public type, the rule that picks a backend, and what a backend implements.

``TrajectoryStore(...)`` and ``TrajectoryStore.load(...)`` return an instance of the chosen backend's
class, and every backend class is a subclass of ``TrajectoryStore`` (so ``isinstance`` holds). The
rule, decided once per store and recorded in ``cxrl.backend_report()`` -- never silently:

* ``backend=None`` (the default): ``"cpp"`` for a CPU store and ``"torch"`` for any other device when
  ``cxrl._C`` imports, else ``"reference"``;
* ``backend="cpp" | "torch" | "reference"`` forces one (tests, debugging); ``"cpp"`` and ``"torch"``
  need the extension, and ``"cpp"`` a CPU store.
"""
from __future__ import annotations

import abc
import os
from collections.abc import Iterator

import torch

from cxrl import _backend
from cxrl.trajectory.extension import _C, STATUS
from cxrl.trajectory.inputs import StoreInputs, checked_device
from cxrl.trajectory.plan import Minibatch, MinibatchPlan, make_plan

BACKENDS = ("cpp", "torch", "reference")
_classes: dict[str, type[TrajectoryStore]] = {}  # filled by each backend class as it is defined


def choose_backend(device, backend: str | None) -> str:
    """The backend name for a store on ``device``; the default choice is recorded with its reason."""
    device = checked_device(device)
    if backend is None:
        backend = ("cpp" if device.type == "cpu" else "torch") if _C is not None else "reference"
        why = STATUS.reason if _C is None else f"{device} store"
        _backend.record_choice("trajectory_store", f"{backend} ({why})")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be 'cpp', 'torch' or 'reference', got {backend!r}")
    return backend


class TrajectoryStore(StoreInputs, abc.ABC):
    """One epoch of rollouts: N samples x T denoising steps. API in docs/architecture.md.

    Layout: ``latents[n, 0]`` is x_T and ``latents[n, j + 1]`` the sample after step j, so step j
    moves ``latents[n, j] -> latents[n, j + 1]`` and every latent is stored once. ``log_probs`` and
    ``timesteps`` are ``[N, T]`` (step j's log-prob of x_prev and the timestep t of x_t),
    ``prompt_ids`` ``[N]``, ``rewards`` ``[N, K]``, ``advantages`` ``[N]``.

    ``backend`` picks the implementation (module docstring); ``threads`` (C++ copy threads, default
    min(8, cpu_count)) and ``pin`` (page-lock the arena; default: CUDA available) tune the C++ arena
    and are accepted and unused by the other backends, so one call works whichever is chosen.
    """

    backend: str  # each backend class names itself; the name is its key in the choice rule
    needs_extension = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "backend" in cls.__dict__:
            _classes[cls.backend] = cls

    @classmethod
    def _backend_class(cls, device, backend: str | None) -> type[TrajectoryStore]:
        """The class that builds a store: chosen by the rule when called on ``TrajectoryStore``, else
        ``cls`` itself (then ``backend``, when given, must name it)."""
        if cls is TrajectoryStore:
            cls = _classes[choose_backend(device, backend)]
        elif backend is not None and backend != cls.backend:
            raise ValueError(f"{cls.__name__} is the {cls.backend!r} backend; got backend={backend!r}")
        if cls.needs_extension and _C is None:
            raise RuntimeError(f"backend={cls.backend!r} needs the C++ extension: {STATUS.reason}")
        cls.check_device(checked_device(device))
        return cls

    # every argument has a default so that copy/pickle (which call cls.__new__(cls)) work too
    def __new__(cls, num_samples=None, num_steps=None, latent_shape=None, num_rewards=1, dtype=torch.float32,
                device="cpu", *, backend=None, **options):
        return super().__new__(cls._backend_class(device, backend))

    def __init__(self, num_samples: int, num_steps: int, latent_shape, num_rewards: int = 1,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", *,
                 backend: str | None = None, threads: int | None = None, pin: bool | None = None):
        self._configure(num_samples, num_steps, latent_shape, num_rewards, dtype, device)
        self._allocate()

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu", *, backend: str | None = None,
             **options) -> TrajectoryStore:
        """Read a saved store (any backend's file); a missing, truncated or corrupted file raises a
        clear error. ``options`` (``threads``, ``pin``) go to the constructor."""
        return cls._backend_class(device, backend)._from_file(path, device, **options)

    def plan(self, batch_size: int, timestep_fraction: float = 1.0, seed: int = 0,
             steps: tuple[int, int] | None = None) -> MinibatchPlan:
        """DDPO-style plan (:func:`cxrl.trajectory.plan.reference_plan`); same seed, same plan. ``steps=(first,
        end)``: train only the steps in that window (:func:`cxrl.trajectory.plan.make_plan`)."""
        return make_plan(self, batch_size, timestep_fraction, seed, self._build_plan, steps)

    # --- what each backend implements
    @classmethod
    def check_device(cls, device: torch.device) -> None:
        """Raise ValueError if this backend cannot hold a store on ``device`` (default: any device)."""

    @abc.abstractmethod
    def _allocate(self) -> None:
        """Create the zero-initialised sections ``_latents``, ``_log_probs``, ... for the configuration."""

    @abc.abstractmethod
    def _store_latents(self, start: int, slot: int, x: torch.Tensor) -> None:
        """x [B, *latent_shape] -> latents[start:start+B, slot]."""

    @abc.abstractmethod
    def _store_step_scalars(self, start: int, step: int, log_prob: torch.Tensor, timestep: torch.Tensor) -> None:
        """float32 log_prob [B] and int64 timestep [B] -> log_probs/timesteps[start:start+B, step]."""

    @abc.abstractmethod
    def _store_rows(self, name: str, start: int, values: torch.Tensor) -> None:
        """Rows [start:start+B] of section ``name`` (prompt_ids, rewards or advantages), converted."""

    @abc.abstractmethod
    def _build_plan(self, num_samples: int, num_steps: int, batch_size: int, trained_steps: int, seed: int):
        """(sample_idx, step_idx, offsets) int64 tensors equal to ``reference_plan``'s."""

    @abc.abstractmethod
    def gather(self, plan: MinibatchPlan, m: int) -> Minibatch:
        """Minibatch ``m`` of ``plan``: x_t = latents[i, j], x_prev = latents[i, j + 1], ..."""

    @abc.abstractmethod
    def minibatches(self, plan: MinibatchPlan, device: str | torch.device | None = None) -> Iterator[Minibatch]:
        """The plan's minibatches in order; ``device``: move each one there."""

    @abc.abstractmethod
    def save(self, path: str | os.PathLike) -> None:
        """Write the checksummed file of :mod:`cxrl.trajectory.format`."""

    @classmethod
    @abc.abstractmethod
    def _from_file(cls, path: str | os.PathLike, device, **options) -> TrajectoryStore:
        """A store of this backend filled from a file."""
