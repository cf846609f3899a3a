"""CXRLAttnProcessor against diffusers' own AttnProcessor2_0 on a tiny random UNet (plain and LoRA).

The triton backend runs its kernel bodies under TRITON_INTERPRET=1 on the CPU.
"""
import os
import sys

import pytest
import torch

# As tests/conftest.py: the interpreter unless CXRL_TEST_GPU=1 on a CUDA machine. Must precede the
# first triton import. These tests compare CPU runs (and name CPU shape keys), so they need it.
if os.environ.get("CXRL_TEST_GPU") != "1" or not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                reason="runs the triton backend on CPU tensors: needs TRITON_INTERPRET=1")

pytest.importorskip("triton")
from diffusers import UNet2DConditionModel  # noqa: E402
from diffusers.models.attention_processor import Attention, AttnProcessor2_0  # noqa: E402

import cxrl  # noqa: E402
from cxrl.diffusion.attention import (  # noqa: E402
    CXRLAttnProcessor,
    dispatch_attention,
    set_attention_backend,
)

ACE_TOKENS = 2  # encoder states are 77 text tokens + ACE tokens


@pytest.fixture
def fast_interpreter_blocks(monkeypatch):
    # one 64-row block per 8x8 latent: the interpreter runs every program serially in Python
    blocks = sys.modules["cxrl.kernels.flash_attention_common"].INTERPRETER_BLOCKS
    monkeypatch.setitem(blocks, "BLOCK_M", 64)
    monkeypatch.setitem(blocks, "BLOCK_N", 64)


def _tiny_unet(seed=0):
    torch.manual_seed(seed)
    # attention_head_dim is diffusers' (legacy) head *count*: 2 heads of 16 and 32 channels
    return UNet2DConditionModel(
        block_out_channels=(32, 64), cross_attention_dim=32, attention_head_dim=2, sample_size=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1, norm_num_groups=32,
    ).eval()


def _unet_inputs(seed=1, batch=2):
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, 4, 8, 8, generator=g)
    timesteps = torch.tensor([10, 500][:batch])
    context = torch.randn(batch, 77 + ACE_TOKENS, 32, generator=g)
    return sample, timesteps, context


def _run(unet, inputs):
    return unet(*inputs).sample


def _attention_modules(model):
    return [m for m in model.modules() if isinstance(m, Attention)]


def test_set_attention_backend_installs_on_every_attention_module():
    unet = _tiny_unet()
    count = set_attention_backend(unet, "sdpa")
    modules = _attention_modules(unet)
    assert count == len(modules) == 8  # self + cross attention in 4 transformer blocks
    assert all(isinstance(m.processor, CXRLAttnProcessor) and m.processor.backend == "sdpa" for m in modules)


def test_sdpa_backend_matches_default_processor():
    unet = _tiny_unet()
    inputs = _unet_inputs()
    with torch.no_grad():
        ref = _run(unet, inputs)
        set_attention_backend(unet, "sdpa")
        out = _run(unet, inputs)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)


def test_triton_backend_matches_default_processor(fast_interpreter_blocks):
    unet = _tiny_unet()
    inputs = _unet_inputs()
    with torch.no_grad():
        ref = _run(unet, inputs)
        set_attention_backend(unet, "triton")
        out = _run(unet, inputs)
    assert ref.abs().max() > 0.1  # a real signal, not a degenerate all-zero output
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
    choices = cxrl.backend_report()["choices"]
    assert choices["attention[cross N<=64 Nk<=128 D16 float32 cpu]"] == "triton: requested explicitly"


def _lora_unet():
    from peft import LoraConfig

    unet = _tiny_unet()
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():  # peft starts lora_B at zero (a no-op adapter); make the adapter matter
        for name, param in unet.named_parameters():
            if "lora_B" in name:
                param.copy_(0.3 * torch.randn(param.shape, generator=g))
    return unet


