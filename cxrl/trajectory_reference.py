"""Plain Python/torch specification of the trajectory store and advantage tracker.

This module *is* the spec that ``cxrl._C`` is tested against, and the store that runs when the
extension is not built. Everything observable matches the C++ store bit for bit: the same plan for
the same seed (SplitMix64 + Fisher-Yates, below), the same gathers, advantages equal to float
rounding, and the same checksummed file format (so either backend reads the other's files).

Layout: one epoch of N samples x T denoising steps. ``latents[n, 0]`` is x_T and
``latents[n, j + 1]`` is the sample after step j, so step j moves ``latents[n, j] -> latents[n, j + 1]``
and every latent is stored once. ``log_probs``/``timesteps`` are ``[N, T]`` (step j's log-prob of
x_{prev} and the timestep t of x_t), ``prompt_ids`` ``[N]``, ``rewards`` ``[N, K]``, ``advantages`` ``[N]``.
"""
from __future__ import annotations

import json
import math
import operator
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

DTYPE_CODES = {torch.float32: 1, torch.float16: 2, torch.bfloat16: 3, torch.float64: 4}
CODE_DTYPES = {code: dtype for dtype, code in DTYPE_CODES.items()}
MASK64 = (1 << 64) - 1


class TrajectoryFormatError(ValueError):
    """A trajectory or tracker file that is truncated, corrupted or not a cxrl file."""


# ---------------------------------------------------------------------------------------- plans
def _splitmix64(state: int) -> tuple[int, int]:
    """One SplitMix64 step: returns (new_state, output). Same constants as csrc/common.hpp."""
    state = (state + 0x9E3779B97F4A7C15) & MASK64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return state, z ^ (z >> 31)


class _Rng:
    def __init__(self, seed: int):
        self.state = seed

    def bounded(self, n: int) -> int:
        """Integer in [0, n): multiply-shift of the top 32 bits, as the C++ does."""
        self.state, out = _splitmix64(self.state)
        return ((out >> 32) * n) >> 32

    def shuffle(self, items: list) -> None:
        for i in range(len(items) - 1, 0, -1):
            j = self.bounded(i + 1)
            items[i], items[j] = items[j], items[i]


def num_trained_steps(num_steps: int, timestep_fraction: float) -> int:
    """``ceil(T * fraction)``, immune to float noise (0.3 * 50 is 15.000000000000002, not 16 steps)."""
    if not isinstance(timestep_fraction, (int, float)) or not 0.0 < timestep_fraction <= 1.0:
        raise ValueError(f"timestep_fraction must be in (0, 1], got {timestep_fraction!r}")
    return max(1, min(num_steps, math.ceil(round(num_steps * timestep_fraction, 9))))


def reference_plan(num_samples: int, num_steps: int, batch_size: int, trained_steps: int, seed: int):
    """(sample_idx, step_idx, offsets) as int64 tensors; the spec of ``cxrl._C.build_plan``.

    One SplitMix64 stream: shuffle the samples, then per shuffled position a permutation of the T
    steps whose first ``trained_steps`` are trained. Sample batches outer, trained-step column inner.
    """
    rng = _Rng(seed)
    order = list(range(num_samples))
    rng.shuffle(order)
    steps = []
    for _ in range(num_samples):
        perm = list(range(num_steps))
        rng.shuffle(perm)
        steps.append(perm[:trained_steps])
    sample_idx, step_idx, offsets = [], [], [0]
    for b0 in range(0, num_samples, batch_size):
        positions = range(b0, min(num_samples, b0 + batch_size))
        for j in range(trained_steps):
            sample_idx += [order[p] for p in positions]
            step_idx += [steps[p][j] for p in positions]
            offsets.append(len(sample_idx))
    as_long = lambda xs: torch.tensor(xs, dtype=torch.int64)  # noqa: E731
    return as_long(sample_idx), as_long(step_idx), as_long(offsets)


@dataclass(frozen=True)
class MinibatchPlan:
    """Training order for one epoch: minibatch m is entries ``offsets[m]:offsets[m+1]`` (CPU int64)."""

    sample_idx: torch.Tensor
    step_idx: torch.Tensor
    offsets: torch.Tensor
    num_samples: int
    num_steps: int
    batch_size: int
    trained_steps: int
    timestep_fraction: float
    seed: int

    def __len__(self) -> int:
        return self.offsets.numel() - 1

    def bounds(self, m: int) -> tuple[int, int]:
        if not 0 <= m < len(self):
            raise IndexError(f"minibatch {m} is outside the plan's {len(self)} minibatches")
        return int(self.offsets[m]), int(self.offsets[m + 1])


