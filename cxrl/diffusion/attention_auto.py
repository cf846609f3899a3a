"""The ``auto`` attention backend: one decision per shape family, kept on disk per device.

Why per *family*: the rollout and the PPO recompute must run the same attention arithmetic, or the
recomputed log-probs differ from the stored ones by more than a PPO clip range of 1e-4 can absorb.
They differ in batch size (CFG doubles the rollout batch; minibatches are smaller) and in train vs
infer, so neither may be part of the key. A family is (self or cross, bucketed query length, bucketed
key length for cross-attention, head dim, dtype, device type); lengths are bucketed to the next
power of two. The first call of a family decides; every later call of that family, sampling or
training, in this process or (through the cache file) a later one on the same device, reuses it.

How a family is decided on CUDA: each available backend is timed on fresh inputs of the first call's
shape, forward (what sampling runs) plus forward+backward (what the recompute runs), and the smallest
sum wins. SDPA is always a candidate, so ``auto`` is never slower than SDPA alone. During CUDA-graph
capture nothing can be timed: an undecided family then takes SDPA for the rest of the process.
On devices that are not timed (the CPU) ``auto`` means SDPA and nothing is written to disk.

Cache file: ``<dir>/<device name>-torch<version>-triton<version>.json``, ``<dir>`` from
``$CXRL_ATTENTION_CACHE_DIR`` or ``~/.cache/cxrl/attention``. Writes are atomic (temp file +
``os.replace``) and merge with what other processes (ranks) wrote meanwhile: a family another process
decided first is adopted. An unreadable file gives one warning line and its families are decided again.
Delete the file to re-decide (e.g. after installing xformers).
"""
from __future__ import annotations

import functools
import json
import logging
import os
import re
import statistics
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

log = logging.getLogger(__name__)

CACHE_DIR_ENV = "CXRL_ATTENTION_CACHE_DIR"
MODE_ENV = "CXRL_ATTENTION_AUTO"   # 'time': time every candidate, also where a measured rule would pick SDPA
# On Hopper (sm90+) SDPA's fused kernels beat cxrl's Triton kernel at every SD-1.5 attention shape measured on an H200
# (16 of 16 rows, forward and forward+backward, 1.0-4x; 12 of 12 families timed by auto in two trainings; GPU suite,
# 2026-12-04, docs/benchmarks.md "GPU results"), while timing the Triton candidate autotunes it per family: 84 s of
# the first SD-1.5 epoch. Such a device takes SDPA untimed unless CXRL_ATTENTION_AUTO=time.
SDPA_MEASURED_FASTEST_FROM_CAPABILITY = (9, 0)
CANDIDATES = ("sdpa", "triton", "xformers")
_FORMAT = 1
_TIMING_REPS = 5

# timer(name, run, q, k, v, scale) -> milliseconds; run(q, k, v, scale) is the backend's attention call
Timer = Callable[..., float]


@dataclass(frozen=True)
class Decision:
    backend: str
    why: str


def _bucket(length: int) -> int:
    return 1 << max(0, int(length) - 1).bit_length()


def shape_family(q: torch.Tensor, k: torch.Tensor, cross: bool) -> str:
    """The key ``auto`` decides once for: no batch size, no train/infer, lengths bucketed."""
    dtype = str(q.dtype).replace("torch.", "")
    lengths = f"N<={_bucket(q.shape[2])}" + (f" Nk<={_bucket(k.shape[2])}" if cross else "")
    return f"{'cross' if cross else 'self'} {lengths} D{q.shape[-1]} {dtype} {q.device.type}"


def _median_ms(fn) -> float:
    for _ in range(2):  # the first calls compile / autotune the Triton kernels
        fn()
    times = []
    for _ in range(_TIMING_REPS):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def time_on_cuda(name: str, run, q, k, v, scale) -> float:
    """Median forward ms plus median forward+backward ms on fresh inputs shaped like ``q, k, v``."""
    with torch.inference_mode(False), torch.no_grad():
        fresh = [torch.randn_like(t) for t in (q, k, v)]
        forward = _median_ms(lambda: run(*fresh, scale))
    with torch.inference_mode(False), torch.enable_grad():
        leaves = [t.detach().requires_grad_() for t in fresh]

        def train_step():
            out = run(*leaves, scale)
            out.backward(torch.ones_like(out))

        return forward + _median_ms(train_step)


def measured_rule(device: torch.device) -> Decision | None:
    """SDPA without timing on devices where measurements showed it fastest (:func:`rule_for_capability`); None: time
    the candidates. Such a decision is not written to the cache file, which holds timed decisions only."""
    if device.type != "cuda":
        return None
    return rule_for_capability(torch.cuda.get_device_capability(device))


def rule_for_capability(capability: tuple[int, int]) -> Decision | None:
    if os.environ.get(MODE_ENV, "").strip().lower() == "time" or tuple(capability) < SDPA_MEASURED_FASTEST_FROM_CAPABILITY:
        return None
    return Decision("sdpa", f"sm{capability[0]}{capability[1]}: SDPA measured fastest at every SD-1.5 shape on an H200 "
                            f"(docs/benchmarks.md); not timed ({MODE_ENV}=time times it)")


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "cxrl" / "attention")


@functools.lru_cache(maxsize=None)
def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def cache_file(cache_dir: Path, device_name: str) -> Path:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    slug = re.sub(r"[^A-Za-z0-9.+_-]+", "-", f"{device_name}-torch{torch.__version__}-triton{triton_version}")
    return Path(cache_dir) / f"{slug}.json"


