"""The C++ extension ``cxrl._C`` -- or ``None``, with the reason in ``cxrl.backend_report()`` -- and
the two conversions every caller of it needs (plans back as tensors, tensors out as buffers)."""
from __future__ import annotations

import torch

from cxrl import _backend

STATUS = _backend.cpp_store()
if STATUS.active:
    from cxrl import _C
else:
    _C = None


def build_plan(num_samples: int, num_steps: int, batch_size: int, trained_steps: int, seed: int):
    """``cxrl._C.build_plan`` as int64 tensors; equal to :func:`cxrl.trajectory.plan.reference_plan`."""
    return tuple(torch.from_numpy(a) for a in _C.build_plan(num_samples, num_steps, batch_size, trained_steps, seed))


def as_buffer(t: torch.Tensor):
    """A numpy view of a contiguous CPU tensor for the buffer protocol; 2-byte floats travel as raw
    16-bit words because numpy has no bfloat16 (the C++ copies bytes, it never interprets them)."""
    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.view(torch.int16)
    return t.numpy()
