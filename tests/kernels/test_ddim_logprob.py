"""Fused DDIM step + log-prob: Triton kernel bodies (TRITON_INTERPRET=1 on the CPU, or CUDA) against the
torch reference; the reference against fp64 gradcheck and an independent torch.distributions.Normal."""
import math
import os
import zlib

import torch

if not torch.cuda.is_available():  # before triton is imported: kernel bodies run on the CPU
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from diffusers import DDIMScheduler  # noqa: E402
from triton.runtime.interpreter import InterpretedFunction  # noqa: E402

from cxrl._backend import recorded_choices  # noqa: E402
from cxrl.kernels import ddim_logprob as K  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("Triton kernels need CUDA or TRITON_INTERPRET=1 (set to something else in this process)",
                allow_module_level=True)
if DEVICE == "cpu" and not isinstance(K._ddim_logprob_fwd_kernel, InterpretedFunction):
    # triton.jit picks interpreter or compiler when a kernel is decorated, triton's own library included,
    # so a process that imported triton before TRITON_INTERPRET=1 was set cannot run kernels on the CPU
    pytest.skip("triton was imported before TRITON_INTERPRET=1 was set in this process; run this file on "
                "its own or export TRITON_INTERPRET=1", allow_module_level=True)

SHAPES = [(3, 1, 17, 23), (2, 4, 8, 8)]
PRED_TYPES = ["epsilon", "sample", "v_prediction"]


def _scheduler(prediction_type="epsilon"):
    s = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, set_alpha_to_one=False,
                      steps_offset=1, prediction_type=prediction_type)
    s.set_timesteps(25)
    return s


def _coefficients(batch, generator, eta=1.0, dtype=torch.float32):
    """Per-sample (alpha_t, alpha_prev, sigma) of random timesteps of a real SD schedule."""
    s = _scheduler()
    ts = s.timesteps[torch.randint(0, len(s.timesteps), (batch,), generator=generator)]
    a_t = s.alphas_cumprod[ts]
    prev = ts - s.config.num_train_timesteps // s.num_inference_steps
    a_prev = torch.where(prev >= 0, s.alphas_cumprod[prev.clamp(min=0)], s.final_alpha_cumprod)
    sigma = eta * (((1 - a_prev) / (1 - a_t)) * (1 - a_t / a_prev)).sqrt()
    return [c.to(DEVICE, dtype) for c in (a_t, a_prev, sigma)]


def _inputs(shape, dtype, cfg, seed):
    g = torch.Generator().manual_seed(seed)
    def rnd():
        return torch.randn(shape, generator=g).to(DEVICE, dtype)
    u, x, z = rnd(), rnd(), rnd()
    c = rnd() if cfg else None
    return u, c, x, z, _coefficients(shape[0], g)


def _tolerance(dtype):
    # fp32: a few ulps (different but equally rounded op sequences); bf16: one output ulp of x_prev
    return dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=1e-2)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("cfg", [False, True])
@pytest.mark.parametrize("draw", [True, False])
@pytest.mark.parametrize("prediction_type,clip", [("epsilon", None), ("epsilon", 1.0), ("sample", 1.0),
                                                   ("v_prediction", None), ("v_prediction", 1.0)])