class AutoAttention:
    """Decides and remembers the ``auto`` backend per shape family.

    ``runners``: backend name -> ``run(q, k, v, scale)``; ``unavailable(name, q)``: why a backend cannot
    run on tensors like ``q`` (None when it can); ``timer``: see :func:`time_on_cuda`; ``timed_devices``:
    device types on which ``auto`` times backends (elsewhere it means SDPA).
    """

    def __init__(self, runners: dict, unavailable: Callable[[str, torch.Tensor], str | None], *,
                 timer: Timer = time_on_cuda, cache_dir: str | Path | None = None,
                 timed_devices: tuple[str, ...] = ("cuda",)):
        self.runners = runners
        self.unavailable = unavailable
        self.timer = timer
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.timed_devices = timed_devices
        self._decisions: dict[tuple[str, str], Decision] = {}  # (device name, family) -> decision
        self._disk: dict[str, dict[str, Decision]] = {}  # device name -> the cache file's decisions
        self._lock = threading.RLock()  # one decision at a time: timing is done once per family

    def path_for(self, device_name: str) -> Path:
        return cache_file(self.cache_dir if self.cache_dir is not None else default_cache_dir(), device_name)

    def choose(self, q, k, v, scale, cross: bool) -> Decision:
        if q.device.type not in self.timed_devices:
            return Decision("sdpa", f"auto on {q.device.type} (the fast kernels need CUDA)")
        device_name, family = _device_name(q.device), shape_family(q, k, cross)
        with self._lock:
            known = self._decisions.get((device_name, family))
            if known is not None:
                return known
            decision = self._from_disk(device_name, family, q)
            if decision is None and q.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
                decision = Decision("sdpa", "no timing inside CUDA-graph capture; kept for this process")
            elif decision is None:
                decision = measured_rule(q.device) or self._save(device_name, family, self._decide(q, k, v, scale, family), q)
            self._decisions[(device_name, family)] = decision
            return decision

    def _decide(self, q, k, v, scale, family: str) -> Decision:
        timings: dict[str, float] = {}
        notes: list[str] = []
        for name in CANDIDATES:
            reason = self.unavailable(name, q)
            if reason is not None:
                notes.append(f"{name} off ({reason})")
                continue
            try:
                timings[name] = self.timer(name, self.runners[name], q, k, v, scale)
            except Exception as err:  # a backend that fails on this shape is reported and skipped
                notes.append(f"{name} failed on this shape ({type(err).__name__}: {err})")
        if not timings:
            raise RuntimeError(f"attention auto: no backend ran for {family}: {'; '.join(notes)}")
        best = min(timings, key=timings.get)
        measured = ", ".join(f"{n} {t:.3f} ms" for n, t in sorted(timings.items(), key=lambda x: x[1]))
        why = f"fastest by one-time timing of fwd + fwd+bwd ({measured})" + (f"; {'; '.join(notes)}" if notes else "")
        return Decision(best, why)

    # -- the cache file ------------------------------------------------------------------------
    def _read(self, path: Path, warn: bool = True) -> dict[str, Decision]:
        """Decisions in ``path``; {} when it does not exist or is unreadable (one warning line then)."""
        if not path.exists():
            return {}
        try:
            data = json.loads(path.read_text())
            if data.get("format") != _FORMAT or not isinstance(data.get("decisions"), dict):
                raise ValueError(f"expected format {_FORMAT} with a 'decisions' object")
            return {family: Decision(str(entry["backend"]), str(entry["why"]))
                    for family, entry in data["decisions"].items()}
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as err:
            if warn:
                log.warning("attention auto: ignoring unreadable decision cache %s (%s: %s); deciding again",
                            path, type(err).__name__, err)
            return {}

    def _runnable(self, decision: Decision | None, q: torch.Tensor) -> bool:
        return decision is not None and decision.backend in CANDIDATES and self.unavailable(decision.backend, q) is None

    def _from_disk(self, device_name: str, family: str, q: torch.Tensor) -> Decision | None:
        """The cached decision for ``family`` if it can run on tensors like ``q``; None to decide anew."""
        path = self.path_for(device_name)
        if device_name not in self._disk:  # read once per device; a bad file warns once
            self._disk[device_name] = self._read(path)
        cached = self._disk[device_name].get(family)
        if cached is None:
            return None
        if not self._runnable(cached, q):
            log.warning("attention auto: cached choice %r for %s cannot run now; deciding again",
                        cached.backend, family)
            return None
        return Decision(cached.backend, f"{cached.why} [from {path}]")

    def _save(self, device_name: str, family: str, decision: Decision, q: torch.Tensor) -> Decision:
        """Write ``decision`` unless another process saved this family first; returns the one to use."""
        path = self.path_for(device_name)
        on_disk = self._read(path, warn=False)  # _from_disk already warned about a bad file
        theirs = on_disk.get(family)
        if self._runnable(theirs, q):
            return Decision(theirs.backend, f"{theirs.why} [from {path}]")
        on_disk[family] = decision
        payload = {"format": _FORMAT, "device": device_name, "torch": torch.__version__,
                   "decisions": {f: {"backend": d.backend, "why": d.why} for f, d in sorted(on_disk.items())}}
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                json.dump(payload, f, indent=1)
            os.replace(tmp, path)
        except OSError as err:
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)  # a read-only home must not stop training: the choice still holds in-process
            log.warning("attention auto: could not write decision cache %s (%s); keeping it in memory only", path, err)
        return decision
