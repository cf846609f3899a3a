"""The trainer's stages on a tiny real generator with cheap custom rewards."""
import hashlib
import json

import pytest
import torch

from rl_run_helpers import tiny_overrides
from cxrl.compose import build_generator, build_trainer
from cxrl.config import Config, apply_overrides
from cxrl.diffusion.rollout import recompute_log_prob, sample_images
from cxrl.rewards import noise_for
from cxrl.rl import checkpoint as ck
from cxrl.rl.prompts import PromptPool
from cxrl.rl.seeding import torch_generator
from cxrl.rl.update import NonFiniteAbort

PROMPTS = ["small left pleural effusion", "no acute cardiopulmonary process", "mild cardiomegaly"]


def _trainer(gen_dir, out, extra=(), epochs=2, prompts=PROMPTS):
    cfg = apply_overrides(Config(), tiny_overrides(gen_dir, out, epochs=epochs, extra=extra))
    return build_trainer(cfg, PromptPool([{"prompt": p, "labels": None} for p in prompts]))


def _epoch_batch(tr, epoch=0):
    entries, seeds, local = tr.draw_prompts(epoch)
    batch = tr.collect_rollouts(epoch, entries[local], seeds[local], local.start)
    reward_out, _ = tr.score(batch)
    adv, _ = tr.advantages(entries, local, reward_out)
    batch.store.write_advantages(0, adv)
    return batch


def test_stored_log_probs_match_recomputed_and_first_ratio_is_one(tiny_pixel_dir, tmp_path):
    tr = _trainer(tiny_pixel_dir, tmp_path, extra=["train.inner_epochs=2"])
    batch = _epoch_batch(tr)
    store, s = batch.store, tr.cfg.sampling
    n, steps = store.log_probs.shape
    with torch.no_grad():
        for j in range(steps):
            x_t, x_prev = store.latents[:, j], store.latents[:, j + 1]
            ids = store.prompt_ids
            lp = recompute_log_prob(tr.gen, x_t, x_prev, store.timesteps[:, j], batch.embeds[ids], ace=tr.policy.ace,
                                    guidance_scale=s.guidance_scale, eta=s.eta, num_steps=s.num_steps)
            torch.testing.assert_close(lp, store.log_probs[:, j], atol=2e-5, rtol=1e-5)
    assert torch.isfinite(store.advantages).all() and store.advantages.abs().max() > 0
    for batch_size in (1, 2, 4):
        tr.updater.settings.batch_size = batch_size
        before = [p.detach().clone() for p in tr.policy.params]
        result = tr.update(0, batch)
        assert result.first_ratios[0] == 1.0, batch_size            # exactly, by construction
        assert result.optimizer_steps >= 2
        # after updates, the second inner epoch measures against the stored rollout log-probs
        assert result.first_ratios[1] != 1.0
        assert any(not torch.equal(a, p) for a, p in zip(before, tr.policy.params))


def test_fit_writes_metrics_plots_checkpoints_and_hits_the_anchor_cache(tiny_pixel_dir, tmp_path):
    tr = _trainer(tiny_pixel_dir, tmp_path, epochs=3, prompts=PROMPTS[:2])
    history = tr.fit()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1, 2]
    for key in ("reward/bright/mean", "reward/contrast/mean", "reward/combined/mean", "advantage/std", "train/approx_kl",
                "train/clip_fraction", "train/grad_norm", "throughput/sample_images_per_s",
                "throughput/train_images_per_s", "throughput/score_images_per_s"):
        assert key in records[0], key
    # only two prompts x 2 seeds exist, so after epoch 0 every anchor score comes from the cache
    assert records[0]["anchor_cache/misses"] == 4 and records[-1]["anchor_cache/hits"] >= 4
    assert history[-1]["anchor/images_generated"] == 4
    assert (tmp_path / "reward_curves.png").stat().st_size > 1000
    assert (tmp_path / "samples_epoch0002.png").is_file()
    assert [p.name for p in ck.list_checkpoints(tmp_path / "checkpoints")] == ["epoch_000003", "epoch_000002"]
    epoch, groups = ck.load_checkpoint(tmp_path / "checkpoints" / "epoch_000003")
    assert epoch == 3 and groups["trainer"]["epoch"] == 3
    named = tr.policy.named_trainable()
    assert set(groups["weights"]) == set(named) and any(k.startswith("ace.") for k in named)
    for k, p in named.items():
        assert torch.equal(groups["weights"][k], p.detach())
    assert groups["trainer"]["anchor_cache"]["entries"] == 4


