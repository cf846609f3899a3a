"""Advantages that persist across epochs, keyed by prompt text (or by integer prompt ids).

:class:`AdvantageTrackerBase` is the API -- validation, prompt ids, state, files -- and the exact
semantics; the statistics behind it are :class:`ReferenceStats` (pure Python, the specification of
``cxrl._C.AdvantageStats``) or :class:`CppStats` (the C++). :class:`AdvantageTracker` uses the C++
when the extension is built, else the reference, and records which; results agree to float rounding.
"""
from __future__ import annotations

import math
import os

import torch

from cxrl import _backend
from cxrl.config.sections import ADVANTAGE_MODES, GROUP_ADVANTAGES
from cxrl.trajectory.extension import _C, STATUS
from cxrl.trajectory.format import read_tracker_file, write_tracker_file
from cxrl.trajectory.inputs import check_finite, checked_int, checked_tensor

_TRACKER_CONFIG = ("mode", "window", "min_count", "group_size", "clip", "eps")
_MODE_CODES = {"per_prompt": 0, "group": 1, "group_batch": 2}   # cxrl._C.AdvantageStats' codes


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


class ReferenceStats:
    """The statistics in pure Python: the spec of ``cxrl._C.AdvantageStats`` (semantics in
    :class:`AdvantageTrackerBase`). ``compute`` takes prompt ids and float64 rewards, already checked."""

    def __init__(self, mode: str, window: int, min_count: int, clip: float, eps: float):
        self.mode, self.window, self.min_count, self.clip, self.eps = mode, window, min_count, clip, eps
        self._windows: dict[int, list[float]] = {}

    def compute(self, ids: list[int], rewards: torch.Tensor) -> torch.Tensor:
        values = rewards.tolist()
        members: dict[int, list[int]] = {}
        for i, key in enumerate(ids):
            members.setdefault(key, []).append(i)
        out = [0.0] * len(values)
        if self.mode == "group_batch":
            centred = [0.0] * len(values)
            for idx in members.values():
                mean = _moments([values[i] for i in idx])[0]
                for i in idx:
                    centred[i] = values[i] - mean
            scale = _moments(centred)[1] + self.eps
            out = [max(-self.clip, min(self.clip, c / scale)) for c in centred]
            return torch.tensor(out, dtype=torch.float64).to(torch.float32)
        batch = _moments(values)
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

    def export(self) -> tuple[list[int], list[list[float]]]:
        keys = sorted(self._windows)
        return keys, [list(self._windows[k]) for k in keys]

    def load(self, keys: list[int], windows: list[list[float]]) -> None:
        if len(set(keys)) != len(keys):
            raise ValueError("load_state_dict: window_keys must be distinct")
        for w in windows:
            if not all(math.isfinite(v) for v in w):
                raise ValueError("load_state_dict: a stored reward is not finite")
        self._windows = {k: list(w) for k, w in zip(keys, windows)}


