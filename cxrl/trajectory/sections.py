"""The store's six sections as plain torch tensors on the store's device, and their file I/O in Python:
the storage of the reference and torch backends (the C++ backend keeps its sections in an arena)."""
from __future__ import annotations

import os

import torch

from cxrl.trajectory.format import read_store_file, write_store_file


class TensorSections:
    """Mixin for a ``TrajectoryStore`` subclass: allocation, the write primitives, save and load."""

    def _allocate(self) -> None:
        n, t, dev = self.num_samples, self.num_steps, self.device
        self._latents = torch.zeros((n, t + 1, *self.latent_shape), dtype=self.dtype, device=dev)
        self._log_probs = torch.zeros((n, t), dtype=torch.float32, device=dev)
        self._timesteps = torch.zeros((n, t), dtype=torch.int64, device=dev)
        self._prompt_ids = torch.zeros((n,), dtype=torch.int64, device=dev)
        self._rewards = torch.zeros((n, self.num_rewards), dtype=torch.float32, device=dev)
        self._advantages = torch.zeros((n,), dtype=torch.float32, device=dev)

    def _store_latents(self, start: int, slot: int, x: torch.Tensor) -> None:
        self._latents[start:start + x.shape[0], slot].copy_(x)

    def _store_step_scalars(self, start: int, step: int, log_prob: torch.Tensor, timestep: torch.Tensor) -> None:
        self._log_probs[start:start + log_prob.shape[0], step].copy_(log_prob)
        self._timesteps[start:start + timestep.shape[0], step].copy_(timestep)

    def _store_rows(self, name: str, start: int, values: torch.Tensor) -> None:
        getattr(self, f"_{name}")[start:start + values.shape[0]].copy_(values)

    def save(self, path: str | os.PathLike) -> None:
        write_store_file(path, self)

    @classmethod
    def _from_file(cls, path: str | os.PathLike, device, **options):
        return read_store_file(path, lambda n, t, shape, k, dtype: cls(n, t, shape, k, dtype, device, **options))
