"""The device backend: the store on torch tensors on the store's device (a GPU, typically).

Plans come from ``cxrl._C.build_plan``; a plan's indices cross to the device once, then every
minibatch is a vectorised gather (``index_select`` on the flattened latents, so x_t and x_prev are
two contiguous reads of one buffer) with no further host work, and moves to another GPU are
non-blocking. Results equal :class:`~cxrl.trajectory.reference.ReferenceTrajectoryStore`'s bit for bit.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch

from cxrl.trajectory import extension
from cxrl.trajectory.plan import Minibatch, MinibatchPlan
from cxrl.trajectory.sections import TensorSections
from cxrl.trajectory.store import TrajectoryStore


class TorchTrajectoryStore(TensorSections, TrajectoryStore):
    """The store on torch tensors on any device; the C++ extension only builds its plans."""

    backend = "torch"
    needs_extension = True

    def _build_plan(self, num_samples, num_steps, batch_size, trained_steps, seed):
        return extension.build_plan(num_samples, num_steps, batch_size, trained_steps, seed)

    def gather(self, plan: MinibatchPlan, m: int) -> Minibatch:
        """Minibatch ``m`` of ``plan`` alone (``minibatches`` is the efficient way to visit them all)."""
        self._check_plan(plan)
        return self._gather(plan, m, plan.sample_idx.to(self.device), plan.step_idx.to(self.device))

    def _gather(self, plan: MinibatchPlan, m: int, samples: torch.Tensor, steps: torch.Tensor) -> Minibatch:
        """Minibatch ``m`` given the plan's indices already on the store's device."""
        b, e = plan.bounds(m)
        s, j = samples[b:e], steps[b:e]
        flat = s * (self.num_steps + 1) + j  # x_t is slot j, x_prev slot j + 1 of the same sample
        latents = self._latents.view(-1, *self.latent_shape)
        return Minibatch(latents.index_select(0, flat), latents.index_select(0, flat + 1), self._timesteps[s, j],
                         self._log_probs[s, j], self._advantages[s], self._prompt_ids[s],
                         plan.sample_idx[b:e], plan.step_idx[b:e])

    def minibatches(self, plan: MinibatchPlan, device: str | torch.device | None = None) -> Iterator[Minibatch]:
        """Gather the plan's minibatches in order; ``device`` moves each one there (else the store's).
        Moves to a GPU are non-blocking (stream-ordered); to the CPU they block, since the host would
        otherwise read the tensors before the copy has landed."""
        self._check_plan(plan)
        dev = torch.device(device) if device is not None else self.device
        samples, steps = plan.sample_idx.to(self.device), plan.step_idx.to(self.device)  # one transfer per plan
        for m in range(len(plan)):
            mb = self._gather(plan, m, samples, steps)
            yield mb if dev == self.device else mb.to(dev, non_blocking=dev.type == "cuda")
