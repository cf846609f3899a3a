"""Which policy a run ends with: the last one, or (``train.final_policy: best_probe``) the monitor probe's best.

Why: RL on a few hundred rollouts wanders. In the demo a policy that had improved on every held-out metric by
epoch 8 could lose posture and consistency by epoch 16 (docs/demo.md, "Session 9"), and the run's own training
rewards saw it happen on the validation prompts. At every monitor probe after the first update the policy's probe
images (validation-split prompts, fixed noises) are scored by the *training* reward models — the weighted sum the
RL optimises, never the held-out evaluators the end-of-run evaluation uses — and the trainable weights of the best
probe so far are kept. At the end the run switches to that policy only when it beats the last one on the paired
probe images by more than ``Z_SELECT`` standard errors; otherwise the last policy stands, as with ``last``.
"""
from __future__ import annotations

import math

import torch

Z_SELECT = 2.0   # an earlier probe replaces the last policy only when it is this many standard errors better


class ProbeSelection:
    """The best probe so far (its epochs, per-sample combined training reward and trainable weights) and the last."""

    def __init__(self):
        self.best: dict | None = None   # {"epochs": n, "scores": [float], "weights": {name: tensor}}
        self.last: dict | None = None   # {"epochs": n, "scores": [float]}

    def observe(self, epochs_trained: int, scores: torch.Tensor, weights: dict[str, torch.Tensor]) -> None:
        """Record the probe after ``epochs_trained`` epochs: ``scores`` [P * S] combined training reward of its
        images (non-finite: a sample a reward could not score), ``weights`` the policy's trainable tensors now."""
        scores = [float(v) for v in scores.double().flatten().tolist()]
        self.last = {"epochs": int(epochs_trained), "scores": scores}
        if self.best is None or _mean(scores) > _mean(self.best["scores"]):
            self.best = {"epochs": int(epochs_trained), "scores": scores,
                         "weights": {k: v.detach().clone().cpu() for k, v in weights.items()}}

    def choice(self) -> tuple[dict | None, str]:
        """(the best probe's record when it should replace the last policy, else None; why, in words)."""
        if self.best is None or self.last is None:
            return None, "no probe after an update: the last policy"
        if self.best["epochs"] == self.last["epochs"]:
            return None, f"the last probe (after {self.last['epochs']} epochs) scored highest"
        diff = torch.tensor(self.best["scores"], dtype=torch.float64) - torch.tensor(self.last["scores"], dtype=torch.float64)
        diff = diff[torch.isfinite(diff)]
        if diff.numel() < 2:
            return None, "too few scored probe samples to compare: the last policy"
        gain, stderr = float(diff.mean()), float(diff.std() / math.sqrt(diff.numel()))
        words = (f"the probe after {self.best['epochs']} epochs scored {gain:+.4g} over the last "
                 f"(after {self.last['epochs']}; {gain / max(stderr, 1e-12):.1f} standard errors, {diff.numel()} paired "
                 "validation samples, training rewards)")
        if gain > Z_SELECT * stderr:
            return self.best, words
        return None, words + f": within {Z_SELECT:g} standard errors, the last policy stands"

    def state_dict(self) -> dict:
        return {"best": self.best, "last": self.last}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.last = state.get("best"), state.get("last")


def _mean(scores: list[float]) -> float:
    finite = [v for v in scores if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else -math.inf
