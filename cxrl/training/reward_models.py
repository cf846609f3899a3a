"""Training loops of the project's own reward models (CPU-friendly; data rendered once, held in memory).

Each ``train_*`` takes tensors (images [N, 1, H, W] in [0, 1], labels [N, NUM_LABELS], prompts) and the
``reward_training`` config section (:class:`cxrl.config.RewardTrainingConfig`), trains with AdamW
and a cosine learning rate, evaluates on a held-out slice, and returns the frozen reward model plus a dict
of measured validation numbers (written into the model's config.json by the command).
Augmentations model what the reward will see on generated images: intensity/contrast jitter and film
noise for all three; random posture for the diagnostic and consistency models (posture is the posture
reward's business, the others must be invariant to it).
"""
from __future__ import annotations

import logging
import math
import time

import torch

from cxrl.config import RewardTrainingConfig
from cxrl.data.labels import CHEXPERT_LABELS
from cxrl.eval.auroc import macro_auroc
from cxrl.rewards.consistency import ConsistencyReward, DualEncoder, info_nce_loss
from cxrl.rewards.diagnostic import CXRClassifier, DiagnosticReward, masked_bce_loss, unmentioned_as_negative
from cxrl.rewards.posture import IDENTITY_POSTURE, PostureNet, PostureReward, pose_images, sample_postures

log = logging.getLogger(__name__)


def _split(n: int, val_fraction: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    perm = torch.randperm(n, generator=gen)
    n_val = max(1, int(round(n * val_fraction)))
    return perm[n_val:], perm[:n_val]


def _jitter_intensity(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    b = x.shape[0]
    gain = 1 + 0.15 * (torch.rand(b, 1, 1, 1, generator=gen) * 2 - 1)
    bias = 0.05 * (torch.rand(b, 1, 1, 1, generator=gen) * 2 - 1)
    gamma = torch.exp(0.2 * (torch.rand(b, 1, 1, 1, generator=gen) * 2 - 1))
    noise = 0.02 * torch.rand(b, 1, 1, 1, generator=gen) * torch.randn(x.shape, generator=gen)
    return ((x.clamp(0, 1) ** gamma) * gain + bias + noise).clamp(0, 1)


def _schedule(opt, total_steps: int, base_lr: float):
    warm = max(1, total_steps // 50)

    def lr_at(step: int) -> float:
        if step < warm:
            return base_lr * (step + 1) / warm
        return base_lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total_steps - warm)))

    def set_step(step: int) -> None:
        for g in opt.param_groups:
            g["lr"] = lr_at(step)

    return set_step


def _loop(params, cfg: RewardTrainingConfig, n_train: int, step_fn, name: str) -> list[float]:
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, n_train // cfg.batch_size)
    set_step = _schedule(opt, cfg.epochs * steps_per_epoch, cfg.learning_rate)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    step, history = 0, []
    t0 = time.perf_counter()
    for epoch in range(cfg.epochs):
        perm = torch.randperm(n_train, generator=gen)
        running = 0.0
        for b in range(steps_per_epoch):
            idx = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            set_step(step)
            loss = step_fn(idx, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 5.0)
            opt.step()
            running += float(loss.detach())
            step += 1
            if cfg.log_every and step % cfg.log_every == 0:
                log.info("[%s] step %d loss %.4f", name, step, float(loss))
        history.append(running / steps_per_epoch)
        log.info("[%s] epoch %d/%d loss %.4f (%.0fs)", name, epoch + 1, cfg.epochs, history[-1], time.perf_counter() - t0)
    return history


def _augment_posture(x: torch.Tensor, cfg: RewardTrainingConfig, gen: torch.Generator) -> torch.Tensor:
    if cfg.aug_posture <= 0:
        return x
    psi = sample_postures(x.shape[0], gen, cfg.max_scale * cfg.aug_posture, cfg.max_shift * cfg.aug_posture,
                          cfg.max_rotation * cfg.aug_posture, identity_fraction=0.3)
    return pose_images(x, psi)


