"""The state a checkpoint keeps of a :class:`~cxrl.rl.trainer.Trainer`, group by group, and its restoration: what
makes a resumed run bitwise equal to an uninterrupted one (every epoch's randomness derives from this state)."""
from __future__ import annotations

import torch

from cxrl.rl.seeding import capture_rng_state, restore_rng_state


def state_groups(tr) -> dict:
    """The trainer's state by group: trained weights, optimizer, RNGs, advantage tracker, updater, EMA, monitor,
    final-policy selection."""
    rng_tensors, rng_json = capture_rng_state()
    weights = {k: v.detach() for k, v in tr.policy.named_trainable().items()}
    cache = tr.suite.cache
    run = {"epoch": tr.epoch, "run_id": tr.run_id, "updater": tr.updater.state_dict(), "rng": rng_json,
           "anchor_cache": {"path": str(cache.path), "namespace": cache.namespace, "entries": len(cache)}
           if cache is not None else None}
    groups = {"weights": weights, "optimizer": tr.optimizer.state_dict(), "trainer": run, "rng": rng_tensors,
              "tracker": tr.tracker.state_dict()}
    if tr.updater.ema is not None:
        groups["ema"] = tr.updater.ema.state_dict()
    if tr.monitor is not None:
        groups["monitor"] = tr.monitor.state_dict()
    if tr.selection is not None:
        groups["selection"] = tr.selection.state_dict()
    return groups


def load_state_groups(tr, groups: dict) -> None:
    """Restore :func:`state_groups`; weights that do not fit this model are an error naming them."""
    named = tr.policy.named_trainable()
    weights = groups["weights"]
    if set(weights) != set(named):
        missing, extra = sorted(set(named) - set(weights)), sorted(set(weights) - set(named))
        raise ValueError(f"checkpoint weights do not match this model (different model.* settings?): "
                         f"missing {missing[:3]}, unexpected {extra[:3]}")
    for k, p in named.items():
        if tuple(weights[k].shape) != tuple(p.shape):
            raise ValueError(f"checkpoint weights do not match this model (different model.* settings?): {k} has "
                             f"shape {tuple(weights[k].shape)} in the checkpoint, {tuple(p.shape)} here")
    with torch.no_grad():
        for k, p in named.items():
            p.copy_(weights[k])
    tr.optimizer.load_state_dict(groups["optimizer"])
    tr.tracker.load_state_dict(groups["tracker"])
    run = groups["trainer"]
    tr.updater.load_state_dict(run["updater"])
    if tr.updater.ema is not None:
        if "ema" not in groups:
            raise ValueError("train.ema_decay > 0 but the checkpoint has no EMA state")
        tr.updater.ema.load_state_dict(groups["ema"])
    if tr.monitor is not None and "monitor" in groups:
        tr.monitor.load_state_dict(groups["monitor"])
    if tr.selection is not None and "selection" in groups:
        tr.selection.load_state_dict(groups["selection"])
    restore_rng_state(groups["rng"], run["rng"])
    tr.epoch = int(run["epoch"])
