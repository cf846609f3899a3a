"""Reward scoring throughput: (1) scoring overlapped with the next rollout batch (AsyncScorer) vs
sequential; (2) RLCF anchor-score cache vs re-sampling the anchor every epoch.

The sampler is a real (small) diffusers ``UNet2DModel`` run for a few DDIM steps on the initial noise, so
the anchor cost is honest compute, not a sleep. The rewards are the project's three own reward models
(the shipped weights when present, else the same architectures at random init — same cost).

    python -m benchmarks rewards --size cpu
"""
from __future__ import annotations

import torch

from .harness import CaseResult, case_main, device_for_size, single_thread_on_cpu, time_side_by_side   # relative: also cxrl.benchmarks

SIZES = {
    # batch, resolution, unet widths, ddim steps, batches per epoch, epochs (cache case), seeds per prompt
    "cpu": dict(batch=4, res=32, widths=(32, 64), steps=3, batches=3, epochs=3, reps=3),
    "gpu": dict(batch=64, res=64, widths=(64, 128, 256), steps=20, batches=4, epochs=4, reps=5),
}


class UNetSampler:
    """images = DDIM(UNet2DModel)(initial noise): a deterministic function of the noise. The reward models
    resize to their own resolution, so the CPU size samples at 32 px to keep the suite in minutes."""

    def __init__(self, res: int, widths, steps: int, device):
        from diffusers import DDIMScheduler, UNet2DModel

        torch.manual_seed(0)
        self.unet = UNet2DModel(sample_size=res, in_channels=1, out_channels=1, block_out_channels=tuple(widths),
                                down_block_types=("DownBlock2D",) * len(widths), up_block_types=("UpBlock2D",) * len(widths),
                                layers_per_block=1, norm_num_groups=16, add_attention=False).to(device).eval()
        self.scheduler = DDIMScheduler(num_train_timesteps=1000)
        self.scheduler.set_timesteps(steps)

    @torch.no_grad()
    def __call__(self, prompts, noise):
        x = noise
        for t in self.scheduler.timesteps:
            eps = self.unet(x, t).sample
            x = self.scheduler.step(eps, t, x, eta=0.0).prev_sample
        return (x.clamp(-1, 1) + 1) / 2


def _reward_models(device):
    from cxrl.rewards import ConsistencyReward, DiagnosticReward, PostureReward, load_reward_model
    from cxrl.rewards.diagnostic import CXRClassifier
    from cxrl.rewards.posture import PostureNet

    models = []
    for name in ("posture", "diagnostic", "consistency"):
        try:
            models.append(load_reward_model(name, device=device))
        except FileNotFoundError:
            if name == "posture":
                models.append(PostureReward(PostureNet()).to(device))
            elif name == "diagnostic":
                models.append(DiagnosticReward(CXRClassifier()).to(device))
            else:
                import tempfile

                from cxrl.diffusion.tokenizer import build_clip_tokenizer
                from cxrl.rewards.consistency import DualEncoder

                tok = build_clip_tokenizer(_prompts(64), 700, tempfile.mkdtemp())
                models.append(ConsistencyReward(DualEncoder(len(tok)).attach_tokenizer(tok)).to(device))
    return models


def _prompts(n: int) -> list[str]:
    findings = ["small left pleural effusion", "mild cardiomegaly", "right lower lobe consolidation",
                "no acute cardiopulmonary process", "small apical pneumothorax", "mild pulmonary edema",
                "endotracheal tube in place", "left basilar atelectasis"]
    return [f"{findings[i % len(findings)]}, study {i}." for i in range(n)]


def _labels(n: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    return [{"labels": torch.randint(0, 2, (14,), generator=g).float()} for _ in range(n)]


def _run(size: str) -> list[CaseResult]:
    from cxrl.rewards import AnchorScoreCache, AsyncScorer, RewardSuite, SeedBank, noise_for

    cfg = SIZES[size]
    device = device_for_size(size)
    sampler = UNetSampler(cfg["res"], cfg["widths"], cfg["steps"], device)
    shape = (1, cfg["res"], cfg["res"])
    n = cfg["batch"] * cfg["batches"]
    prompts, meta = _prompts(n), _labels(n)
    bank = SeedBank(seeds_per_prompt=1, base_seed=0)
    models = _reward_models(device)
    direct = RewardSuite(models, feedback="direct")
    batches = [slice(i * cfg["batch"], (i + 1) * cfg["batch"]) for i in range(cfg["batches"])]
    noises = [noise_for(bank.seeds_for(prompts[b]), shape, device=device) for b in batches]

    # (1) overlap: the policy rollout of batch i+1 runs while batch i is scored
    def sequential():
        return [direct.score(sampler(prompts[b], z), prompts[b], meta[b]).combined for b, z in zip(batches, noises)]

    scorer = AsyncScorer(direct, device=device)

    def overlapped():
        futures = []
        for b, z in zip(batches, noises):
            futures.append(scorer.submit(sampler(prompts[b], z), prompts[b], meta[b]))
        return [f.result().combined for f in futures]

    timings = time_side_by_side({"sequential": sequential, "async_overlap": overlapped}, reps=cfg["reps"], warmup=1, device=device)
    scorer.close()
    seconds_per = {k: t.median for k, t in timings.items()}
    overlap = CaseResult("rewards_overlap", size, "rollout+score", timings, baseline="sequential",
                         extra={"images": n, "seq_images_per_s": n / seconds_per["sequential"],
                                "async_images_per_s": n / seconds_per["async_overlap"]})

    # (2) anchor cache: E epochs of comparative scoring over the same prompts/seeds; a fresh cache per run
    def epochs(use_cache: bool):
        cache = AnchorScoreCache(None, "bench-anchor", {"steps": cfg["steps"]}) if use_cache else None
        suite = RewardSuite(models, feedback="comparative", anchor_sampler=sampler, cache=cache, seed_bank=bank,
                            latent_shape=shape)
        for _ in range(cfg["epochs"]):
            for b, z in zip(batches, noises):
                seeds = bank.seeds_for(prompts[b])
                suite.score(sampler(prompts[b], z), prompts[b], meta[b], seeds=seeds, initial_noise=z)
        return suite.anchor_images_generated

    generated = {"resample": epochs(False), "cache": epochs(True)}
    timings = time_side_by_side({"resample": lambda: epochs(False), "cache": lambda: epochs(True)},
                                reps=cfg["reps"], warmup=0, device=device)
    cache = CaseResult("rewards_anchor_cache", size, f"{cfg['epochs']}epochs", timings, baseline="resample",
                       extra={"anchor_images_resample": float(generated["resample"]),
                              "anchor_images_cache": float(generated["cache"]), "epochs": float(cfg["epochs"])})
    return [overlap, cache]


def run(size: str = "cpu") -> list[CaseResult]:
    # one intra-op thread per thread on the CPU, as the other cases: two contended torch pools on a loaded
    # 2-core machine measure oversubscription, and the overlap's scoring thread needs a core of its own
    with single_thread_on_cpu(device_for_size(size)):
        return _run(size)


if __name__ == "__main__":
    raise SystemExit(case_main(run, __doc__))