def train_posture(canonical: torch.Tensor, cfg: RewardTrainingConfig) -> tuple[PostureReward, dict]:
    """Self-supervised: warp canonical images [N,1,H,W] with random known ψ, regress ψ."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    train_idx, val_idx = _split(canonical.shape[0], cfg.val_fraction, gen)
    net = PostureNet(cfg.widths, cfg.feature_dim, canonical.shape[-1])
    identity = torch.tensor(IDENTITY_POSTURE)

    def warped(idx, g):
        psi = sample_postures(len(idx), g, cfg.max_scale, cfg.max_shift, cfg.max_rotation)
        return _jitter_intensity(pose_images(canonical[idx].float(), psi), g), psi

    def step_fn(idx, g):
        x, psi = warped(train_idx[idx], g)
        return torch.nn.functional.smooth_l1_loss(net(x) - identity, psi - identity, beta=0.05)

    net.train()
    history = _loop(list(net.parameters()), cfg, len(train_idx), step_fn, "posture")
    net.eval()
    vgen = torch.Generator().manual_seed(cfg.seed + 99)
    with torch.no_grad():
        x, psi = warped(val_idx, vgen)
        pred = net(x)
        mae = (pred - psi).abs().mean(dim=0)
        # the property the reward needs: predicted misalignment grows with the true one
        true_dev = (psi - identity).norm(dim=1)
        pred_dev = (pred - identity).norm(dim=1)
        corr = torch.corrcoef(torch.stack([true_dev, pred_dev]))[0, 1]
    metrics = {"val_mae": [round(float(v), 4) for v in mae], "val_deviation_corr": round(float(corr), 4),
               "train_loss": [round(h, 5) for h in history]}
    return PostureReward(net), metrics


def train_diagnostic(images: torch.Tensor, labels: torch.Tensor, cfg: RewardTrainingConfig) -> tuple[DiagnosticReward, dict]:
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    train_idx, val_idx = _split(images.shape[0], cfg.val_fraction, gen)
    net = CXRClassifier(cfg.widths, cfg.feature_dim, images.shape[-1])
    # why 'negative' exists: with CheXpert's masking a head never sees the images that leave its finding
    # unmentioned (most of them normal), so it has no notion of "absent" there and the RL can drift it freely
    targets = unmentioned_as_negative(labels) if cfg.unmentioned == "negative" else labels

    def step_fn(idx, g):
        i = train_idx[idx]
        x = _jitter_intensity(_augment_posture(images[i].float(), cfg, g), g)
        return masked_bce_loss(net(x), targets[i])

    net.train()
    history = _loop(list(net.parameters()), cfg, len(train_idx), step_fn, "diagnostic")
    net.eval()
    with torch.no_grad():
        probs = torch.cat([net.probabilities(images[val_idx[i:i + 256]].float()) for i in range(0, len(val_idx), 256)])
    auroc = macro_auroc(probs, labels[val_idx], label_names=list(CHEXPERT_LABELS))
    metrics = {"val_macro_auroc": round(auroc.macro, 4), "val_auroc": {k: round(v, 4) for k, v in auroc.per_label.items()},
               "train_loss": [round(h, 5) for h in history]}
    return DiagnosticReward(net), metrics


def finding_keys(labels: torch.Tensor) -> torch.Tensor:
    """One integer per row encoding which labels are present (1 or −1); 0/nan count as absent."""
    present = ((labels == 1) | (labels == -1)).long()
    return (present * (2 ** torch.arange(labels.shape[1]))).sum(dim=1)


def train_consistency(images: torch.Tensor, prompts: list[str], tokenizer, cfg: RewardTrainingConfig, *,
                      labels: torch.Tensor | None = None, embed_dim: int = 64, text_width: int = 96, text_layers: int = 2, max_length: int | None = None
                      ) -> tuple[ConsistencyReward, dict]:
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    train_idx, val_idx = _split(images.shape[0], cfg.val_fraction, gen)
    max_length = int(max_length or min(getattr(tokenizer, "model_max_length", 77), 77))
    net = DualEncoder(len(tokenizer), max_length, embed_dim, cfg.widths, cfg.feature_dim, text_width, text_layers,
                      resolution=images.shape[-1]).attach_tokenizer(tokenizer)
    # tokenize once: the text side sees the same ids every epoch
    ids, mask = net.tokenize(prompts, "cpu")
    text_key = torch.tensor([hash(p) for p in prompts], dtype=torch.long)
    # label-aware InfoNCE: two reports with the same findings describe indistinguishable images (the
    # phantom is a function of the labels), so they are not negatives of each other
    finding_key = finding_keys(labels) if labels is not None else None

    def step_fn(idx, g):
        i = train_idx[idx]
        x = _jitter_intensity(_augment_posture(images[i].float(), cfg, g), g)
        same = text_key[i][:, None] == text_key[i][None, :]
        if finding_key is not None:
            same |= finding_key[i][:, None] == finding_key[i][None, :]
        length = int(mask[i].sum(dim=1).max())  # trim batch padding: most impressions are far below 77 tokens
        return info_nce_loss(net.encode_image(x), net.encode_text(ids[i, :length], mask[i, :length]), net.logit_scale, same)

    net.train()
    history = _loop(list(net.parameters()), cfg, len(train_idx), step_fn, "consistency")
    net.eval()
    metrics = {"train_loss": [round(h, 5) for h in history]}
    with torch.no_grad():
        v = val_idx[:256]
        sim = net.encode_image(images[v].float()) @ net.encode_text(ids[v], mask[v]).t()
        # a retrieval counts as correct when the top report is the matching one, an identical text, or
        # (with labels) a report with the same findings
        top = sim.argmax(dim=1)
        hit = text_key[v][top] == text_key[v]
        if finding_key is not None:
            hit |= finding_key[v][top] == finding_key[v]
        correct = hit.float().mean()
        metrics.update({"val_top1_retrieval": round(float(correct), 4), "val_batch": len(v),
                        "val_mean_matching_cos": round(float(sim.diag().mean()), 4)})
    return ConsistencyReward(net), metrics