def test_non_finite_updates_are_skipped_then_abort(tiny_pixel_dir, tmp_path):
    tr = _trainer(tiny_pixel_dir, tmp_path, extra=["train.max_nonfinite=2"])
    tr.run_epoch(0)
    tr.epoch = 1
    good = tr.save_checkpoint()
    batch = _epoch_batch(tr, 1)   # finite rollouts and rewards; the update below meets NaN ACE tokens
    with torch.no_grad():
        tr.policy.ace.tokens.fill_(float("nan"))
    before = [p.detach().clone() for p in tr.policy.unet_params]
    with pytest.raises(NonFiniteAbort, match="2 consecutive"), tr.warnings_log():
        tr.update(1, batch)
    assert all(torch.equal(a, p) for a, p in zip(before, tr.policy.unet_params))   # nothing was applied
    warnings = (tmp_path / "warnings.log").read_text()
    assert "update skipped" in warnings and any(p[:20] in warnings for p in PROMPTS)
    assert ck.latest_checkpoint(tmp_path / "checkpoints") == good


def test_resume_in_process_is_bitwise_equal(tiny_pixel_dir, tmp_path):
    full = _trainer(tiny_pixel_dir, tmp_path / "a", epochs=3)
    full.fit()
    part = _trainer(tiny_pixel_dir, tmp_path / "b", epochs=1)
    part.fit()
    resumed = _trainer(tiny_pixel_dir, tmp_path / "b", epochs=3)
    assert resumed.resume(tmp_path / "b") and resumed.epoch == 1
    resumed.fit()
    for (k, a), b in zip(full.policy.named_trainable().items(), resumed.policy.named_trainable().values()):
        assert torch.equal(a, b), k
    lines_a = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    lines_b = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    strip = lambda line: {k: v for k, v in json.loads(line).items() if "throughput" not in k and "anchor" not in k}
    assert [strip(x) for x in lines_a] == [strip(x) for x in lines_b]


def test_full_finetune_with_kl_ema_and_gradient_checkpointing(tiny_pixel_dir, tmp_path):
    decay = 0.9
    tr = _trainer(tiny_pixel_dir, tmp_path, epochs=2, extra=[
        "model.finetune=full", "model.ace_tokens=0", "model.gradient_checkpointing=true", "train.kl_beta=0.5", f"train.ema_decay={decay}",
        "train.gradient_accumulation=4", "train.learning_rate=1e-4", "log.sample_every=0"])
    assert tr.policy.anchor_unet is not None and not any(p.requires_grad for p in tr.policy.anchor_unet.parameters())
    w0 = [p.detach().clone() for p in tr.policy.params]
    first = tr.run_epoch(0)                  # one optimizer step, at the end of the epoch
    w1 = [p.detach().clone() for p in tr.policy.params]
    assert first["train/optimizer_steps"] == 1
    assert first["train/kl_to_anchor"] == 0.0        # policy == anchor until the first step (no ACE here:
    #                                                  the anchor never sees ACE tokens, so they would count)
    for s, a, b in zip(tr.updater.ema.shadow, w0, w1):
        torch.testing.assert_close(s, decay * a + (1 - decay) * b)
    second = tr.run_epoch(1)
    assert second["train/kl_to_anchor"] > 0
    tr.epoch = 2
    path = tr.save_checkpoint()
    _, groups = ck.load_checkpoint(path)
    assert groups["ema"]["decay"] == decay and len(groups["ema"]["shadow"]) == len(tr.policy.params)


TEXT_ENCODER = ["model.finetune=full", "model.ace_tokens=0", "model.train_text_encoder=true", "train.kl_beta=0.5",
                "train.text_encoder_learning_rate=1e-3", "train.learning_rate=1e-4", "log.sample_every=0"]


