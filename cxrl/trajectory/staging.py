"""The C++ store's staging buffer, and the rule that makes reusing it safe.

Each gather writes its minibatch into the same host tensors (pinned when the arena is), so the
buffer is allocated once per plan size rather than once per minibatch. A copy out of it to a GPU is
asynchronous when the memory is pinned: it may still be reading the buffer after ``.to()`` returns.
So whoever enqueues such a copy records an event after it and hands it over (:meth:`release_after`);
the next :meth:`claim` -- the only way to get the buffer for writing -- first waits for that event.
"""
from __future__ import annotations

import torch

from cxrl.trajectory.extension import as_buffer
from cxrl.trajectory.plan import DATA_FIELDS


class StagingBuffer:
    """Reusable gather targets for the minibatch fields, grown only when a plan needs more rows."""

    def __init__(self, latent_shape: tuple[int, ...], dtype: torch.dtype, pinned: bool):
        self.latent_shape, self.dtype, self.pinned = latent_shape, dtype, pinned
        self.rows = 0
        self._tensors: dict[str, torch.Tensor] = {}
        self._buffers: list = []
        self._pending = None  # an event that completes when the last copy out of the buffer has

    def claim(self, rows: int) -> tuple[dict[str, torch.Tensor], list]:
        """The buffer for writing ``rows`` rows, as tensors by field and as buffers in ``DATA_FIELDS``
        order (the C++ gather's arguments). Waits until no copy is still reading it."""
        self.wait()
        if rows > self.rows:
            empty = lambda shape, dtype: torch.empty(shape, dtype=dtype, pin_memory=self.pinned)  # noqa: E731
            latent = (rows, *self.latent_shape)
            shapes = {"x_t": (latent, self.dtype), "x_prev": (latent, self.dtype),
                      "timesteps": ((rows,), torch.int64), "log_probs": ((rows,), torch.float32),
                      "advantages": ((rows,), torch.float32), "prompt_ids": ((rows,), torch.int64)}
            self._tensors = {name: empty(*shapes[name]) for name in DATA_FIELDS}
            self._buffers = [as_buffer(self._tensors[name]) for name in DATA_FIELDS]
            self.rows = rows
        return self._tensors, self._buffers

    def release_after(self, event) -> None:
        """Copies out of the buffer were enqueued before ``event`` was recorded: the next claim waits
        for it (``event.synchronize()``)."""
        self._pending = event

    def wait(self) -> None:
        """Block until every copy handed over with :meth:`release_after` has finished."""
        if self._pending is not None:
            self._pending.synchronize()
            self._pending = None
