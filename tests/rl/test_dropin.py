"""Drop-in use (issue #10): a Stable-Diffusion-layout model that knows nothing of CXRs, a custom reward, a
prompt CSV with weights and metadata — trained end to end by ``cxrl train --config examples/brightness.yaml``.

The model is a tiny random ``StableDiffusionPipeline`` saved by diffusers itself (model_index.json, a
PNDMScheduler config as SD v1.x ships, 3-channel AutoencoderKL). Its VAE decoder uses one GroupNorm group and
a 3x output gain: a random decoder with per-channel GroupNorm normalises the global brightness away (every
image decodes to ~0.53 whatever the latent), which would leave the reward nothing to learn.
"""
import contextlib
import json
import subprocess
import sys
import textwrap

import pytest
import torch

from rl_run_helpers import REPO, subprocess_env
from cxrl.config import load_config
from cxrl.diffusion.generator import load_generator
from cxrl.diffusion.rollout import sample_images
from cxrl.rl import checkpoint as ck
from cxrl.compose import build_trainer
from cxrl.compose import prompt_pool as load_prompt_pool
from cxrl.data.prompt_files import read_prompt_file
from cxrl.rl.prompts import PromptPool

EXAMPLE = REPO / "examples" / "brightness.yaml"
# Small enough for a loaded 2-core CPU (~20 s a run), strong enough to move the tiny model: full fine-tuning,
# no CFG, two PPO passes per rollout, a KL term so its log is exercised too.
FAST = ["model.device=cpu", "model.finetune=full", "sampling.num_steps=4", "sampling.samples_per_epoch=8",
        "sampling.group_size=4", "sampling.batch_size=8", "sampling.guidance_scale=1.0", "train.epochs=6",
        "train.learning_rate=4e-3", "train.batch_size=8", "train.inner_epochs=2", "train.timestep_fraction=1.0",
        "train.kl_beta=1e-3", "log.progress=false", "log.tensorboard=off", "log.sample_every=6"]
HELD_OUT_SEED, HELD_OUT_PER_PROMPT = 987_654, 8


def build_sd_layout_pipeline(where):
    """A tiny random SD-v1-layout pipeline written by ``StableDiffusionPipeline.save_pretrained``."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from cxrl.diffusion.tiny import make_tiny_generator

    parts = make_tiny_generator(where / "parts", kind="latent", channels=3, resolution=16, seed=3)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 32),
                            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                            layers_per_block=1, norm_num_groups=1, sample_size=16)
    with torch.no_grad():
        vae.decoder.conv_out.weight.mul_(3.0)
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", set_alpha_to_one=False,
                              skip_prk_steps=True, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=CLIPTextModel.from_pretrained(str(parts / "text_encoder")),
                                   tokenizer=CLIPTokenizer.from_pretrained(str(parts / "tokenizer")),
                                   unet=UNet2DConditionModel.from_pretrained(str(parts / "unet")), scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    out = where / "sd"
    pipe.save_pretrained(str(out))
    config = out / "scheduler" / "scheduler_config.json"   # SD v1.5's file also says clip_sample: false
    config.write_text(json.dumps({**json.loads(config.read_text()), "clip_sample": False}))
    return out


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory):
    return build_sd_layout_pipeline(tmp_path_factory.mktemp("sd_layout"))


def _train_cli(sd_dir, out, extra=(), in_process=False):
    """``cxrl train --config examples/brightness.yaml ...`` from the repository root (the example's paths are
    relative to it); in a subprocess, or through the same ``cxrl.cli.main`` in this process (saves the ~10 s
    of imports a fresh interpreter costs on a loaded machine)."""
    args = ["train", "--config", str(EXAMPLE), f"model.path={sd_dir}", f"log.output_dir={out}", *FAST, *extra]
    if in_process:
        from cxrl.cli import main

        with contextlib.chdir(REPO):
            assert main(args) == 0
    else:
        done = subprocess.run([sys.executable, "-m", "cxrl", *args], cwd=REPO, env=subprocess_env(),
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _held_out_brightness(sd_dir, run_dir):
    """Mean brightness per image of the base and the trained model from the same held-out initial noises
    and step noise (seeds the run never saw); the trained UNet comes from the run's last checkpoint."""
    cfg = load_config(run_dir / "config.yaml")
    with contextlib.chdir(REPO):   # the saved config keeps the example's relative prompt-file path
        prompts = [e["prompt"] for e in load_prompt_pool(cfg.data).entries] * HELD_OUT_PER_PROMPT
    base, tuned = load_generator(sd_dir), load_generator(sd_dir)
    _, groups = ck.load_checkpoint(ck.latest_checkpoint(run_dir / "checkpoints"))
    weights = {k[len("unet."):]: v for k, v in groups["weights"].items() if k.startswith("unet.")}
    assert set(weights) == {n for n, _ in tuned.unet.named_parameters()}   # full fine-tuning: every UNet weight
    tuned.unet.load_state_dict(weights, strict=False)
    noise = torch.randn(len(prompts), *base.latent_shape, generator=torch.Generator().manual_seed(HELD_OUT_SEED))
    s = cfg.sampling
    kw = dict(num_steps=s.num_steps, guidance_scale=s.guidance_scale, eta=s.eta, initial_noise=noise)
    with torch.no_grad():
        return [sample_images(g, prompts, generator=HELD_OUT_SEED + 1, **kw).mean(dim=(1, 2, 3)) for g in (base, tuned)]


