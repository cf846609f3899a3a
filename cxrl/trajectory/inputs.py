"""Input validation shared by every store backend (and the advantage tracker's argument checks).

Every bad input raises ValueError naming the method and argument *before* anything is written; the
backends only ever see validated, converted inputs through their ``_store_*`` primitives.
"""
from __future__ import annotations

import operator

import torch

from cxrl.trajectory.format import DTYPE_CODES
from cxrl.trajectory.plan import MinibatchPlan


def checked_int(value, name: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an int, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an int, got {type(value).__name__} {value!r}") from None


def checked_tensor(value, name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def checked_device(device) -> torch.device:
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device {device!r} is not a torch device: {err}") from None


def check_finite(values: torch.Tensor, name: str) -> None:
    """Raise naming the first non-finite entry, e.g. ``rewards[0, 1] is nan``."""
    bad = ~torch.isfinite(values)
    if bool(bad.any()):
        index = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"{name}{list(index)} is {values[index].item()} (must be finite)")


class StoreInputs:
    """Configuration, the public write API and its validation, and the zero-copy section properties.

    Writes reach storage through three primitives that each backend implements, with validated and
    converted inputs: ``_store_latents(start, slot, x)``, ``_store_step_scalars(start, step, log_prob,
    timestep)`` and ``_store_rows(name, start, values)``; each backend's ``_allocate`` sets the
    ``_latents``, ``_log_probs``, ... tensors the properties return.
    """

    def _configure(self, num_samples, num_steps, latent_shape, num_rewards, dtype, device) -> None:
        self.num_samples = checked_int(num_samples, "num_samples")
        self.num_steps = checked_int(num_steps, "num_steps")
        self.num_rewards = checked_int(num_rewards, "num_rewards")
        for name in ("num_samples", "num_steps", "num_rewards"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if isinstance(latent_shape, int) or not hasattr(latent_shape, "__iter__"):
            raise ValueError(f"latent_shape must be a tuple of ints such as (4, 64, 64), got {latent_shape!r}")
        self.latent_shape = tuple(checked_int(d, "latent_shape entries") for d in latent_shape)
        if not 1 <= len(self.latent_shape) <= 8 or min(self.latent_shape) < 1:
            raise ValueError(f"latent_shape must have 1 to 8 positive dimensions, got {self.latent_shape}")
        if dtype not in DTYPE_CODES:
            raise ValueError(f"dtype must be one of {sorted(str(d) for d in DTYPE_CODES)}, got {dtype!r}")
        self.dtype = dtype
        self.device = checked_device(device)

    # zero-copy views
    latents = property(lambda self: self._latents, doc="[N, T+1, *latent_shape]; latents[:, 0] is x_T")
    log_probs = property(lambda self: self._log_probs, doc="float32 [N, T]")
    timesteps = property(lambda self: self._timesteps, doc="int64 [N, T]: the t of x_t at each step")
    prompt_ids = property(lambda self: self._prompt_ids, doc="int64 [N]")
    rewards = property(lambda self: self._rewards, doc="float32 [N, K] per-component rewards")
    advantages = property(lambda self: self._advantages, doc="float32 [N]")

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self._latents, self._log_probs, self._timesteps,
                                                             self._prompt_ids, self._rewards, self._advantages))

    def _rows(self, method: str, start, batch: int) -> int:
        start = checked_int(start, f"{method}: start")
        if start < 0 or start + batch > self.num_samples:
            raise ValueError(f"{method}: rows [{start}, {start + batch}) are outside the store's capacity of "
                             f"{self.num_samples} samples")
        return start

    def _latent_batch(self, method: str, name: str, x) -> torch.Tensor:
        x = checked_tensor(x, f"{method}: {name}")
        if x.dim() != 1 + len(self.latent_shape) or tuple(x.shape[1:]) != self.latent_shape or x.shape[0] < 1:
            raise ValueError(f"{method}: {name} must have shape [B, {', '.join(map(str, self.latent_shape))}] "
                             f"with B >= 1, got {list(x.shape)}")
        if x.dtype != self.dtype:
            raise ValueError(f"{method}: {name} has dtype {x.dtype}, the store holds {self.dtype}")
        return x

    def _vector(self, method: str, name: str, v, batch: int | None, floating: bool) -> torch.Tensor:
        """A 1-D tensor of length ``batch`` (any length >= 1 when None) and the right kind."""
        v = checked_tensor(v, f"{method}: {name}")
        if v.dim() != 1 or (batch is not None and v.shape[0] != batch) or v.shape[0] < 1:
            raise ValueError(f"{method}: {name} must have shape [{batch if batch is not None else 'B'}], got {list(v.shape)}")
        if floating != v.is_floating_point() or v.dtype == torch.bool:
            kind = "floating-point" if floating else "integer"
            raise ValueError(f"{method}: {name} must be a {kind} tensor, got {v.dtype}")
        return v

    def write_initial(self, start: int, x_T: torch.Tensor) -> None:
        """x_T [B, *latent_shape] -> latents[start:start+B, 0]."""
        x = self._latent_batch("write_initial", "x_T", x_T)
        self._store_latents(self._rows("write_initial", start, x.shape[0]), 0, x)

    def write_step(self, step: int, start: int, x_prev: torch.Tensor, log_prob: torch.Tensor, timestep) -> None:
        """Step ``step`` in [0, T) for the batch: x_prev -> latents[.., step+1], log_prob [B] and the
        timestep of x_t (int or integer tensor [B]) -> log_probs/timesteps[.., step]."""
        x = self._latent_batch("write_step", "x_prev", x_prev)
        batch = x.shape[0]
        start = self._rows("write_step", start, batch)
        step = checked_int(step, "write_step: step")
        if not 0 <= step < self.num_steps:
            raise ValueError(f"write_step: step {step} is outside [0, {self.num_steps})")
        lp = self._vector("write_step", "log_prob", log_prob, batch, floating=True).to(torch.float32)
        if isinstance(timestep, torch.Tensor):
            ts = timestep.expand(batch) if timestep.dim() == 0 else timestep
            ts = self._vector("write_step", "timestep", ts, batch, floating=False).to(torch.int64)
        else:
            ts = torch.full((batch,), checked_int(timestep, "write_step: timestep"), dtype=torch.int64, device=lp.device)
        self._store_latents(start, step + 1, x)
        self._store_step_scalars(start, step, lp, ts)

    def write_prompt_ids(self, start: int, ids: torch.Tensor) -> None:
        ids = self._vector("write_prompt_ids", "ids", ids, None, floating=False)
        self._store_rows("prompt_ids", self._rows("write_prompt_ids", start, ids.shape[0]), ids.to(torch.int64))

    def write_rewards(self, start: int, rewards: torch.Tensor) -> None:
        """Per-component rewards [B, K] ([B] when K == 1); every value must be finite."""
        r = checked_tensor(rewards, "write_rewards: rewards")
        if r.dim() == 1 and self.num_rewards == 1:
            r = r[:, None]
        if r.dim() != 2 or r.shape[1] != self.num_rewards or r.shape[0] < 1 or not r.is_floating_point():
            raise ValueError(f"write_rewards: rewards must be a float tensor [B, {self.num_rewards}], "
                             f"got {r.dtype} {list(r.shape)}")
        start = self._rows("write_rewards", start, r.shape[0])
        check_finite(r, "write_rewards: rewards")
        self._store_rows("rewards", start, r.to(torch.float32))

    def write_advantages(self, start: int, advantages: torch.Tensor) -> None:
        a = self._vector("write_advantages", "advantages", advantages, None, floating=True)
        start = self._rows("write_advantages", start, a.shape[0])
        check_finite(a, "write_advantages: advantages")
        self._store_rows("advantages", start, a.to(torch.float32))

    def _check_plan(self, plan) -> None:
        if not isinstance(plan, MinibatchPlan):
            raise ValueError(f"minibatches: plan must come from store.plan(), got {type(plan).__name__}")
        if (plan.num_samples, plan.num_steps) != (self.num_samples, self.num_steps):
            raise ValueError(f"minibatches: the plan is for {plan.num_samples} samples x {plan.num_steps} steps, "
                             f"the store holds {self.num_samples} x {self.num_steps}")
