"""Rollouts: determinism, the trajectory written to the store, log-prob recompute, anchor replay."""
import pytest
import torch

from cxrl.diffusion import (
    AdaptiveConditionEmbedding,
    apply_lora,
    load_generator,
    recompute_log_prob,
    rollout,
    sample_images,
)
from cxrl.trajectory import TrajectoryStore

PROMPTS = ["small left pleural effusion", "no acute cardiopulmonary process", "mild cardiomegaly"]
STEPS = 4


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def gen(tiny_pixel_dir):
    return load_generator(tiny_pixel_dir)


def test_same_seed_same_trajectory_and_different_seed_differs(gen):
    embeds = gen.encode_prompts(PROMPTS)
    a = rollout(gen, embeds, num_steps=STEPS, guidance_scale=3.0, generator=11)
    b = rollout(gen, embeds, num_steps=STEPS, guidance_scale=3.0, generator=torch.Generator().manual_seed(11))
    c = rollout(gen, embeds, num_steps=STEPS, guidance_scale=3.0, generator=12)
    assert torch.equal(a.latents_final, b.latents_final) and torch.equal(a.log_probs, b.log_probs)
    assert torch.equal(a.initial_noise, b.initial_noise) and torch.equal(a.images, b.images)
    assert not torch.allclose(a.latents_final, c.latents_final)
    assert a.images.shape == (3, 1, 16, 16) and a.images.min() >= 0 and a.images.max() <= 1
    assert a.log_probs.shape == (3, STEPS) and a.log_probs.dtype == torch.float32
    assert torch.isfinite(a.log_probs).all()


@pytest.mark.parametrize("use_ace,scale", [(False, 1.0), (True, 4.0)])
def test_store_holds_a_consistent_trajectory_and_log_probs_recompute(gen, use_ace, scale):
    embeds = gen.encode_prompts(PROMPTS)
    ace = AdaptiveConditionEmbedding.for_generator(gen, 2, relative_scale=0.5) if use_ace else None
    store = TrajectoryStore(num_samples=5, num_steps=STEPS, latent_shape=gen.latent_shape, num_rewards=1)
    out = rollout(gen, embeds, store, start=1, ace=ace, num_steps=STEPS, guidance_scale=scale, eta=1.0, generator=3)

    latents = store.latents[1:4]
    assert torch.equal(latents[:, 0], out.initial_noise) and torch.equal(latents[:, -1], out.latents_final)
    assert store.latents[0].abs().sum() == 0 and store.latents[4].abs().sum() == 0  # other rows untouched
    assert torch.equal(store.log_probs[1:4], out.log_probs)
    assert torch.equal(store.timesteps[1:4], out.timesteps)
    gen.scheduler.set_timesteps(STEPS)
    assert out.timesteps.tolist() == [gen.scheduler.timesteps.tolist()] * 3
    assert (out.timesteps[:, :-1] > out.timesteps[:, 1:]).all()  # descending: x_T first
    assert not torch.equal(latents[:, 1], latents[:, 2])  # every step moved

    # PPO recompute from the stored transitions with unchanged weights: the stored log-probs.
    for step in range(STEPS):
        recomputed = recompute_log_prob(gen, latents[:, step], latents[:, step + 1], store.timesteps[1:4, step],
                                        embeds, ace=ace, guidance_scale=scale, eta=1.0, num_steps=STEPS)
        assert torch.allclose(recomputed, out.log_probs[:, step], atol=1e-4, rtol=1e-5), step
    # A PPO minibatch mixes timesteps: sample i at its own step, in another order.
    rows, steps = torch.tensor([2, 0, 1]), torch.tensor([3, 0, 2])
    mixed = recompute_log_prob(gen, latents[rows, steps], latents[rows, steps + 1], out.timesteps[rows, steps],
                               embeds[rows], ace=ace, guidance_scale=scale, eta=1.0, num_steps=STEPS)
    assert torch.allclose(mixed, out.log_probs[rows, steps], atol=1e-4, rtol=1e-5)