def test_a_trained_text_encoder_is_updated_against_its_frozen_copy(tiny_pixel_dir, tmp_path):
    tr = _trainer(tiny_pixel_dir, tmp_path, epochs=2, extra=[*TEXT_ENCODER, "train.gradient_accumulation=4"])
    encoder, frozen = tr.gen.text_encoder, tr.policy.anchor_text_encoder
    base = [p.detach().clone() for p in frozen.parameters()]
    assert all(p.requires_grad for p in encoder.parameters()) and not any(p.requires_grad for p in frozen.parameters())
    assert all(torch.equal(a, b) for a, b in zip(base, encoder.parameters()))
    first = tr.run_epoch(0)                          # one optimizer step, at the end of the epoch
    # until that step the policy is the anchor: its prompt and empty-prompt embeddings come from an equal encoder
    assert first["train/optimizer_steps"] == 1 and first["train/kl_to_anchor"] == 0.0
    assert all(not torch.equal(a, b) for a, b in zip(base, encoder.parameters()))   # every weight got a gradient
    assert all(torch.equal(a, b) for a, b in zip(base, frozen.parameters()))       # the anchor's did not move
    # the next epoch's negative comes from the trained encoder, the anchor's from the frozen one
    assert torch.equal(tr.gen.empty_embeds(), tr.gen.encode_prompts([""]))
    assert not torch.equal(tr.gen.empty_embeds(), tr.policy.anchor_generator().empty_embeds())
    # with the UNet set back to the anchor's, the policy differs from the anchor only through the encoder: the KL of
    # the next epoch (every minibatch before its one step) is positive only if the anchor side uses the frozen encoder
    tr.gen.unet.load_state_dict(tr.policy.anchor_unet.state_dict())
    assert tr.run_epoch(1)["train/kl_to_anchor"] > 0
    assert any(k.startswith("text_encoder.") for k in tr.policy.named_trainable())


def test_a_trained_text_encoder_resumes_bitwise_and_is_saved(tiny_pixel_dir, tmp_path):
    from cxrl.diffusion import load_generator, save_generator
    full = _trainer(tiny_pixel_dir, tmp_path / "a", epochs=3, extra=TEXT_ENCODER)
    full.fit()
    part = _trainer(tiny_pixel_dir, tmp_path / "b", epochs=1, extra=TEXT_ENCODER)
    part.fit()
    resumed = _trainer(tiny_pixel_dir, tmp_path / "b", epochs=3, extra=TEXT_ENCODER)
    assert resumed.resume(tmp_path / "b") and resumed.epoch == 1
    resumed.fit()
    named = full.policy.named_trainable()
    for (k, a), b in zip(named.items(), resumed.policy.named_trainable().values()):
        assert torch.equal(a, b), k
    saved = load_generator(save_generator(full.gen, tmp_path / "final"))
    for (name, a), b in zip(full.gen.text_encoder.named_parameters(), saved.text_encoder.parameters()):
        assert torch.equal(a.detach(), b), name
    assert not torch.equal(named["text_encoder.final_layer_norm.bias"],
                           load_generator(tiny_pixel_dir).text_encoder.final_layer_norm.bias)
    # a checkpoint of a run that trained the encoder does not fit a run that does not
    plain = _trainer(tiny_pixel_dir, tmp_path / "b", epochs=3, extra=TEXT_ENCODER[:2] + TEXT_ENCODER[3:])
    with pytest.raises(ValueError, match="unexpected .*text_encoder"):
        plain.resume(tmp_path / "b")


def test_cached_anchor_scores_are_the_base_generators_scores(tiny_pixel_dir, tmp_path):
    """The anchor-score cache against the real anchor: after two epochs of training (the LoRA weights moved), every
    cached anchor score equals the score of an image re-sampled from a fresh load of the base generator, from the
    same initial noise and with the anchor's documented step noise (per sample, seeded by its own initial noise)."""
    tr = _trainer(tiny_pixel_dir, tmp_path, epochs=2, prompts=PROMPTS[:2])
    tr.fit()
    assert any(p.abs().max() > 0 for name, p in tr.gen.unet.named_parameters() if "lora_B" in name)
    base = build_generator(tr.cfg.model, torch.device("cpu"))   # a fresh load, with the run's attention backend
    s, names = tr.cfg.sampling, ["bright"]                        # 'contrast' is not comparative: never cached
    entries, seeds, _ = tr.draw_prompts(0)                        # epoch 0 missed everywhere: the anchor sampled
    prompts = [e["prompt"] for e in entries]                      # exactly its scoring chunks
    checked = 0
    for begin in range(0, len(prompts), s.batch_size):
        chunk, chunk_seeds = prompts[begin:begin + s.batch_size], seeds[begin:begin + s.batch_size]
        noise = noise_for(chunk_seeds, base.latent_shape)
        rngs = [torch_generator(int.from_bytes(hashlib.sha256(row.float().numpy().tobytes()).digest()[:8], "little") >> 1,
                                torch.device("cpu")) for row in noise]
        images = sample_images(base, chunk, num_steps=s.num_steps, guidance_scale=s.guidance_scale, eta=s.eta,
                               initial_noise=noise, generator=rngs)
        expected = tr.suite.models["bright"](images, chunk)
        for i, (prompt, seed) in enumerate(zip(chunk, chunk_seeds)):
            cached = tr.suite.cache.get(prompt, seed, names)
            assert cached is not None and cached["bright"] == float(expected[i]), (prompt, seed)
            checked += 1
    assert checked == len(tr.suite.cache) == 4


