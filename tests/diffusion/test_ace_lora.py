"""ACE tokens (init, save/load, the CFG masking rule, gradients) and the LoRA helpers."""
import json

import pytest
import torch

from cxrl.diffusion import (
    AdaptiveConditionEmbedding,
    apply_lora,
    guided_context,
    load_ace,
    load_generator,
    load_lora_state_dict,
    lora_state_dict,
    merge_lora,
    merged_state_dict,
    recompute_log_prob,
    trainable_parameters,
)

PROMPTS = ["small left pleural effusion", "no acute cardiopulmonary process"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def gen(tiny_pixel_dir):
    return load_generator(tiny_pixel_dir)


def _eps(gen, context, mask=None, seed=0):
    # Two fixed inputs, tiled to the context's batch, so a [2B] CFG batch sees the same x per branch.
    x = torch.randn(2, *gen.latent_shape, generator=torch.Generator().manual_seed(seed))
    x = x.repeat(context.shape[0] // 2, 1, 1, 1)
    t = torch.full((context.shape[0],), 500)
    return gen.unet(x, t, encoder_hidden_states=context, encoder_attention_mask=mask).sample


# ------------------------------------------------------------------------------------------- ACE
def test_ace_appends_tokens_and_zero_tokens_is_identity():
    ace = AdaptiveConditionEmbedding(3, 8, text_std=2.0, relative_scale=0.1, seed=0)
    context = torch.randn(4, 5, 8)
    out = ace(context)
    assert out.shape == (4, 8, 8)
    assert torch.equal(out[:, :5], context) and torch.equal(out[:, 5:], ace.tokens.expand(4, -1, -1))
    assert ace.init_std == pytest.approx(0.2)
    assert 0.1 < float(ace.tokens.detach().std()) < 0.4  # 24 draws of N(0, 0.2^2)
    off = AdaptiveConditionEmbedding(0, 8)
    assert off(context) is context and off.tokens.numel() == 0
    with pytest.raises(ValueError, match="context"):
        ace(torch.randn(4, 5, 7))
    with pytest.raises(ValueError, match="num_tokens"):
        AdaptiveConditionEmbedding(-1, 8)


def test_ace_init_is_relative_to_the_text_embeddings(gen):
    ace = AdaptiveConditionEmbedding.for_generator(gen, num_tokens=2, relative_scale=0.05)
    text_std = float(gen.encode_prompts(["", "no acute cardiopulmonary process", "small left pleural effusion"]).std())
    assert ace.dim == gen.context_dim and ace.init_std == pytest.approx(0.05 * text_std)


def test_ace_save_load_round_trip_and_errors(tmp_path):
    ace = AdaptiveConditionEmbedding(2, 16, seed=3)
    ace.save(tmp_path)
    loaded = load_ace(tmp_path)
    assert torch.equal(loaded.tokens, ace.tokens) and loaded.init_std == pytest.approx(ace.init_std)
    assert load_ace(tmp_path / "none") is None
    with pytest.raises(FileNotFoundError, match="ACE"):
        load_ace(tmp_path / "none", required=True)
    config = tmp_path / "ace" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "num_tokens": 3}))
    with pytest.raises(ValueError, match="shape"):
        load_ace(tmp_path)
    (tmp_path / "ace" / "ace.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="ace.safetensors"):
        load_ace(tmp_path)


def test_cfg_unconditional_branch_does_not_see_ace(gen):
    """The rule of cxrl.diffusion.ace: with ACE, the unconditional rows equal the no-ACE prediction."""
    cond = gen.encode_prompts(PROMPTS)
    uncond = gen.empty_embeds()
    ace = AdaptiveConditionEmbedding(2, gen.context_dim, text_std=5.0, relative_scale=1.0, seed=1)
    context, mask = guided_context(cond, uncond, ace, use_cfg=True)
    assert context.shape == (4, 79, gen.context_dim) and mask.shape == (4, 79)
    assert mask[:2, 77:].eq(0).all() and mask[:2, :77].eq(1).all() and mask[2:].eq(1).all()
    with torch.no_grad():
        guided = _eps(gen, context, mask)
        plain = _eps(gen, torch.cat([uncond.expand(2, -1, -1), cond]))
        plain_cond_with_ace = _eps(gen, ace(cond))
    assert torch.allclose(guided[:2], plain[:2], atol=1e-5)  # uncond: exactly the anchor-style prediction
    assert torch.allclose(guided[2:], plain_cond_with_ace, atol=1e-5)  # cond: the ACE context
    assert (guided[2:] - plain[2:]).abs().max() > 1e-3  # and ACE did change the conditional branch
    no_ace_context, no_mask = guided_context(cond, uncond, None, use_cfg=True)
    assert no_mask is None and no_ace_context.shape == (4, 77, gen.context_dim)
    with pytest.raises(ValueError, match="negative_embeds"):
        guided_context(cond, None, ace, use_cfg=True)


def test_ace_changes_the_policy_and_gets_gradients(gen):
    cond = gen.encode_prompts(PROMPTS)
    ace = AdaptiveConditionEmbedding.for_generator(gen, 2, relative_scale=1.0, seed=2)
    x_t = torch.randn(2, *gen.latent_shape, generator=torch.Generator().manual_seed(0))
    x_prev = x_t * 0.9 + 0.1 * torch.randn(2, *gen.latent_shape, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([501, 251])
    kw = dict(guidance_scale=3.0, eta=1.0, num_steps=4)
    with_ace = recompute_log_prob(gen, x_t, x_prev, t, cond, ace=ace, **kw)
    without = recompute_log_prob(gen, x_t, x_prev, t, cond, **kw)
    assert (with_ace - without).abs().max() > 1e-6
    with_ace.sum().backward()
    assert ace.tokens.grad is not None and ace.tokens.grad.abs().sum() > 0
    assert torch.isfinite(ace.tokens.grad).all()


# ------------------------------------------------------------------------------------------ LoRA
def test_apply_lora_is_identity_at_init_and_trains_only_adapters(gen):
    cond = gen.encode_prompts(PROMPTS)
    with torch.no_grad():
        before = _eps(gen, cond)
    apply_lora(gen.unet, rank=4, alpha=8)
    params = trainable_parameters(gen.unet)
    names = {n for n, p in gen.unet.named_parameters() if p.requires_grad}
    assert params and all("lora_" in n for n in names)
    assert any(".to_q." in n for n in names) and any(".to_out.0." in n for n in names)
    with torch.no_grad():
        assert torch.equal(_eps(gen, cond), before)
    _eps(gen, cond).square().mean().backward()
    assert all(p.grad is not None for p in params)
    assert not any(p.grad is not None for p in gen.text_encoder.parameters())
    with pytest.raises(ValueError, match="already has LoRA"):
        apply_lora(gen.unet, rank=2)


def test_full_finetune_trains_every_unet_weight(gen):
    gen.unet.requires_grad_(True)
    assert len(trainable_parameters(gen.unet)) == len(list(gen.unet.parameters()))


def test_lora_state_dict_round_trip_and_merge(gen, tiny_pixel_dir):
    cond = gen.encode_prompts(PROMPTS)
    apply_lora(gen.unet, rank=2, alpha=2)
    gen_b = load_generator(tiny_pixel_dir)
    apply_lora(gen_b.unet, rank=2, alpha=2)
    with torch.no_grad():
        for name, p in gen.unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
        tuned = _eps(gen, cond)
    state = lora_state_dict(gen.unet)
    assert state and all("lora_" in k for k in state)
    load_lora_state_dict(gen_b.unet, state)
    with torch.no_grad():
        assert torch.equal(_eps(gen_b, cond), tuned)
    with pytest.raises(ValueError, match="missing"):
        load_lora_state_dict(gen_b.unet, dict(list(state.items())[1:]))
    bad_key = next(iter(state))
    with pytest.raises(ValueError, match="shape"):
        load_lora_state_dict(gen_b.unet, {**state, bad_key: torch.zeros(1)})

    folded = merged_state_dict(gen.unet)  # computed without touching the live adapter
    merge_lora(gen.unet)
    assert not any("lora_" in n for n, _ in gen.unet.named_parameters())
    plain = gen.unet.state_dict()
    assert folded.keys() == plain.keys()
    assert all(torch.allclose(folded[k], plain[k], atol=1e-6) for k in plain)
    with torch.no_grad():
        assert torch.allclose(_eps(gen, cond), tuned, atol=1e-5)
    with pytest.raises(ValueError, match="no LoRA"):
        merge_lora(gen.unet)