def test_recompute_is_differentiable_and_details_match_the_step(gen):
    embeds = gen.encode_prompts(PROMPTS[:2])
    out = rollout(gen, embeds, num_steps=STEPS, guidance_scale=2.0, generator=0, decode=False)
    apply_lora(gen.unet, rank=2)
    x_t = out.initial_noise
    with torch.no_grad():  # the first transition, re-drawn: x_prev = mean + sigma * z
        z = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(9))
    details = recompute_log_prob(gen, x_t, x_t, out.timesteps[:, 0], embeds, guidance_scale=2.0,
                                 num_steps=STEPS, return_details=True)
    x_prev = (details.mean + details.std.view(-1, 1, 1, 1) * z).detach()
    log_prob = recompute_log_prob(gen, x_t, x_prev, out.timesteps[:, 0], embeds, guidance_scale=2.0, num_steps=STEPS)
    # log N(x_prev; mean, std^2) averaged over elements, computed here in plain torch.
    expected = (-0.5 * z.square() - details.std.log().view(-1, 1, 1, 1) - 0.5 * torch.log(torch.tensor(2 * torch.pi)))
    assert torch.allclose(log_prob, expected.mean(dim=(1, 2, 3)), atol=1e-4)
    assert details.noise_pred.shape == x_t.shape and (details.std > 0).all()
    log_prob.sum().backward()
    # lora_B starts at zero, so only its gradient is non-zero at init (d/dA carries a factor B).
    grads = [p.grad for n, p in gen.unet.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0


def test_anchor_replays_the_policy_noise(gen, tiny_pixel_dir):
    anchor = load_generator(tiny_pixel_dir)
    embeds = gen.encode_prompts(PROMPTS)
    noise = torch.randn(3, *gen.latent_shape, generator=torch.Generator().manual_seed(1))
    policy = rollout(gen, embeds, num_steps=STEPS, guidance_scale=3.0, initial_noise=noise, generator=21)
    same = sample_images(anchor, PROMPTS, num_steps=STEPS, guidance_scale=3.0, initial_noise=policy.initial_noise,
                         generator=21)
    assert torch.equal(same, policy.images)
    chunked = sample_images(anchor, embeds, num_steps=STEPS, guidance_scale=3.0, initial_noise=noise,
                            generator=21, batch_size=2)
    assert chunked.shape == same.shape
    other_steps = sample_images(anchor, PROMPTS, num_steps=STEPS, guidance_scale=3.0, initial_noise=noise, generator=22)
    assert not torch.allclose(other_steps, policy.images)  # eta = 1: the step noise matters too


def test_guidance_scale_one_is_a_single_forward(gen):
    batches = []
    hook = gen.unet.register_forward_pre_hook(lambda module, args, kwargs: batches.append(args[0].shape[0]),
                                              with_kwargs=True)
    embeds = gen.encode_prompts(PROMPTS[:2])
    rollout(gen, embeds, num_steps=STEPS, guidance_scale=1.0, generator=0, decode=False)
    rollout(gen, embeds, num_steps=STEPS, guidance_scale=2.5, generator=0, decode=False)
    hook.remove()
    assert batches == [2] * STEPS + [4] * STEPS


def test_latent_rollout_decodes_through_the_vae(tiny_latent_dir):
    gen = load_generator(tiny_latent_dir)
    store = TrajectoryStore(num_samples=2, num_steps=2, latent_shape=gen.latent_shape)
    out = rollout(gen, gen.encode_prompts(PROMPTS[:2]), store, num_steps=2, guidance_scale=2.0, generator=0)
    assert out.latents_final.shape == (2, 4, 8, 8) and out.images.shape == (2, 1, 16, 16)
    assert torch.allclose(out.images, gen.decode(out.latents_final))


def test_bad_inputs_are_named(gen):
    embeds = gen.encode_prompts(PROMPTS[:2])
    with pytest.raises(ValueError, match="prompt_embeds"):
        rollout(gen, embeds[:, :, :5], num_steps=2)
    with pytest.raises(ValueError, match="initial_noise"):
        rollout(gen, embeds, num_steps=2, initial_noise=torch.randn(3, *gen.latent_shape))
    with pytest.raises(ValueError, match="guidance_scale"):
        rollout(gen, embeds, num_steps=2, guidance_scale=0.5)
    with pytest.raises(ValueError, match="eta"):
        rollout(gen, embeds, num_steps=2, eta=0.0)
    with pytest.raises(ValueError, match="num_steps"):
        rollout(gen, embeds, num_steps=0)
    with pytest.raises(ValueError, match="generator"):
        rollout(gen, embeds, num_steps=2, generator="seed")
    small = TrajectoryStore(num_samples=2, num_steps=3, latent_shape=gen.latent_shape)
    with pytest.raises(ValueError, match="store"):
        rollout(gen, embeds, small, num_steps=2)
    with pytest.raises(ValueError, match="start"):
        rollout(gen, embeds, small, start=1, num_steps=3)


def test_per_sample_generators_make_each_sample_independent_of_its_batch(tiny_pixel_dir):
    """One generator per sample: a sample's step noise is its own, so a batched draw equals each sample drawn alone
    (up to the last bits of batched arithmetic), which is what makes an anchor score a function of its sample."""
    from cxrl.diffusion import load_generator, sample_images

    gen = load_generator(tiny_pixel_dir)
    prompts = ["small left pleural effusion", "no acute process", "mild cardiomegaly"]
    noise = torch.randn(3, *gen.latent_shape, generator=torch.Generator().manual_seed(0))
    generators = lambda: [torch.Generator().manual_seed(10 + i) for i in range(3)]   # noqa: E731
    batched = sample_images(gen, prompts, num_steps=3, initial_noise=noise, generator=generators())
    alone = torch.cat([sample_images(gen, [p], num_steps=3, initial_noise=noise[i:i + 1], generator=[generators()[i]])
                       for i, p in enumerate(prompts)])
    torch.testing.assert_close(batched, alone, rtol=0, atol=1e-4)
    shared = sample_images(gen, prompts, num_steps=3, initial_noise=noise, generator=torch.Generator().manual_seed(10))
    assert (shared - batched).abs().max() > 1e-2       # one shared generator: other step noise
    with pytest.raises(ValueError, match="one per sample"):
        sample_images(gen, prompts, num_steps=2, initial_noise=noise, generator=generators()[:2])


@pytest.mark.parametrize("which", ["tiny_pixel_dir", "tiny_latent_dir"])
def test_channels_last_unet_samples_and_trains_the_same_policy(which, request):
    """model.memory_format=channels_last: the same rollout and the same log-prob gradient, up to rounding."""
    from cxrl.compose.models import build_generator
    from cxrl.config.sections import ModelConfig

    path = str(request.getfixturevalue(which))
    plain = build_generator(ModelConfig(path=path), torch.device("cpu"))
    fast = build_generator(ModelConfig(path=path, memory_format="channels_last"), torch.device("cpu"))
    conv = fast.unet.down_blocks[0].resnets[0].conv1.weight     # in_channels > 1: the layouts differ
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    embeds = plain.encode_prompts(PROMPTS)
    a = rollout(plain, embeds, num_steps=STEPS, guidance_scale=3.0, generator=5)
    b = rollout(fast, embeds, num_steps=STEPS, guidance_scale=3.0, generator=5)
    torch.testing.assert_close(b.latents_final, a.latents_final, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(b.log_probs, a.log_probs, atol=1e-3, rtol=1e-4)

    grads = []
    for g in (plain, fast):   # any x_t -> x_prev pair has a log-density; the first step's is used
        g.unet.requires_grad_(True)
        lp = recompute_log_prob(g, a.initial_noise, a.latents_final, a.timesteps[:, 0],
                                embeds, guidance_scale=3.0, eta=1.0, num_steps=STEPS)
        lp.sum().backward()
        grads.append(g.unet.down_blocks[0].resnets[0].conv1.weight.grad.contiguous())
    torch.testing.assert_close(grads[1], grads[0], atol=1e-3, rtol=1e-3)


def test_first_rollouts_on_two_threads_share_the_scheduler_safely(gen, monkeypatch):
    """Rollout and evaluation batches of one generator run side by side (map_batches). diffusers' set_timesteps
    sets the step count before the timesteps; a thread arriving in between must wait, not read the untouched
    1000-step schedule (whose t = 0 step has no log-density: a training run once stopped on exactly that)."""
    import threading
    import time

    from cxrl.machine import map_batches

    original = type(gen.scheduler).set_timesteps
    entered = threading.Event()

    def slow_set_timesteps(self, num_steps, device=None):
        self.num_inference_steps = num_steps   # what diffusers does first ...
        entered.set()
        time.sleep(0.3)                        # ... a window for the other thread ...
        original(self, num_steps, device=device)   # ... before the timesteps follow

    monkeypatch.setattr(type(gen.scheduler), "set_timesteps", slow_set_timesteps)
    assert gen.scheduler.num_inference_steps != STEPS   # untouched: the first rollout sets it
    embeds = gen.encode_prompts(PROMPTS[:2])

    def job(k):
        if k == 1:
            entered.wait(5)   # start while the first thread is inside set_timesteps
        return rollout(gen, embeds[k:k + 1], num_steps=STEPS, guidance_scale=3.0, generator=20 + k)

    side_by_side = map_batches(job, [0, 1], workers=2)
    monkeypatch.setattr(type(gen.scheduler), "set_timesteps", original)
    for k, out in enumerate(side_by_side):
        alone = rollout(gen, embeds[k:k + 1], num_steps=STEPS, guidance_scale=3.0, generator=20 + k)
        assert torch.equal(out.latents_final, alone.latents_final) and torch.equal(out.log_probs, alone.log_probs)