def test_lora_wrapped_unet_through_triton_matches_default_processor(fast_interpreter_blocks):
    unet = _lora_unet()
    attn = _attention_modules(unet)[0]
    assert type(attn.to_q).__module__.startswith("peft"), "to_q should be a peft LoRA module"
    inputs = _unet_inputs(batch=1)  # batch 1: the interpreter's backward is the slow part of this file
    lora_params = {n: p for n, p in unet.named_parameters() if p.requires_grad}
    assert lora_params and all("lora_" in n for n in lora_params)

    def out_and_lora_grads():
        unet.zero_grad(set_to_none=True)
        out = _run(unet, inputs)
        out.square().mean().backward()
        return out.detach(), {n: p.grad.clone() for n, p in lora_params.items()}

    ref, ref_grads = out_and_lora_grads()
    unet.disable_adapters()
    with torch.no_grad():
        without_lora = _run(unet, inputs)
    unet.enable_adapters()
    assert (ref - without_lora).abs().max() > 1e-3  # the adapter changes the output

    set_attention_backend(unet, "triton")
    out, grads = out_and_lora_grads()
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
    for name, grad in ref_grads.items():
        assert grad.abs().max() > 0, name
        torch.testing.assert_close(grads[name], grad, atol=1e-6, rtol=1e-3, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("backend", ["sdpa", "triton"])
def test_processor_features_match_default(backend):
    # group norm on 4-D input, cross norm, residual, rescale factor, spatial norm with temb
    torch.manual_seed(3)
    attn = Attention(query_dim=32, cross_attention_dim=24, heads=2, dim_head=40, norm_num_groups=4,
                     cross_attention_norm="layer_norm", residual_connection=True, rescale_output_factor=2.0,
                     spatial_norm_dim=12).eval()
    g = torch.Generator().manual_seed(4)
    hidden = torch.randn(2, 32, 5, 7, generator=g)  # 35 query positions
    context = torch.randn(2, 77 + ACE_TOKENS, 24, generator=g)
    temb = torch.randn(2, 12, 3, 4, generator=g)  # spatial norm conditions on a (smaller) feature map
    with torch.no_grad():
        ref = AttnProcessor2_0()(attn, hidden, encoder_hidden_states=context, temb=temb)
        out = CXRLAttnProcessor(backend)(attn, hidden, encoder_hidden_states=context, temb=temb)
    assert out.shape == hidden.shape
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)


def test_attention_mask_goes_to_sdpa_and_is_recorded():
    torch.manual_seed(5)
    attn = Attention(query_dim=32, heads=2, dim_head=16).eval()
    hidden = torch.randn(2, 11, 32)
    mask = torch.zeros(2, 1, 11)
    mask[:, :, 7:] = -10000.0  # the last 4 keys are padding
    with torch.no_grad():
        ref = AttnProcessor2_0()(attn, hidden, attention_mask=mask)
        out = CXRLAttnProcessor("triton")(attn, hidden, attention_mask=mask)
        unmasked = CXRLAttnProcessor("triton")(attn, hidden)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)
    assert (out - unmasked).abs().max() > 1e-3  # the mask was applied, not dropped
    choice = cxrl.backend_report()["choices"]["attention[self N<=16 D16 float32 cpu masked]"]
    assert choice.startswith("sdpa: attention_mask given (requested triton)")


def test_auto_picks_sdpa_on_cpu_and_says_why():
    q = torch.randn(1, 3, 13, 24)
    k = torch.randn(1, 3, 79, 24)
    out = dispatch_attention(q, k, k, scale=0.2, backend="auto")
    torch.testing.assert_close(out, torch.nn.functional.scaled_dot_product_attention(q, k, k, scale=0.2))
    choice = cxrl.backend_report()["choices"]["attention[cross N<=16 Nk<=128 D24 float32 cpu]"]
    assert choice == "sdpa: auto on cpu (the fast kernels need CUDA)"


def test_unavailable_or_unknown_backends_raise():
    q = torch.randn(1, 1, 4, 8)
    with pytest.raises(RuntimeError, match="'xformers' was requested but cannot run"):
        dispatch_attention(q, q, q, backend="xformers")
    with pytest.raises(RuntimeError, match="'triton' was requested but cannot run: .*bfloat16"):
        dispatch_attention(q.bfloat16(), q.bfloat16(), q.bfloat16(), backend="triton")
    with pytest.raises(ValueError, match="attention backend must be one of"):
        CXRLAttnProcessor("flash")
    with pytest.raises(ValueError, match="attention backend must be one of"):
        set_attention_backend(_tiny_unet(), "cudnn")
    with pytest.raises(ValueError, match="has no diffusers Attention modules"):
        set_attention_backend(torch.nn.Linear(2, 2), "sdpa")
