"""The reward-model interface every reward in cxrl follows, and the checks applied to its output.

A reward is a frozen, batched scorer:

    reward(images [B, C, H, W] float in [0, 1] on the policy's device, prompts: list[str],
           metadata: list[dict]) -> FloatTensor [B]

``metadata`` dicts carry at least ``"labels"`` (FloatTensor[14], CheXpert order) when they are known.
CXR reward models work on one channel: a 3-channel image is converted by ITU-R BT.601 luminance
(0.299 R + 0.587 G + 0.114 B), a 1-channel image is used as is; anything else is an error.
"""
from __future__ import annotations

import abc
import hashlib
import math
import traceback
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from cxrl.data.labeler import label_report
from cxrl.data.labels import NUM_LABELS, labels_to_tensor
from cxrl.hashing import state_dict_hash

LUMINANCE_WEIGHTS = (0.299, 0.587, 0.114)


class RewardError(ValueError):
    """A reward failed — its code raised, or it returned something that is not one finite score per image.
    The message names the reward (and, for code that raised, the file and line)."""


def code_location(err: BaseException, prefer_file: str | None = None) -> str:
    """``file:line`` where ``err`` was raised: the deepest frame in ``prefer_file`` (the user's reward file) when
    there is one, else the deepest frame."""
    if isinstance(err, SyntaxError) and err.filename:
        return f"{err.filename}:{err.lineno}"
    frames = traceback.extract_tb(err.__traceback__)
    mine = [f for f in frames if prefer_file and f.filename == prefer_file]
    frame = (mine or frames or [None])[-1]
    return f"{frame.filename}:{frame.lineno}" if frame is not None else "?"


def source_file(fn) -> str | None:
    """The file a function's code is in (None for builtins and other callables without Python code)."""
    code = getattr(fn, "__code__", None) or getattr(getattr(fn, "__call__", None), "__code__", None)
    return code.co_filename if code is not None else None


def file_digest(path: str | None) -> str:
    """sha256 of a file's bytes ('' when there is no such file: builtins, code typed into a console)."""
    if not path or not Path(path).is_file():
        return ""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def reward_code_error(name: str, err: Exception, prefer_file: str | None = None) -> RewardError:
    return RewardError(f"reward '{name}' raised {type(err).__name__}: {err} (at {code_location(err, prefer_file)})")


class RewardModel(abc.ABC):
    """Base class of a reward: subclass it for stateful rewards (loaded once, moved to the device).

    Subclasses implement :meth:`score` (called under ``torch.no_grad``) and may override :meth:`to`
    when they hold modules. ``comparative`` says whether RLCF compares this reward against the
    frozen anchor's image by default (``RewardSuite`` can override it per reward).
    """

    name: str = "reward"
    comparative: bool = True
    strict: bool = False   # True: a non-finite reward is an error; False: it is reported and excluded later
    # warnings about the inputs rather than the model (e.g. prompts without a labelled class); an ensemble keeps
    # them for its first member only, so they are not repeated once per member
    warn_about_inputs: bool = True

    def __init__(self, name: str | None = None, comparative: bool | None = None):
        if name is not None:
            self.name = name
        if comparative is not None:
            self.comparative = bool(comparative)
        self.device = torch.device("cpu")

    def to(self, device) -> "RewardModel":
        self.device = torch.device(device)
        for value in vars(self).values():
            if isinstance(value, torch.nn.Module):
                value.to(self.device)
        return self

    @abc.abstractmethod
    def score(self, images: torch.Tensor, prompts: list[str], metadata: list[dict]) -> torch.Tensor:
        """Rewards ``[B]`` for ``images [B, C, H, W]`` in [0, 1], their prompts and metadata."""

    def __call__(self, images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict] | None = None) -> torch.Tensor:
        prompts = list(prompts)
        metadata = list(metadata) if metadata is not None else [{} for _ in prompts]
        check_reward_inputs(self.name, images, prompts, metadata)
        with torch.no_grad():
            if type(self).__module__.split(".")[0] == "cxrl":   # cxrl's own rewards: a failure is a bug, keep it
                out = self.score(images, prompts, metadata)
            else:   # a user's RewardModel subclass: its failure is one line naming the reward and the line
                try:
                    out = self.score(images, prompts, metadata)
                except RewardError:
                    raise
                except Exception as err:
                    raise reward_code_error(self.name, err, source_file(type(self).score)) from err
        return check_reward_output(self.name, out, images.shape[0], images.device, require_finite=self.strict)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, comparative={self.comparative})"

    def fingerprint(self) -> str:
        """sha256 of what this reward's scores depend on besides its inputs: its class, every weight of the
        modules it holds (dtype included) and, for a class defined outside cxrl, its source file. It keys the
        anchor-score cache, so a reward retrained or edited in place never reuses stale anchor scores."""
        cls = type(self)
        h = hashlib.sha256(f"{cls.__module__}.{cls.__qualname__}".encode())
        for key, value in sorted(vars(self).items()):
            if isinstance(value, torch.nn.Module):
                h.update(f"|{key}:{state_dict_hash(value)}".encode())
        if cls.__module__.split(".")[0] != "cxrl":
            h.update(f"|source:{file_digest(source_file(cls.score))}".encode())
        return h.hexdigest()


