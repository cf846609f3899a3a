"""The specification of the trajectory store: plain, obviously correct code.

This is what the C++ store (``cxrl._C``) and the torch backend are tested against, bit for bit, and
the store that runs when the extension is not built (``CXRL_BUILD_EXT=0``). Everything observable is
defined here: the plan for a seed (:func:`~cxrl.trajectory.plan.reference_plan`), what a gather returns
(direct indexing below), and the file format (:mod:`cxrl.trajectory.format`). It is written for
clarity, not speed -- one index transfer per minibatch, blocking moves -- and runs on any torch device.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch

from cxrl.trajectory.plan import Minibatch, MinibatchPlan, reference_plan
from cxrl.trajectory.sections import TensorSections
from cxrl.trajectory.store import TrajectoryStore


class ReferenceTrajectoryStore(TensorSections, TrajectoryStore):
    """The store as specified; pure Python/torch. API: docs/architecture.md."""

    backend = "reference"

    def _build_plan(self, num_samples, num_steps, batch_size, trained_steps, seed):
        return reference_plan(num_samples, num_steps, batch_size, trained_steps, seed)

    def gather(self, plan: MinibatchPlan, m: int) -> Minibatch:
        """Minibatch ``m``: entry e of it is sample i = sample_idx[e] at step j = step_idx[e]."""
        self._check_plan(plan)
        b, e = plan.bounds(m)
        i, j = plan.sample_idx[b:e], plan.step_idx[b:e]
        si, sj = i.to(self.device), j.to(self.device)
        return Minibatch(x_t=self.latents[si, sj], x_prev=self.latents[si, sj + 1], timesteps=self.timesteps[si, sj],
                         log_probs=self.log_probs[si, sj], advantages=self.advantages[si],
                         prompt_ids=self.prompt_ids[si], sample_idx=i, step_idx=j)

    def minibatches(self, plan: MinibatchPlan, device: str | torch.device | None = None) -> Iterator[Minibatch]:
        """``gather(plan, m)`` for m in order, moved to ``device`` when one is given."""
        self._check_plan(plan)
        for m in range(len(plan)):
            mb = self.gather(plan, m)
            yield mb if device is None else mb.to(torch.device(device))