class CppStats:
    """``cxrl._C.AdvantageStats`` behind the interface of :class:`ReferenceStats`."""

    def __init__(self, mode: str, window: int, min_count: int, group_size: int | None, clip: float, eps: float):
        self._stats = _C.AdvantageStats(_MODE_CODES[mode], window, min_count, group_size or 0, clip, eps)

    def compute(self, ids: list[int], rewards: torch.Tensor) -> torch.Tensor:
        keys = torch.tensor(ids, dtype=torch.int64).numpy()
        return torch.from_numpy(self._stats.compute(keys, rewards.contiguous().numpy()))

    def export(self) -> tuple[list[int], list[list[float]]]:
        keys, counts, values = self._stats.export_state()
        windows, off = [], 0
        for c in counts.tolist():
            windows.append(values[off:off + c].tolist())
            off += c
        return keys.tolist(), windows

    def load(self, keys: list[int], windows: list[list[float]]) -> None:
        flat = [v for w in windows for v in w]
        as_np = lambda xs, dtype: torch.tensor(xs, dtype=dtype).reshape(-1).numpy()  # noqa: E731
        self._stats.import_state(as_np(keys, torch.int64), as_np([len(w) for w in windows], torch.int64),
                                 as_np(flat, torch.float64))


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
    ``mode="group_batch"``: the groups and group means of ``"group"``, but one std for the whole call: the std
    of every group-centred reward c = r - mean_group, A = c / (std_c + eps) (Dr. GRPO's point: dividing each
    group by its own std blows a prompt whose images barely differ up to the scale of one whose images differ
    a lot, so its noise moves the policy as much as the other's signal).

    Prompt texts map to stable int ids in order of first appearance; the mapping and the windows are
    the tracker's state (``state_dict``/``load_state_dict``; ``save``/``load`` write a checksummed file).
    A tracker is keyed either by texts or by ids for its whole life; mixing them is an error.
    Subclasses provide the statistics (``_make_stats``) and name them in ``backend``.
    """

    backend: str

    def __init__(self, mode: str = "per_prompt", window: int = 16, min_count: int = 16,
                 group_size: int | None = None, clip: float = 5.0, eps: float = 1e-6):
        if mode not in _MODE_CODES:
            raise ValueError(f"mode must be one of {ADVANTAGE_MODES}, got {mode!r}")
        self.mode = mode
        self.window, self.min_count = checked_int(window, "window"), checked_int(min_count, "min_count")
        if self.window < 1 or not 1 <= self.min_count <= self.window:
            raise ValueError(f"need window >= 1 and 1 <= min_count <= window, got window={window}, min_count={min_count}")
        self.group_size = None if group_size is None else checked_int(group_size, "group_size")
        if self.group_size is not None and self.group_size < 1:
            raise ValueError(f"group_size must be >= 1 or None, got {group_size}")
        for name, value in (("clip", clip), ("eps", eps)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < math.inf:
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        self.clip, self.eps = float(clip), float(eps)
        self._key_kind: str | None = None  # "text" or "id", fixed by the first call
        self._prompts: list[str] = []
        self._prompt_ids: dict[str, int] = {}
        self._stats = self._make_stats()

    def _make_stats(self):
        """The statistics object (``compute``/``export``/``load`` of :class:`ReferenceStats`)."""
        raise NotImplementedError(f"{type(self).__name__} does not say which statistics it runs (_make_stats)")

    @property
    def prompt_to_id(self) -> dict[str, int]:
        return dict(self._prompt_ids)

    def compute(self, prompt_keys, rewards) -> torch.Tensor:
        """Advantages float32 [N] (on the rewards' device) for prompt texts (list[str]) or ids [N]."""
        r = checked_tensor(rewards, "compute: rewards")
        if r.dim() != 1 or r.numel() < 1 or not r.is_floating_point():
            raise ValueError(f"compute: rewards must be a 1-D float tensor [N], got {r.dtype} {list(r.shape)}")
        values = r.detach().to("cpu", torch.float64)
        check_finite(values, "compute: rewards")
        ids, new_prompts = self._resolve_keys(prompt_keys, values.numel())
        if self.mode in GROUP_ADVANTAGES and self.group_size is not None:
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
        return self._stats.compute(ids, values).to(r.device)

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
                    raise ValueError(f"compute: prompt_keys[{i}] is {type(text).__name__}; "
                                     "pass prompt texts (str) or a LongTensor of ids")
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
        keys, windows = self._stats.export()
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
        self._stats.load([int(k) for k in keys], [[float(v) for v in w] for w in windows])
        self._key_kind, self._prompts = state["key_kind"], list(prompts)
        self._prompt_ids = {p: i for i, p in enumerate(self._prompts)}

    def save(self, path: str | os.PathLike) -> None:
        write_tracker_file(path, self.state_dict())

    @classmethod
    def load(cls, path: str | os.PathLike):
        state = read_tracker_file(path)
        tracker = cls(**{k: state[k] for k in _TRACKER_CONFIG})
        tracker.load_state_dict(state)
        return tracker


class ReferenceAdvantageTracker(AdvantageTrackerBase):
    """The tracker on the pure-Python statistics (the spec the C++ is tested against)."""

    backend = "reference"

    def _make_stats(self) -> ReferenceStats:
        return ReferenceStats(self.mode, self.window, self.min_count, self.clip, self.eps)


class AdvantageTracker(AdvantageTrackerBase):
    """Per-prompt / group advantages; exact semantics in :class:`AdvantageTrackerBase`. Statistics in
    C++ (``cxrl._C.AdvantageStats``) when the extension is built, else the Python reference."""

    def _make_stats(self):
        if _C is None:
            self.backend = "reference"
            _backend.record_choice("advantage_tracker", f"reference ({STATUS.reason})")
            return ReferenceStats(self.mode, self.window, self.min_count, self.clip, self.eps)
        self.backend = "cpp"
        _backend.record_choice("advantage_tracker", "cpp (cxrl._C.AdvantageStats)")
        return CppStats(self.mode, self.window, self.min_count, self.group_size, self.clip, self.eps)