def check_reward_inputs(name: str, images, prompts: list, metadata: list) -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"reward '{name}': images must be a tensor [B, C, H, W], got {shape}")
    if not images.is_floating_point():
        raise ValueError(f"reward '{name}': images must be floating point in [0, 1], got dtype {images.dtype}")
    if len(prompts) != images.shape[0]:
        raise ValueError(f"reward '{name}': {len(prompts)} prompts for a batch of {images.shape[0]} images")
    if len(metadata) != images.shape[0]:
        raise ValueError(f"reward '{name}': {len(metadata)} metadata dicts for a batch of {images.shape[0]} images")


def check_reward_output(name: str, out, batch: int, device: torch.device, *, require_finite: bool) -> torch.Tensor:
    """Validate what a reward returned: FloatTensor [B] on the images' device (finite if asked)."""
    if not isinstance(out, torch.Tensor):
        raise RewardError(f"reward '{name}' returned {type(out).__name__}; expected a FloatTensor of shape [{batch}]")
    if out.shape != (batch,):
        raise RewardError(f"reward '{name}' returned shape {tuple(out.shape)}; expected [{batch}] (one value per image)")
    if not out.is_floating_point():
        raise RewardError(f"reward '{name}' returned dtype {out.dtype}; expected a floating-point tensor")
    if out.device.type != torch.device(device).type:
        raise RewardError(f"reward '{name}' returned a tensor on {out.device}; the images were on {device}")
    if require_finite and not bool(torch.isfinite(out).all()):
        bad = (~torch.isfinite(out)).nonzero().flatten().tolist()
        raise RewardError(f"reward '{name}' returned non-finite values at batch positions {bad}")
    return out.float()


def to_grayscale(images: torch.Tensor, name: str = "reward") -> torch.Tensor:
    """[B, C, H, W] -> [B, 1, H, W]: 1 channel as is, 3 channels by BT.601 luminance."""
    c = images.shape[1]
    if c == 1:
        return images
    if c == 3:
        w = torch.tensor(LUMINANCE_WEIGHTS, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        return (images * w).sum(dim=1, keepdim=True)
    raise ValueError(f"reward '{name}': images must have 1 or 3 channels (CXR rewards convert RGB by luminance), got {c}")


def prepare_cxr(images: torch.Tensor, resolution: int, name: str = "reward", dtype=torch.float32) -> torch.Tensor:
    """Grayscale, clamp to [0, 1] and resize (antialiased bilinear) to ``resolution`` x ``resolution``.

    The resize runs in float32 at least: antialiased bilinear has no bfloat16/float16 kernel on the CPU, and a
    reduced-precision resize would add rounding before the model's own."""
    x = to_grayscale(images, name).clamp(0.0, 1.0)
    if x.shape[-2:] != (resolution, resolution):
        down = x.shape[-1] > resolution or x.shape[-2] > resolution
        x = x.to(torch.promote_types(x.dtype, torch.float32))
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=down)
    return x.to(dtype)


def labels_from_metadata(name: str, prompts: list[str], metadata: list[dict], device) -> torch.Tensor:
    """Stack ``metadata[i]["labels"]`` into [B, NUM_LABELS]; label the prompt text with the report labeler when absent."""
    rows = []
    for i, (prompt, meta) in enumerate(zip(prompts, metadata)):
        labels = meta.get("labels") if isinstance(meta, dict) else None
        if labels is None:
            labels = labels_to_tensor(label_report(prompt))
        labels = torch.as_tensor(labels, dtype=torch.float32).flatten()
        if labels.numel() != NUM_LABELS:
            raise ValueError(f"reward '{name}': metadata[{i}]['labels'] has {labels.numel()} entries; "
                             f"expected {NUM_LABELS} (CheXpert order)")
        rows.append(labels)
    return torch.stack(rows).to(device)


def is_finite_number(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)