def _assert_logs_finite(records, epochs):
    assert [r["epoch"] for r in records] == list(range(epochs))
    for r in records:
        for key in ("train/loss", "train/ratio", "train/approx_kl", "train/kl_to_anchor", "reward/brightness/mean"):
            assert isinstance(r[key], float) and torch.isfinite(torch.tensor(r[key])), (r["epoch"], key, r.get(key))
        assert r["train/skipped_steps"] == 0 and r["reward/invalid_samples"] == 0


def test_brightness_reward_rises_on_held_out_seeds(sd_dir, tmp_path):
    records = _train_cli(sd_dir, tmp_path / "run")
    _assert_logs_finite(records, epochs=6)
    assert (tmp_path / "run" / "samples_epoch0005.png").stat().st_size > 500   # an RGB grid
    base, tuned = _held_out_brightness(sd_dir, tmp_path / "run")
    n = base.numel()
    seed_noise = base.std() / n ** 0.5           # how much the mean over n seeds moves from seed to seed
    paired_noise = (tuned - base).std() / n ** 0.5
    rise = (tuned - base).mean()
    # measured here: rise 0.028 (0.523 -> 0.550), seed_noise 0.0023, paired_noise 0.0012 (per-image std 0.013)
    assert rise > 5 * seed_noise and rise > 10 * paired_noise, (float(rise), float(seed_noise), float(paired_noise))
    # the training reward climbs too (epoch 0 is lower: its draw holds the prompt whose CSV 'gain' is 0.5)
    assert records[-1]["reward/brightness/mean"] > records[1]["reward/brightness/mean"] + 0.01


def test_control_negated_reward_does_not_raise_brightness(sd_dir, tmp_path):
    """The same run with the reward's weight at -1: if brightness rose anyway, the rise above would say nothing."""
    negated = "rewards.components=[{name: brightness, callable: 'examples/brightness_reward.py:brightness', weight: -1.0}]"
    records = _train_cli(sd_dir, tmp_path / "run", [negated], in_process=True)
    _assert_logs_finite(records, epochs=6)
    base, tuned = _held_out_brightness(sd_dir, tmp_path / "run")
    change = (tuned - base).mean()   # measured here: -0.0072 (paired noise 0.0013): it falls
    assert change < 2 * (tuned - base).std() / base.numel() ** 0.5, float(change)


# -- prompt sources ------------------------------------------------------------------------------------