@dataclass
class Minibatch:
    """One gathered minibatch. From the C++ store the tensors live in a staging buffer that the next
    minibatch overwrites: ``.clone()`` (or move to the GPU) what must outlive the loop iteration."""

    x_t: torch.Tensor  # [B, *latent_shape]
    x_prev: torch.Tensor  # [B, *latent_shape]
    timesteps: torch.Tensor  # int64 [B]
    log_probs: torch.Tensor  # float32 [B]: log-prob under the rollout policy
    advantages: torch.Tensor  # float32 [B]
    prompt_ids: torch.Tensor  # int64 [B]
    sample_idx: torch.Tensor  # int64 [B]
    step_idx: torch.Tensor  # int64 [B]


def make_plan(store, batch_size: int, timestep_fraction: float, seed: int, builder) -> MinibatchPlan:
    """Validate plan arguments and wrap a builder's (sample_idx, step_idx, offsets) in a MinibatchPlan."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"plan: batch_size must be a positive int, got {batch_size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MASK64:
        raise ValueError(f"plan: seed must be an int in [0, 2**64), got {seed!r}")
    trained = num_trained_steps(store.num_steps, timestep_fraction)
    s, j, o = builder(store.num_samples, store.num_steps, batch_size, trained, seed)
    return MinibatchPlan(torch.as_tensor(s), torch.as_tensor(j), torch.as_tensor(o), store.num_samples,
                         store.num_steps, batch_size, trained, float(timestep_fraction), seed)


# ---------------------------------------------------------------------------------- file format
# Little-endian header, 148 bytes; see csrc/arena_io.cpp for the field table.
MAGIC = b"CXRLTRJ1"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<8sIIQQQII8QQ6I")
_HEADER_CRC = struct.Struct("<I")
HEADER_BYTES = _HEADER.size + _HEADER_CRC.size
SECTIONS = ("latents", "log_probs", "timesteps", "prompt_ids", "rewards", "advantages")


def _raw_bytes(t: torch.Tensor) -> memoryview:
    return memoryview(t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy())


def write_store_file(path: str | os.PathLike, store) -> None:
    """Write ``store`` in the checksummed format; ``<path>.tmp`` then rename, never a partial file."""
    payload = [_raw_bytes(getattr(store, name)) for name in SECTIONS]
    shape = list(store.latent_shape) + [0] * (8 - len(store.latent_shape))
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, DTYPE_CODES[store.dtype], store.num_samples, store.num_steps,
                          store.num_rewards, len(store.latent_shape), store.dtype.itemsize, *shape,
                          sum(p.nbytes for p in payload), *(zlib.crc32(p) for p in payload))
    tmp = f"{os.fspath(path)}.tmp"
    with open(tmp, "wb") as f:
        f.write(header + _HEADER_CRC.pack(zlib.crc32(header)))
        for p in payload:
            f.write(p)
    os.replace(tmp, path)


def read_store_file(path: str | os.PathLike, make_store):
    """Parse and verify a store file; ``make_store(N, T, shape, K, dtype)`` builds the empty store."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"trajectory file '{path}' does not exist")
    where = f"trajectory file '{path}'"
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise TrajectoryFormatError(f"{where} is truncated: {size} bytes, shorter than the {HEADER_BYTES}-byte header")
    with path.open("rb") as f:
        raw = f.read(HEADER_BYTES)
        if raw[:8] != MAGIC:
            raise TrajectoryFormatError(f"{where} is not a cxrl trajectory file (bad magic)")
        if _HEADER_CRC.unpack(raw[_HEADER.size:])[0] != zlib.crc32(raw[:_HEADER.size]):
            raise TrajectoryFormatError(f"{where} is corrupted: header checksum mismatch")
        _, version, code, n, t, k, ndim, itemsize, *rest = _HEADER.unpack(raw[:_HEADER.size])
        shape8, payload_bytes, crcs = rest[:8], rest[8], rest[9:]
        if version != FORMAT_VERSION:
            raise TrajectoryFormatError(f"{where} has format version {version}; this build reads version 1")
        if code not in CODE_DTYPES or not 1 <= ndim <= 8 or CODE_DTYPES[code].itemsize != itemsize:
            raise TrajectoryFormatError(f"{where} has an invalid header (dtype code {code}, ndim {ndim})")
        try:
            store = make_store(n, t, tuple(shape8[:ndim]), k, CODE_DTYPES[code])
        except ValueError as err:
            raise TrajectoryFormatError(f"{where} has an invalid header: {err}") from err
        targets = [getattr(store, name) for name in SECTIONS]
        expected = sum(x.numel() * x.element_size() for x in targets)
        if payload_bytes != expected:
            raise TrajectoryFormatError(f"{where} has a payload size that does not match its dimensions")
        if size != HEADER_BYTES + expected:
            what = "is truncated" if size < HEADER_BYTES + expected else "has unexpected trailing bytes"
            raise TrajectoryFormatError(f"{where} {what}: {size} bytes, expected {HEADER_BYTES + expected}")
        for name, target, crc in zip(SECTIONS, targets, crcs):
            data = f.read(target.numel() * target.element_size())
            if zlib.crc32(data) != crc:
                raise TrajectoryFormatError(f"{where} is corrupted: checksum mismatch in section '{name}'")
            flat = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            target.copy_(flat.view(target.dtype).view(target.shape))
    return store