def test_triton_forward_and_backward_match_reference(shape, dtype, cfg, draw, prediction_type, clip):
    seed = zlib.crc32(repr((shape, dtype, cfg, draw, prediction_type, clip)).encode())  # reproducible per case
    u, c, x, z, (a_t, a_prev, sigma) = _inputs(shape, dtype, cfg, seed)
    kwargs = dict(model_output_text=c, guidance_scale=4.5 if cfg else 1.0, prediction_type=prediction_type,
                  clip_sample_range=clip)
    if draw:
        kwargs["noise"] = z
    else:  # a stored action: drawn around the reference mean, in the latents' dtype
        kwargs["prev_sample"] = K.ddim_step_reference(u, x, a_t, a_prev, sigma, noise=z, **kwargs)[0]

    outs = {}
    for backend in ("triton", "reference", "fp64"):
        leaves = [t.detach().clone().to(torch.float64 if backend == "fp64" else t.dtype).requires_grad_(True)
                  for t in (u, c) if t is not None]
        args = dict(kwargs, model_output_text=leaves[1] if cfg else None)
        if backend == "fp64":   # the same step in float64: what both fp32 paths approximate
            args.update({k: v.double() for k, v in args.items() if k in ("noise", "prev_sample")})
            prev, log_prob = K.ddim_step_reference(leaves[0], x.double(), a_t.double(), a_prev.double(),
                                                   sigma.double(), **args)
        else:
            prev, log_prob = K.fused_ddim_step(leaves[0], x, a_t, a_prev, sigma, backend=backend, **args)
        g = torch.Generator().manual_seed(seed + 1)
        loss = (log_prob * torch.randn(log_prob.shape, generator=g).to(DEVICE)).sum()
        if draw:  # also a gradient through the returned x_prev
            loss = loss + (prev.float() * torch.randn(prev.shape, generator=g).to(DEVICE)).sum()
        outs[backend] = (prev, log_prob, torch.autograd.grad(loss, leaves))

    (prev_t, lp_t, grads_t), (prev_r, lp_r, grads_r), (_, _, grads_64) = outs["triton"], outs["reference"], outs["fp64"]
    assert prev_t.dtype == prev_r.dtype == dtype and lp_t.dtype == torch.float32 and lp_t.shape == (shape[0],)
    torch.testing.assert_close(prev_t, prev_r, **_tolerance(dtype))
    # fp32 log-probs in both; with bf16 x_prev a 1-ulp fp32 difference in mu can flip the rounding of an
    # element, which moves (x_prev - mu) / sigma by a bf16 ulp / sigma at that element
    torch.testing.assert_close(lp_t, lp_r, atol=1e-4 if dtype == torch.float32 else 2e-3, rtol=1e-5)
    for gt, gr, g64 in zip(grads_t, grads_r, grads_64):
        assert gt.dtype == dtype
        if dtype == torch.bfloat16:
            torch.testing.assert_close(gt, gr, **_tolerance(dtype))
            continue
        # fp32: a stored action's log-prob gradient is (x_prev - mu) / sigma^2 * dmu/dm, so a one-ulp difference in
        # mu (the compiled kernel contracts multiply-adds, torch does not) grows by 1 / sigma^2 at small sigma;
        # both fp32 paths are therefore held to the float64 step: the kernel within twice the reference's error
        err_t, err_r = (gt.double() - g64).norm(), (gr.double() - g64).norm()
        assert err_t <= 2 * err_r + 1e-6 * g64.norm(), (float(err_t), float(err_r), float(g64.norm()))


def test_log_prob_is_deterministic_and_draw_equals_recompute():
    u, c, x, z, (a_t, a_prev, sigma) = _inputs((2, 4, 8, 8), torch.float32, True, 7)
    kw = dict(model_output_text=c, guidance_scale=3.0, backend="triton")
    prev, lp_draw = K.fused_ddim_step(u, x, a_t, a_prev, sigma, noise=z, **kw)
    _, lp_again = K.fused_ddim_step(u, x, a_t, a_prev, sigma, noise=z, **kw)
    _, lp_recompute = K.fused_ddim_step(u, x, a_t, a_prev, sigma, prev_sample=prev, **kw)
    assert torch.equal(lp_draw, lp_again)  # two-stage reduction, no atomics: bitwise repeatable
    assert torch.equal(lp_draw, lp_recompute)  # PPO's first ratio is exactly 1 for an unchanged model