def test_csv_and_jsonl_prompt_files_carry_weights_labels_and_metadata(tmp_path):
    csv = tmp_path / "p.csv"
    csv.write_text("text,w,Cardiomegaly,Edema,site\nbig heart,2.5,1,,A\nclear lungs,0,0,-1,B\n,1,,,C\n")
    entries = read_prompt_file(csv, prompt_column="text", weight_column="w")
    assert [e["prompt"] for e in entries] == ["big heart", "clear lungs"]      # blank prompt rows are skipped
    assert [e["weight"] for e in entries] == [2.5, 0.0]
    assert [e["metadata"] for e in entries] == [{"site": "A"}, {"site": "B"}]  # label and weight columns are not metadata
    assert entries[0]["labels"][2] == 1.0 and torch.isnan(entries[0]["labels"][5]) and entries[1]["labels"][5] == -1.0
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text(json.dumps({"prompt": "a", "weight": 3, "labels": {"Edema": 1}, "style": {"k": [1]}}) + "\n")
    (entry,) = read_prompt_file(jsonl, weight_column="weight")
    assert entry["weight"] == 3.0 and entry["metadata"] == {"style": {"k": [1]}} and entry["labels"][5] == 1.0

    for text, kwargs, match in [
        ("prompt,w\nx,-1\n", {"weight_column": "w"}, r"p.csv:2: weight column 'w' is '-1'"),
        ("prompt,w\nx,lots\n", {"weight_column": "w"}, r"p.csv:2: weight column 'w' is 'lots'"),
        ("prompt\nx\n", {"weight_column": "w"}, r"no weight column 'w'"),
        ("prompt,Edema\nx,maybe\n", {}, r"p.csv:2: label column 'Edema' is 'maybe'"),
        ("caption\nx\n", {}, r"'prompt' or 'report' column"),
        ("prompt\nx\n", {"prompt_column": "caption"}, r"needs 'caption' column"),
    ]:
        csv.write_text(text)
        with pytest.raises(ValueError, match=match):
            read_prompt_file(csv, **kwargs)
    (tmp_path / "p.txt").write_text("x\n")
    with pytest.raises(ValueError, match="no columns"):
        read_prompt_file(tmp_path / "p.txt", weight_column="w")


def test_weighted_draws_follow_the_weights_and_uniform_draws_are_unchanged():
    entries = [{"prompt": p, "labels": None} for p in "abcd"]
    pool = PromptPool(entries, weights=[6, 3, 1, 0])
    counts = {p: 0 for p in "abcd"}
    for epoch in range(3000):
        (entry,) = pool.draw(1, 1, seed=5, epoch=epoch)
        counts[entry["prompt"]] += 1
    assert counts["d"] == 0                                                   # zero weight: never drawn
    for p, w in zip("abc", (0.6, 0.3, 0.1)):   # binomial std <= sqrt(0.25 / 3000) ~ 0.009
        assert abs(counts[p] / 3000 - w) < 0.03, counts
    groups = pool.draw(3, 2, seed=5, epoch=0)                                 # distinct prompts, each twice
    assert len({e["prompt"] for e in groups}) == 3 and [e["prompt"] for e in groups[::2]] == [e["prompt"] for e in groups[1::2]]
    assert pool.draw(4, 1, seed=5, epoch=1)                                   # more draws than non-zero weights
    # uniform pools draw exactly as before weights existed (resumed runs keep their prompt sequence)
    import numpy as np

    from cxrl.rl.seeding import derive_seed

    idx = np.random.default_rng(derive_seed(5, 7, 0, "prompts")).choice(4, size=3, replace=False)
    assert [e["prompt"] for e in PromptPool(entries).draw(3, 1, seed=5, epoch=7)] == ["abcd"[i] for i in idx]
    for weights, match in [([1, 2], "2 weights for 4 prompts"), ([1, -1, 0, 0], "finite and >= 0"),
                           ([0, 0, 0, 0], "all zero")]:
        with pytest.raises(ValueError, match=match):
            PromptPool(entries, weights=weights)


def test_dropin_config_fields_and_their_errors(monkeypatch):
    monkeypatch.chdir(REPO)                               # the example's paths are relative to the repository root
    cfg = load_config(EXAMPLE, ["log.tensorboard=off"])   # YAML reads a bare off as false; the field means 'off'
    assert cfg.log.tensorboard == "off" and cfg.data.weight_column == "weight"
    pool = load_prompt_pool(cfg.data)
    assert [e["prompt"] for e in pool.entries][:1] == ["a photo of a lighthouse at dusk"] and pool.weights[0] == 0.4
    with pytest.raises(ValueError, match="data.prompt_column / data.weight_column are for data.source 'file'"):
        load_prompt_pool(load_config(EXAMPLE, ["data.source=iuxray"]).data)
    from cxrl.rewards import load_custom_reward

    with pytest.raises(FileNotFoundError, match="resolved against the current directory"):
        load_custom_reward("no/such/rewards.py:fn")


# -- rewards see the model's own channels and the prompt's metadata; bad rewards are named ---------------

