"""model.compile: the UNet's forward compiled after one eager call per input signature, traced whole (the attention
processor resolved first), with the eager forward's results; and a run with it trains."""
import pytest
import torch
from torch._dynamo.utils import counters

from cxrl.diffusion.attention import configure_auto, set_attention_backend
from cxrl.diffusion.compiled import CompiledForward, compile_unet
from cxrl.diffusion.generator import load_generator


def _inputs(unet, batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    cfg = unet.config
    x = torch.randn(batch, cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    ctx = torch.randn(batch, 7, cfg.cross_attention_dim, generator=g)
    return x, t, ctx


def test_each_signature_runs_eagerly_once_then_compiled_in_one_graph_with_the_same_output(tiny_latent_dir):
    torch._dynamo.reset()
    configure_auto()                               # no shape resolved yet, whatever ran before
    unet = load_generator(tiny_latent_dir).unet
    set_attention_backend(unet, "auto")            # cxrl's processor: resolves under locks on a shape's first call
    wrapped = compile_unet(unet, "default", backend="aot_eager")
    assert isinstance(unet.forward, CompiledForward) and unet.forward is wrapped
    counters.clear()
    with torch.no_grad():
        for batch in (2, 4):                       # two signatures: each eager once, then compiled
            x, t, ctx = _inputs(unet, batch)
            eager = wrapped.eager(x, t, encoder_hidden_states=ctx).sample
            first = unet(x, t, encoder_hidden_states=ctx).sample
            again = unet(x, t, encoder_hidden_states=ctx).sample
            torch.testing.assert_close(first, eager, rtol=0, atol=0)
            torch.testing.assert_close(again, eager, rtol=1e-5, atol=1e-6)
        x, t, ctx = _inputs(unet, 2)                # ACE's masked cross-attention (the unconditional rows' slots)
        mask = torch.ones(2, ctx.shape[1])
        mask[0, -2:] = 0
        eager = wrapped.eager(x, t, encoder_hidden_states=ctx, encoder_attention_mask=mask).sample
        for _ in range(2):
            out = unet(x, t, encoder_hidden_states=ctx, encoder_attention_mask=mask).sample
            torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-6)
    assert wrapped.calls == {"eager": 3, "compiled": 3}
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])   # one graph per signature


def test_gradients_flow_through_the_compiled_forward(tiny_latent_dir):
    torch._dynamo.reset()
    unet = load_generator(tiny_latent_dir).unet.requires_grad_(True)
    wrapped = compile_unet(unet, "default", backend="aot_eager")
    x, t, ctx = _inputs(unet, 2, seed=1)
    grads = []
    for _ in range(2):                             # eager, then compiled
        unet.zero_grad(set_to_none=True)
        unet(x, t, encoder_hidden_states=ctx).sample.square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in unet.parameters() if p.grad is not None]))
    assert wrapped.calls == {"eager": 1, "compiled": 1}
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)


def test_off_compiles_nothing_and_bad_requests_are_refused(tiny_latent_dir):
    unet = load_generator(tiny_latent_dir).unet
    eager = unet.forward
    assert compile_unet(unet, "off") is None and unet.forward == eager
    with pytest.raises(ValueError, match="model.compile must be one of"):
        compile_unet(unet, "fastest")
    compile_unet(unet, "default", backend="aot_eager")
    with pytest.raises(ValueError, match="compiled already"):
        compile_unet(unet, "default", backend="aot_eager")


def test_inductor_on_a_cpu_without_a_compiler_is_refused_with_the_fix(tiny_latent_dir, monkeypatch):
    import cxrl.diffusion.compiled as compiled

    unet = load_generator(tiny_latent_dir).unet
    monkeypatch.delenv("CXRL_COMPILE_BACKEND", raising=False)
    monkeypatch.setattr(compiled.shutil, "which", lambda name: None)
    eager = unet.forward
    with pytest.raises(RuntimeError, match="needs a C\\+\\+ compiler.*model.compile=off"):
        compile_unet(unet, "default")
    assert unet.forward == eager                     # nothing was wrapped
    compile_unet(unet, "default", backend="aot_eager")   # a backend that writes no C++ needs none