def test_log_prob_of_draw_is_standard_normal_density_of_the_noise():
    """In draw mode (x_prev - mu) / sigma is the noise: log p = mean(-z^2/2) - log sigma - log sqrt(2 pi)."""
    u, _, x, z, (a_t, a_prev, sigma) = _inputs((3, 1, 17, 23), torch.float32, False, 11)
    _, lp = K.fused_ddim_step(u, x, a_t, a_prev, sigma, noise=z, backend="triton")
    expected = (-0.5 * z.double() ** 2).mean(dim=(1, 2, 3)) - sigma.double().log() - 0.5 * math.log(2 * math.pi)
    torch.testing.assert_close(lp.double(), expected, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("prediction_type", PRED_TYPES)
@pytest.mark.parametrize("draw", [True, False])
def test_reference_gradcheck_fp64(prediction_type, draw):
    g = torch.Generator().manual_seed(3)
    shape = (2, 1, 3, 5)
    u, c, x, z = (torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(4))
    a_t, a_prev, sigma = (t.double() for t in _coefficients(2, g))
    a_t, a_prev, sigma = a_t.cpu(), a_prev.cpu(), sigma.cpu()
    prev = K.ddim_step_reference(u, x, a_t, a_prev, sigma, noise=z, prediction_type=prediction_type)[0]
    u.requires_grad_(True)
    c.requires_grad_(True)
    # clip at 0.8: some x0 are clamped (zero gradient there), none sit within gradcheck's eps of the edge
    kw = dict(guidance_scale=2.0, prediction_type=prediction_type, clip_sample_range=0.8,
              noise=z if draw else None, prev_sample=None if draw else prev)

    def fn(u_, c_):
        p, lp = K.ddim_step_reference(u_, x, a_t, a_prev, sigma, model_output_text=c_, **kw)
        # draw mode: the log-prob holds x_prev fixed (DDPO), so as a function of u it is not the composite
        # that finite differences see (that one is constant: the density of the noise); check x_prev there
        return p if draw else lp

    assert torch.autograd.gradcheck(fn, (u, c), eps=1e-6, atol=1e-6)


def test_reference_log_prob_equals_torch_distributions_normal():
    g = torch.Generator().manual_seed(5)
    shape = (3, 2, 5, 7)
    u, x, prev = (torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(3))
    a_t, a_prev, sigma = (t.double().cpu() for t in _coefficients(3, g))
    _, lp = K.ddim_step_reference(u, x, a_t, a_prev, sigma, prev_sample=prev, prediction_type="v_prediction")
    # the mean, written out independently for v-prediction
    v = (a_t.sqrt().view(-1, 1, 1, 1), (1 - a_t).sqrt().view(-1, 1, 1, 1))
    x0, eps = v[0] * x - v[1] * u, v[0] * u + v[1] * x
    s = sigma.view(-1, 1, 1, 1)
    mean = a_prev.sqrt().view(-1, 1, 1, 1) * x0 + (1 - a_prev.view(-1, 1, 1, 1) - s**2).sqrt() * eps
    expected = torch.distributions.Normal(mean, s).log_prob(prev).mean(dim=(1, 2, 3))
    torch.testing.assert_close(lp, expected, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("prediction_type", PRED_TYPES)
def test_triton_step_matches_diffusers_scheduler_step(prediction_type):
    """The fused kernel fed from DDIMTables gives diffusers' x_prev for the same noise, per sample."""
    from cxrl.diffusion.ddim import DDIMTables

    s = _scheduler(prediction_type)
    s.register_to_config(clip_sample=True)
    tables = DDIMTables(s, DEVICE)
    g = torch.Generator().manual_seed(9)
    shape = (3, 1, 17, 23)
    mo, x, z = (torch.randn(shape, generator=g) for _ in range(3))
    ts = torch.tensor([s.timesteps[0], s.timesteps[12], s.timesteps[-1]])  # incl. the final step
    a_t, a_prev, sigma = tables.coefficients(ts, 3, 1.0)
    prev, _ = K.fused_ddim_step(mo.to(DEVICE), x.to(DEVICE), a_t, a_prev, sigma, noise=z.to(DEVICE),
                                prediction_type=prediction_type, clip_sample_range=tables.clip_sample_range,
                                backend="triton")
    for i, t in enumerate(ts.tolist()):
        ref = s.step(mo[i:i + 1], t, x[i:i + 1], eta=1.0, variance_noise=z[i:i + 1]).prev_sample
        torch.testing.assert_close(prev[i:i + 1].cpu(), ref, rtol=1e-6, atol=1e-6)


def test_auto_backend_records_its_choice():
    u, _, x, z, (a_t, a_prev, sigma) = _inputs((2, 1, 4, 4), torch.float32, False, 1)
    K.fused_ddim_step(u, x, a_t, a_prev, sigma, noise=z)
    expected = "fused Triton" if DEVICE == "cuda" else "torch reference"
    assert recorded_choices()["ddim_step"].startswith(expected)


def test_bad_inputs_name_the_field():
    u, _, x, z, (a_t, a_prev, sigma) = _inputs((2, 1, 4, 4), torch.float32, False, 2)
    with pytest.raises(ValueError, match="exactly one of noise"):
        K.fused_ddim_step(u, x, a_t, a_prev, sigma)
    with pytest.raises(ValueError, match="exactly one of noise"):
        K.fused_ddim_step(u, x, a_t, a_prev, sigma, noise=z, prev_sample=z)
    with pytest.raises(ValueError, match="model_output_text has shape"):
        K.fused_ddim_step(u, x, a_t, a_prev, sigma, noise=z, model_output_text=u[:1])
    with pytest.raises(ValueError, match="std_dev_t must have shape"):
        K.fused_ddim_step(u, x, a_t, a_prev, sigma[:1], noise=z)
    with pytest.raises(ValueError, match="prediction_type"):
        K.fused_ddim_step(u, x, a_t, a_prev, sigma, noise=z, prediction_type="flow")
    with pytest.raises(ValueError, match="backend"):
        K.fused_ddim_step(u, x, a_t, a_prev, sigma, noise=z, backend="cuda")
    with pytest.raises(ValueError, match="quantile"):
        K.fused_ddim_step(u, x, a_t, a_prev, sigma, noise=z, threshold=(0.995, 1.0), backend="triton")
    with pytest.raises(ValueError, match="floating-point"):
        K.fused_ddim_step(u, x.long(), a_t, a_prev, sigma, noise=z)


@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_clip_passes_no_gradient_at_the_bounds_themselves(backend):
    # x0 = model output ('sample'); elements exactly at +-1 are common in bf16 and must get one convention on every
    # torch version and device: no gradient at the bound, the full one just inside it
    u = torch.tensor([1.0, -1.0, 0.99, -0.99, 1.5, 0.0], device=DEVICE).view(6, 1, 1, 1).requires_grad_(True)
    x = torch.zeros_like(u)
    a_t, a_prev, sigma = (torch.full((6,), v, device=DEVICE) for v in (0.5, 0.7, 0.1))
    prev, _ = K.fused_ddim_step(u, x, a_t, a_prev, sigma, noise=torch.zeros_like(u), prediction_type="sample",
                                clip_sample_range=1.0, backend=backend)
    (grad,) = torch.autograd.grad(prev.sum(), u)
    flat = grad.flatten().tolist()
    inside = flat[2]
    assert inside != 0 and flat[3] == pytest.approx(inside) and flat[5] == pytest.approx(inside)
    # at and beyond the bounds x0 is constant, so only the epsilon path (which uses the unclipped x0) remains
    assert flat[0] == pytest.approx(flat[1]) == pytest.approx(flat[4])
    assert abs(flat[0] - inside) > 0.1


def test_a_smaller_block_splits_a_sample_and_gives_the_same_step():
    # max_block (the GPU suite's bandwidth step compares block sizes) changes how many programs share a sample:
    # the step is elementwise and the log-prob a sum of per-program partials, so the result may differ by rounding only
    u, c, x, z, (a_t, a_prev, sigma) = _inputs((2, 4, 16, 16), torch.float32, True, 11)
    kw = dict(model_output_text=c, guidance_scale=3.0, noise=z, backend="triton")
    assert K._launch_config(4 * 16 * 16) == (1024, 4)
    prev, lp = K.fused_ddim_step(u, x, a_t, a_prev, sigma, **kw)
    with K.max_block(256):
        assert K._launch_config(4 * 16 * 16) == (256, 4)
        prev_small, lp_small = K.fused_ddim_step(u, x, a_t, a_prev, sigma, **kw)
    assert K._launch_config(4 * 16 * 16) == (1024, 4)   # restored
    assert torch.equal(prev, prev_small)
    torch.testing.assert_close(lp_small, lp, atol=1e-5, rtol=1e-6)
    with pytest.raises(ValueError, match="power of two"):
        with K.max_block(1000):
            pass
    with K.max_block(256, num_warps=2):
        assert K._launch_config(4 * 16 * 16) == (256, 2)
        prev_warps, lp_warps = K.fused_ddim_step(u, x, a_t, a_prev, sigma, **kw)
    assert torch.equal(prev, prev_warps)
    torch.testing.assert_close(lp_warps, lp, atol=1e-5, rtol=1e-6)
    with K.max_block(2048):
        assert K._launch_config(4096) == (2048, 8)      # the default's warps above 1024 elements
    with pytest.raises(ValueError, match="num_warps"):
        with K.max_block(256, num_warps=3):
            pass