def test_a_metrics_file_that_cannot_be_plotted_does_not_stop_the_run(tiny_pixel_dir, tmp_path, caplog):
    tr = _trainer(tiny_pixel_dir, tmp_path, epochs=1)
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 0, "reward/br\n')   # torn, and no resume to repair it
    with caplog.at_level("WARNING"):
        history = tr.fit()
    assert len(history) == 1 and ck.latest_checkpoint(tmp_path / "checkpoints") is not None
    assert f"reward curves not drawn: {tmp_path / 'metrics.jsonl'}:1: not a JSON record" in caplog.text
    assert not (tmp_path / "reward_curves.png").exists()


def test_rollout_threads_run_the_forward_stages_and_leave_the_update_its_threads(tiny_pixel_dir, tmp_path, one_thread):
    """train.rollout_threads applies to the forward-only stages (rollouts, scoring); the update keeps
    train.torch_threads, so its gradient sums are split as before. The samples are the same up to the last bits
    (the tiny model's 1x1 shortcut conv rounds differently on 2 threads: ~2e-6; the demo UNet's do not, docs/demo.md)."""
    seen, first_rewards = {}, {}
    for threads in (1, 2):
        tr = _trainer(tiny_pixel_dir, tmp_path / f"t{threads}", extra=[f"train.rollout_threads={threads}"], epochs=1)
        collect, update = tr.collect_rollouts, tr.update

        def spy_collect(*a, _threads=threads, _f=collect, **k):
            seen.setdefault(("rollout", _threads), set()).add(torch.get_num_threads())
            return _f(*a, **k)

        def spy_update(*a, _threads=threads, _f=update, **k):
            seen.setdefault(("update", _threads), set()).add(torch.get_num_threads())
            return _f(*a, **k)
        tr.collect_rollouts, tr.update = spy_collect, spy_update
        tr.fit()
        first = json.loads((tmp_path / f"t{threads}" / "metrics.jsonl").read_text().splitlines()[0])
        first_rewards[threads] = [first[k] for k in sorted(first) if k.startswith("reward/") and k.endswith("/mean")]
    assert seen == {("rollout", 1): {1}, ("update", 1): {1}, ("rollout", 2): {2}, ("update", 2): {1}}
    assert torch.get_num_threads() == 1
    assert first_rewards[1] and first_rewards[1] == pytest.approx(first_rewards[2], rel=1e-4, abs=1e-6)


def test_rollout_workers_sample_the_same_trajectories_side_by_side(tiny_pixel_dir, tmp_path, one_thread):
    """train.rollout_workers=2 samples two chunks at a time, one thread each: every stored latent, log-prob and image
    is the bit of one chunk at a time on one thread (each chunk's noise comes from its own generator)."""
    batches = {}
    for workers in (0, 2):
        tr = _trainer(tiny_pixel_dir, tmp_path / f"w{workers}", epochs=1, prompts=[*PROMPTS, "right lower lobe opacity"],
                      extra=[f"train.rollout_workers={workers}", "rewards.overlap=false", "sampling.samples_per_epoch=8"])
        batches[workers] = _epoch_batch(tr)
        assert torch.get_num_threads() == 1
    one, two = batches[0], batches[2]
    assert one.store.latents.shape[0] == 8
    for name in ("latents", "log_probs", "timesteps", "prompt_ids", "rewards"):
        torch.testing.assert_close(getattr(two.store, name), getattr(one.store, name), rtol=0, atol=0, msg=name)
    torch.testing.assert_close(two.images, one.images, rtol=0, atol=0)