# ------------------------------------------------------------------------------------ the store
def _int(value, name: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an int, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an int, got {type(value).__name__} {value!r}") from None


def _tensor(value, name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def _first_non_finite(values: torch.Tensor, name: str) -> None:
    bad = ~torch.isfinite(values)
    if bool(bad.any()):
        index = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"{name}{list(index)} is {values[index].item()} (must be finite)")


class StoreInputs:
    """Configuration and input validation shared by every store backend; writes go through the
    ``_store_*`` primitives that each backend implements. Every bad input raises ValueError naming
    the method and argument before anything is written."""

    def _configure(self, num_samples, num_steps, latent_shape, num_rewards, dtype, device) -> None:
        self.num_samples = _int(num_samples, "num_samples")
        self.num_steps = _int(num_steps, "num_steps")
        self.num_rewards = _int(num_rewards, "num_rewards")
        for name in ("num_samples", "num_steps", "num_rewards"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if isinstance(latent_shape, int) or not hasattr(latent_shape, "__iter__"):
            raise ValueError(f"latent_shape must be a tuple of ints such as (4, 64, 64), got {latent_shape!r}")
        self.latent_shape = tuple(_int(d, "latent_shape entries") for d in latent_shape)
        if not 1 <= len(self.latent_shape) <= 8 or min(self.latent_shape) < 1:
            raise ValueError(f"latent_shape must have 1 to 8 positive dimensions, got {self.latent_shape}")
        if dtype not in DTYPE_CODES:
            raise ValueError(f"dtype must be one of {sorted(str(d) for d in DTYPE_CODES)}, got {dtype!r}")
        self.dtype = dtype
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError) as err:
            raise ValueError(f"device {device!r} is not a torch device: {err}") from None

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
        start = _int(start, f"{method}: start")
        if start < 0 or start + batch > self.num_samples:
            raise ValueError(f"{method}: rows [{start}, {start + batch}) are outside the store's capacity of "
                             f"{self.num_samples} samples")
        return start

    def _latent_batch(self, method: str, name: str, x) -> torch.Tensor:
        x = _tensor(x, f"{method}: {name}")
        if x.dim() != 1 + len(self.latent_shape) or tuple(x.shape[1:]) != self.latent_shape or x.shape[0] < 1:
            raise ValueError(f"{method}: {name} must have shape [B, {', '.join(map(str, self.latent_shape))}] "
                             f"with B >= 1, got {list(x.shape)}")
        if x.dtype != self.dtype:
            raise ValueError(f"{method}: {name} has dtype {x.dtype}, the store holds {self.dtype}")
        return x

    def _vector(self, method: str, name: str, v, batch: int | None, floating: bool) -> torch.Tensor:
        """A 1-D tensor of length ``batch`` (any length >= 1 when None) and the right kind."""
        v = _tensor(v, f"{method}: {name}")
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
        step = _int(step, "write_step: step")
        if not 0 <= step < self.num_steps:
            raise ValueError(f"write_step: step {step} is outside [0, {self.num_steps})")
        lp = self._vector("write_step", "log_prob", log_prob, batch, floating=True).to(torch.float32)
        if isinstance(timestep, torch.Tensor):
            ts = timestep.expand(batch) if timestep.dim() == 0 else timestep
            ts = self._vector("write_step", "timestep", ts, batch, floating=False).to(torch.int64)
        else:
            ts = torch.full((batch,), _int(timestep, "write_step: timestep"), dtype=torch.int64, device=lp.device)
        self._store_latents(start, step + 1, x)
        self._store_step_scalars(start, step, lp, ts)

    def write_prompt_ids(self, start: int, ids: torch.Tensor) -> None:
        ids = self._vector("write_prompt_ids", "ids", ids, None, floating=False)
        self._store_rows("prompt_ids", self._rows("write_prompt_ids", start, ids.shape[0]), ids.to(torch.int64))

    def write_rewards(self, start: int, rewards: torch.Tensor) -> None:
        """Per-component rewards [B, K] ([B] when K == 1); every value must be finite."""
        r = _tensor(rewards, "write_rewards: rewards")
        if r.dim() == 1 and self.num_rewards == 1:
            r = r[:, None]
        if r.dim() != 2 or r.shape[1] != self.num_rewards or r.shape[0] < 1 or not r.is_floating_point():
            raise ValueError(f"write_rewards: rewards must be a float tensor [B, {self.num_rewards}], "
                             f"got {r.dtype} {list(r.shape)}")
        start = self._rows("write_rewards", start, r.shape[0])
        _first_non_finite(r, "write_rewards: rewards")
        self._store_rows("rewards", start, r.to(torch.float32))

    def write_advantages(self, start: int, advantages: torch.Tensor) -> None:
        a = self._vector("write_advantages", "advantages", advantages, None, floating=True)
        start = self._rows("write_advantages", start, a.shape[0])
        _first_non_finite(a, "write_advantages: advantages")
        self._store_rows("advantages", start, a.to(torch.float32))

    def _check_plan(self, plan) -> None:
        if not isinstance(plan, MinibatchPlan):
            raise ValueError(f"minibatches: plan must come from store.plan(), got {type(plan).__name__}")
        if (plan.num_samples, plan.num_steps) != (self.num_samples, self.num_steps):
            raise ValueError(f"minibatches: the plan is for {plan.num_samples} samples x {plan.num_steps} steps, "
                             f"the store holds {self.num_samples} x {self.num_steps}")


class ReferenceTrajectoryStore(StoreInputs):
    """The trajectory store on plain torch tensors (any device). API: docs/architecture.md."""

    backend = "reference"

    def __init__(self, num_samples: int, num_steps: int, latent_shape, num_rewards: int = 1,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
        self._configure(num_samples, num_steps, latent_shape, num_rewards, dtype, device)
        self._allocate()

    def _allocate(self) -> None:
        n, t, dev = self.num_samples, self.num_steps, self.device
        self._latents = torch.zeros((n, t + 1, *self.latent_shape), dtype=self.dtype, device=dev)
        self._log_probs = torch.zeros((n, t), dtype=torch.float32, device=dev)
        self._timesteps = torch.zeros((n, t), dtype=torch.int64, device=dev)
        self._prompt_ids = torch.zeros((n,), dtype=torch.int64, device=dev)
        self._rewards = torch.zeros((n, self.num_rewards), dtype=torch.float32, device=dev)
        self._advantages = torch.zeros((n,), dtype=torch.float32, device=dev)

    # storage primitives (the C++ store overrides these; inputs are already validated)
    def _store_latents(self, start: int, slot: int, x: torch.Tensor) -> None:
        self._latents[start:start + x.shape[0], slot].copy_(x)

    def _store_step_scalars(self, start: int, step: int, log_prob: torch.Tensor, timestep: torch.Tensor) -> None:
        self._log_probs[start:start + log_prob.shape[0], step].copy_(log_prob)
        self._timesteps[start:start + timestep.shape[0], step].copy_(timestep)

    def _store_rows(self, name: str, start: int, values: torch.Tensor) -> None:
        getattr(self, f"_{name}")[start:start + values.shape[0]].copy_(values)

    def _build_plan(self, n, t, batch_size, trained, seed):
        return reference_plan(n, t, batch_size, trained, seed)

    def plan(self, batch_size: int, timestep_fraction: float = 1.0, seed: int = 0) -> MinibatchPlan:
        """DDPO-style plan (see :func:`reference_plan`); the same seed always gives the same plan."""
        return make_plan(self, batch_size, timestep_fraction, seed, self._build_plan)

    def gather(self, plan: MinibatchPlan, m: int) -> Minibatch:
        """Minibatch ``m`` of ``plan`` alone (``minibatches`` is the efficient way to visit them all)."""
        self._check_plan(plan)
        return self._gather(plan, m, plan.sample_idx.to(self.device), plan.step_idx.to(self.device))

    def _gather(self, plan: MinibatchPlan, m: int, samples: torch.Tensor, steps: torch.Tensor) -> Minibatch:
        b, e = plan.bounds(m)
        s, j = samples[b:e], steps[b:e]
        flat = s * (self.num_steps + 1) + j  # x_t is slot j, x_prev slot j + 1 of the same sample
        latents = self._latents.view(-1, *self.latent_shape)
        return Minibatch(latents.index_select(0, flat), latents.index_select(0, flat + 1), self._timesteps[s, j],
                         self._log_probs[s, j], self._advantages[s], self._prompt_ids[s],
                         plan.sample_idx[b:e], plan.step_idx[b:e])

    def minibatches(self, plan: MinibatchPlan, device: str | torch.device | None = None) -> Iterator[Minibatch]:
        """Gather the plan's minibatches in order; ``device`` moves each one there (else the store's)."""
        self._check_plan(plan)
        dev = torch.device(device) if device is not None else self.device
        samples, steps = plan.sample_idx.to(self.device), plan.step_idx.to(self.device)  # one transfer per plan
        for m in range(len(plan)):
            mb = self._gather(plan, m, samples, steps)
            yield mb if dev == self.device else _to_device(mb, dev)

    def save(self, path: str | os.PathLike) -> None:
        write_store_file(path, self)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu"):
        return read_store_file(path, lambda n, t, shape, k, dtype: cls(n, t, shape, k, dtype, device))


def _to_device(mb: Minibatch, device: torch.device) -> Minibatch:
    moved = {k: v.to(device, non_blocking=True) for k, v in vars(mb).items() if k not in ("sample_idx", "step_idx")}
    return Minibatch(**moved, sample_idx=mb.sample_idx, step_idx=mb.step_idx)


# ---------------------------------------------------------------------------------- advantages
TRACKER_MAGIC = b"CXRLADV1"
_TRACKER_HEADER = struct.Struct("<8sIIQ")  # magic, version, crc32 of the JSON, JSON length
_TRACKER_CONFIG = ("mode", "window", "min_count", "group_size", "clip", "eps")


def _moments(values: list[float]) -> tuple[float, float]:
    """Two-pass mean and population std, summed left to right exactly like csrc/advantages.cpp."""
    total = 0.0
    for v in values:
        total += v
    mean = total / len(values)
    ss = 0.0
    for v in values:
        ss += (v - mean) * (v - mean)
    return mean, math.sqrt(ss / len(values))


class AdvantageTrackerBase:
    """Advantages that persist across epochs, keyed by prompt text (or by integer prompt ids).

    ``mode="per_prompt"`` (DDPO's PerPromptStatTracker): every prompt keeps a window of its last
    ``window`` rewards. In a ``compute`` call each prompt's rewards are first appended to its window
    (oldest dropped); then, while that window holds fewer than ``min_count`` rewards, the prompt's
    samples are normalised with the mean and std of *all* rewards passed to this call ("batch
    statistics"); once it holds ``min_count`` or more, with the mean and std of its window.
    ``mode="group"`` (group-relative): the samples of one prompt in this call are a group -- exactly
    ``group_size`` of them unless group_size is None -- normalised by the group's mean and std; no
    state is kept between calls. Both: A = (r - mean) / (std + eps), population std (divide by n),
    eps = 1e-6 by default, computed in float64, clipped to [-clip, clip], returned as float32.

    Prompt texts map to stable int ids in order of first appearance; the mapping and the windows are
    the tracker's state (``state_dict``/``load_state_dict``; ``save``/``load`` write a checksummed file).
    A tracker is keyed either by texts or by ids for its whole life; mixing them is an error.
    """

    def __init__(self, mode: str = "per_prompt", window: int = 16, min_count: int = 16,
                 group_size: int | None = None, clip: float = 5.0, eps: float = 1e-6):
        if mode not in ("per_prompt", "group"):
            raise ValueError(f"mode must be 'per_prompt' or 'group', got {mode!r}")
        self.mode, self.window, self.min_count = mode, _int(window, "window"), _int(min_count, "min_count")
        if self.window < 1 or not 1 <= self.min_count <= self.window:
            raise ValueError(f"need window >= 1 and 1 <= min_count <= window, got window={window}, min_count={min_count}")
        self.group_size = None if group_size is None else _int(group_size, "group_size")
        if self.group_size is not None and self.group_size < 1:
            raise ValueError(f"group_size must be >= 1 or None, got {group_size}")
        for name, value in (("clip", clip), ("eps", eps)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < math.inf:
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        self.clip, self.eps = float(clip), float(eps)
        self._key_kind: str | None = None  # "text" or "id", fixed by the first call
        self._prompts: list[str] = []
        self._prompt_ids: dict[str, int] = {}

    @property
    def prompt_to_id(self) -> dict[str, int]:
        return dict(self._prompt_ids)

    def compute(self, prompt_keys, rewards) -> torch.Tensor:
        """Advantages float32 [N] (on the rewards' device) for prompt texts (list[str]) or ids [N]."""
        r = _tensor(rewards, "compute: rewards")
        if r.dim() != 1 or r.numel() < 1 or not r.is_floating_point():
            raise ValueError(f"compute: rewards must be a 1-D float tensor [N], got {r.dtype} {list(r.shape)}")
        values = r.detach().to("cpu", torch.float64)
        _first_non_finite(values, "compute: rewards")
        ids, new_prompts = self._resolve_keys(prompt_keys, values.numel())
        if self.mode == "group" and self.group_size is not None:
            counts: dict[int, int] = {}
            for i in ids:
                counts[i] = counts.get(i, 0) + 1
            for key, count in counts.items():
                if count != self.group_size:
                    name = new_prompts.get(key) or (self._prompts[key] if self._key_kind == "text" else key)
                    raise ValueError(f"compute: prompt {name!r} has {count} samples in this batch; group mode "
                                     f"needs exactly group_size={self.group_size}")
        for key, text in sorted(new_prompts.items()):  # commit only after every check passed
            self._prompts.append(text)
            self._prompt_ids[text] = key
        adv = self._compute_ids(ids, values)
        return adv.to(r.device)

    def _resolve_keys(self, keys, n: int) -> tuple[list[int], dict[int, str]]:
        if isinstance(keys, torch.Tensor):
            kind = "id"
            if keys.dim() != 1 or keys.is_floating_point() or keys.dtype == torch.bool:
                raise ValueError(f"compute: prompt ids must be a 1-D integer tensor, got {keys.dtype} {list(keys.shape)}")
            ids, new = [int(k) for k in keys.tolist()], {}
        elif isinstance(keys, (list, tuple)):
            kind, ids, new = "text", [], {}
            pending = {}
            for i, text in enumerate(keys):
                if not isinstance(text, str):
                    raise ValueError(f"compute: prompt_keys[{i}] is {type(text).__name__}; pass prompt texts (str) or a LongTensor of ids")
                text = str(text)  # plain str (not numpy.str_) so state_dict loads with weights_only=True
                key = self._prompt_ids.get(text, pending.get(text))
                if key is None:
                    key = pending[text] = len(self._prompts) + len(pending)
                    new[key] = text
                ids.append(key)
        else:
            raise ValueError(f"compute: prompt_keys must be a list of prompt texts or a LongTensor, got {type(keys).__name__}")
        if len(ids) != n:
            raise ValueError(f"compute: {len(ids)} prompt keys for {n} rewards")
        if self._key_kind not in (None, kind):
            raise ValueError(f"compute: this tracker is keyed by prompt {self._key_kind}s; got prompt {kind}s")
        self._key_kind = kind
        return ids, new

    # --- state
    def state_dict(self) -> dict:
        keys, windows = self._export()
        return {"format": "cxrl.AdvantageTracker", "version": 1, **{k: getattr(self, k) for k in _TRACKER_CONFIG},
                "key_kind": self._key_kind, "prompts": list(self._prompts),
                "window_keys": keys, "window_values": windows}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or state.get("format") != "cxrl.AdvantageTracker":
            raise ValueError("load_state_dict: not an AdvantageTracker state (missing format='cxrl.AdvantageTracker')")
        for name in (*_TRACKER_CONFIG, "key_kind", "prompts", "window_keys", "window_values"):
            if name not in state:
                raise ValueError(f"load_state_dict: state is missing '{name}'")
        for name in _TRACKER_CONFIG:
            if state[name] != getattr(self, name):
                raise ValueError(f"load_state_dict: state has {name}={state[name]!r}, this tracker {getattr(self, name)!r}")
        prompts = state["prompts"]
        if state["key_kind"] not in (None, "text", "id") or not all(isinstance(p, str) for p in prompts) \
                or len(set(prompts)) != len(prompts):
            raise ValueError("load_state_dict: key_kind must be None/'text'/'id' and prompts distinct strings")
        keys, windows = state["window_keys"], state["window_values"]
        if len(keys) != len(windows) or any(len(w) > self.window for w in windows):
            raise ValueError(f"load_state_dict: window_keys/window_values mismatch or a window longer than {self.window}")
        self._import([int(k) for k in keys], [[float(v) for v in w] for w in windows])
        self._key_kind, self._prompts = state["key_kind"], list(prompts)
        self._prompt_ids = {p: i for i, p in enumerate(self._prompts)}

    def save(self, path: str | os.PathLike) -> None:
        data = json.dumps(self.state_dict()).encode()
        tmp = f"{os.fspath(path)}.tmp"
        with open(tmp, "wb") as f:
            f.write(_TRACKER_HEADER.pack(TRACKER_MAGIC, 1, zlib.crc32(data), len(data)) + data)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"advantage tracker file '{path}' does not exist")
        raw = path.read_bytes()
        if len(raw) < _TRACKER_HEADER.size or raw[:8] != TRACKER_MAGIC:
            raise TrajectoryFormatError(f"'{path}' is not a cxrl advantage tracker file (bad magic or truncated header)")
        _, version, crc, length = _TRACKER_HEADER.unpack(raw[:_TRACKER_HEADER.size])
        data = raw[_TRACKER_HEADER.size:]
        if version != 1 or len(data) != length:
            raise TrajectoryFormatError(f"advantage tracker file '{path}' is truncated or of unknown version {version}")
        if zlib.crc32(data) != crc:
            raise TrajectoryFormatError(f"advantage tracker file '{path}' is corrupted: checksum mismatch")
        state = json.loads(data)
        tracker = cls(**{k: state[k] for k in _TRACKER_CONFIG})
        tracker.load_state_dict(state)
        return tracker


class ReferenceAdvantageTracker(AdvantageTrackerBase):
    """Pure-Python statistics: the spec of ``cxrl._C.AdvantageStats``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._windows: dict[int, list[float]] = {}

    def _compute_ids(self, ids: list[int], rewards: torch.Tensor) -> torch.Tensor:
        values = rewards.tolist()
        members: dict[int, list[int]] = {}
        for i, key in enumerate(ids):
            members.setdefault(key, []).append(i)
        batch = _moments(values)
        out = [0.0] * len(values)
        for key, idx in members.items():
            group = [values[i] for i in idx]
            if self.mode == "group":
                mean, std = _moments(group)
            else:
                win = self._windows.setdefault(key, [])
                win.extend(group)
                del win[:max(0, len(win) - self.window)]
                mean, std = batch if len(win) < self.min_count else _moments(win)
            for i in idx:
                out[i] = max(-self.clip, min(self.clip, (values[i] - mean) / (std + self.eps)))
        return torch.tensor(out, dtype=torch.float64).to(torch.float32)

    def _export(self) -> tuple[list[int], list[list[float]]]:
        keys = sorted(self._windows)
        return keys, [list(self._windows[k]) for k in keys]

    def _import(self, keys: list[int], windows: list[list[float]]) -> None:
        if len(set(keys)) != len(keys):
            raise ValueError("load_state_dict: window_keys must be distinct")
        for w in windows:
            if not all(math.isfinite(v) for v in w):
                raise ValueError("load_state_dict: a stored reward is not finite")
        self._windows = {k: list(w) for k, w in zip(keys, windows)}