RECORDER = textwrap.dedent('''
    import torch
    from cxrl.rewards import RewardModel

    class Recorder(RewardModel):
        """Stateful: a module moved to the device once; remembers what every call saw."""
        def __init__(self, scale=1.0):
            super().__init__()
            self.weights = torch.nn.Linear(3, 1, bias=False)
            torch.nn.init.constant_(self.weights.weight, scale / 3)
            self.seen = []

        def score(self, images, prompts, metadata):
            self.seen.append((tuple(images.shape), list(prompts), [dict(m) for m in metadata]))
            return self.weights(images.mean(dim=(2, 3))).squeeze(1)

    def wrong_device(images, prompts, metadata):
        return torch.zeros(images.shape[0], device="meta")

    def half_bad(images, prompts, metadata):
        bad = torch.tensor(["nan" in p for p in prompts])
        return torch.where(bad, torch.full((len(prompts),), float("nan")), images.mean(dim=(1, 2, 3)))
''')


def _trainer(sd_dir, tmp_path, components, feedback="comparative"):
    (tmp_path / "my_rewards.py").write_text(RECORDER)
    (tmp_path / "prompts.csv").write_text("prompt,weight,site,Cardiomegaly\nbig heart,1,A,1\nnan clear,1,B,\n")
    overrides = [f"model.path={sd_dir}", f"log.output_dir={tmp_path / 'run'}", *FAST, "model.finetune=lora",
                 f"data.path={tmp_path / 'prompts.csv'}", f"rewards.feedback={feedback}",
                 "rewards.components=" + json.dumps(components).replace("RF", str(tmp_path / "my_rewards.py"))]
    cfg = load_config(EXAMPLE, overrides)
    return build_trainer(cfg, load_prompt_pool(cfg.data))


def _score_one_epoch(tr):
    entries, seeds, local = tr.draw_prompts(0)
    batch = tr.collect_rollouts(0, entries[local], seeds[local], local.start)
    out, _ = tr.score(batch)
    return batch, out


def test_rewards_get_rgb_images_metadata_and_mix_with_cxr_rewards(sd_dir, tmp_path):
    tr = _trainer(sd_dir, tmp_path, [{"name": "rec", "callable": "RF:Recorder", "kwargs": {"scale": 2.0}},
                                     {"name": "posture", "weight": 0.5}])   # a built-in CXR reward: luminance
    batch, out = _score_one_epoch(tr)
    recorder = tr.suite.models["rec"]
    (shape, prompts, metadata), anchor_call = recorder.seen   # policy images, then the anchor's (comparative)
    assert shape == (8, 3, 16, 16) and anchor_call[0] == (8, 3, 16, 16) and prompts == batch.prompts
    for prompt, meta in zip(prompts, metadata):
        if prompt == "big heart":
            assert meta["site"] == "A" and meta["labels"][2] == 1.0
        else:
            assert meta == {"site": "B"}                                  # no label column filled: no labels key
    torch.testing.assert_close(out.policy_scores[:, 0], 2.0 * batch.images.mean(dim=(1, 2, 3)))
    assert torch.isfinite(out.anchor_scores[:, 0]).all() and torch.isnan(out.anchor_scores[:, 1]).all()
    assert (out.policy_scores[:, 1] <= 0).all() and out.valid.all()   # posture: -|psi - identity|, absolute
    torch.testing.assert_close(out.combined, out.components[:, 0] + 0.5 * out.components[:, 1])


def test_bad_reward_outputs_are_errors_or_excluded_samples_naming_the_reward(sd_dir, tmp_path):
    tr = _trainer(sd_dir, tmp_path, [{"name": "elsewhere", "callable": "RF:wrong_device"}], feedback="direct")
    with pytest.raises(ValueError, match="reward 'elsewhere' returned a tensor on meta"):
        _score_one_epoch(tr)
    strict = _trainer(sd_dir, tmp_path, [{"name": "halfbad", "callable": "RF:half_bad", "strict": True}], feedback="direct")
    with pytest.raises(ValueError, match="reward 'halfbad' returned non-finite values"):
        _score_one_epoch(strict)
    lenient = _trainer(sd_dir, tmp_path, [{"name": "halfbad", "callable": "RF:half_bad"}], feedback="direct")
    batch, out = _score_one_epoch(lenient)
    poisoned = torch.tensor(["nan" in p for p in batch.prompts])
    assert poisoned.any() and torch.equal(out.valid, ~poisoned) and torch.isfinite(out.combined).all()
    adv, stats = lenient.advantages(batch.entries, slice(0, len(batch.entries)), out)
    assert (adv[poisoned] == 0).all() and stats["reward/invalid_samples"] == int(poisoned.sum())
    assert stats["reward/invalid_fraction"] == pytest.approx(float(poisoned.float().mean()))
