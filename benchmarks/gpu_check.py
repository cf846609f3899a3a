"""Correctness at GPU scale, against references: the kernels at large shapes, the rl_epoch baseline's eager
step, and the trainer's overlapped reward scoring on its own CUDA stream.

The last step of ``benchmarks/gpu_suite.sh`` (``suite_step``); also ``python -m benchmarks.gpu_check``,
which exits non-zero on any mismatch. Each check runs on its own: an exception (a compile error, say) is
recorded as that check's failure and the next check still runs. The kernel tests (``tests/kernels``)
cover the small and odd shapes; these cover the long sequences and multi-block reductions of the real
sizes. Tolerance rule for low precision: |fast − ref64| ≤ 2·|torch same dtype − ref64| + atol.
The suite's rehearsal runs the same checks on the CPU at tiny shapes, kernels interpreted.
"""
from __future__ import annotations

import sys
import traceback

import torch

from cxrl.kernels import ddim_step_reference, flash_attention, fused_ddim_step

FAILURES: list[str] = []
_RECORD = None   # the suite step's StepRecord while suite_step runs

DDIM_SHAPES = {"gpu": [(32, 4, 64, 64), (32, 1, 64, 64)], "tiny": [(3, 1, 17, 23), (2, 4, 8, 8)]}
# (B, H, N, Nk, D): SD-1.5's head dims at their real token counts; the interpreter cannot run bf16 dots
ATTENTION_CASES = {"gpu": [(1, 8, 4096, 4096, 40), (2, 8, 1024, 77, 80), (2, 8, 256, 256, 160)],
                   "tiny": [(1, 2, 37, 77, 40), (1, 1, 17, 23, 160)]}
ATTENTION_DTYPES = {"gpu": (torch.bfloat16, torch.float32), "tiny": (torch.float16, torch.float32)}


def _report(name: str, ok: bool, detail: str) -> None:
    if _RECORD is not None:
        _RECORD.check(name, ok, detail)
    else:
        print(f"  [{'ok' if ok else 'FAIL'}] {name}: {detail}", flush=True)
    if not ok:
        FAILURES.append(name)


def _err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def check_ddim_step(device: torch.device, size: str = "gpu") -> None:
    print("fused DDIM step + log-prob (Triton vs torch reference)")
    for shape in DDIM_SHAPES[size]:
        for dtype in (torch.float32, torch.bfloat16):
            for cfg in (False, True):
                g = torch.Generator(device=device).manual_seed(1)
                B = shape[0]
                u = torch.randn(shape, device=device, generator=g).to(dtype).requires_grad_()
                c = torch.randn(shape, device=device, generator=g).to(dtype).requires_grad_() if cfg else None
                x = torch.randn(shape, device=device, generator=g).to(dtype)
                noise = torch.randn(shape, device=device, generator=g).to(dtype)
                a_t = torch.rand(B, device=device, generator=g) * 0.5 + 0.2
                a_p = (a_t + 0.2).clamp(max=0.999)
                sigma = torch.rand(B, device=device, generator=g) * 0.1 + 0.05
                kw = dict(model_output_text=c, guidance_scale=4.0 if cfg else 1.0, noise=noise, prediction_type="epsilon")
                prev, lp = fused_ddim_step(u, x, a_t, a_p, sigma, backend="triton", **kw)
                (lp.sum() + prev.float().sum()).backward()
                grads = [t.grad.clone() for t in (u, c) if t is not None]
                for t in (u, c):
                    if t is not None:
                        t.grad = None
                prev_r, lp_r = ddim_step_reference(u, x, a_t, a_p, sigma, **kw)
                (lp_r.sum() + prev_r.float().sum()).backward()
                grads_r = [t.grad for t in (u, c) if t is not None]
                tol = 1e-4 if dtype == torch.float32 else 3e-2
                e_prev, e_lp = _err(prev, prev_r), _err(lp, lp_r) / (lp_r.abs().max().item() + 1e-6)
                e_grad = max(_err(a, b) / (b.abs().max().item() + 1e-6) for a, b in zip(grads, grads_r))
                ok = e_prev <= tol * 10 and e_lp <= tol and e_grad <= tol
                _report(f"ddim {shape} {str(dtype)[6:]} cfg={cfg}", ok,
                        f"max|Δprev|={e_prev:.2e} rel|Δlogp|={e_lp:.2e} rel|Δgrad|={e_grad:.2e}")


def check_flash_attention(device: torch.device, size: str = "gpu") -> None:
    print("flash attention (Triton vs fp64 math reference)")
    for (B, H, N, Nk, D) in ATTENTION_CASES[size]:
        for dtype in ATTENTION_DTYPES[size]:
            g = torch.Generator(device=device).manual_seed(2)
            q, k, v = (torch.randn(B, H, n, D, device=device, generator=g, dtype=torch.float64)
                       for n in (N, Nk, Nk))
            do = torch.randn(B, H, N, D, device=device, generator=g, dtype=torch.float64)
            q64, k64, v64 = (t.clone().requires_grad_() for t in (q, k, v))
            ref = torch.nn.functional.scaled_dot_product_attention(q64, k64, v64)
            ref.backward(do)
            qd, kd, vd = (t.to(dtype).requires_grad_() for t in (q, k, v))
            plain = torch.nn.functional.scaled_dot_product_attention(qd, kd, vd)
            plain.backward(do.to(dtype))
            qt, kt, vt = (t.to(dtype).requires_grad_() for t in (q, k, v))
            out = flash_attention(qt, kt, vt)
            out.backward(do.to(dtype))
            atol = 1e-3 if dtype == torch.float32 else 2e-3
            worst = 0.0
            ok = True
            for fast, same, r in ((out, plain, ref), (qt.grad, qd.grad, q64.grad), (kt.grad, kd.grad, k64.grad),
                                  (vt.grad, vd.grad, v64.grad)):
                e_fast, e_same = _err(fast, r), _err(same, r)
                ok &= e_fast <= 2 * e_same + atol * max(1.0, r.abs().max().item())
                worst = max(worst, e_fast / (e_same + 1e-12))
            _report(f"attn B{B} H{H} N{N} Nk{Nk} D{D} {str(dtype)[6:]}", ok, f"worst |fast-ref|/|torch-ref| = {worst:.2f}")


def check_eager_baseline_step(device: torch.device, size: str = "gpu") -> None:
    """The rl_epoch benchmark's eager (ddpo-style) steps compute what cxrl's fused step computes, on CUDA."""
    print("rl_epoch eager baseline step vs cxrl fused step")
    from diffusers import DDIMScheduler

    from cxrl.diffusion.ddim import ddim_step_with_logprob

    from .eager_ddpo import eager_recompute_log_prob, eager_sampling_step

    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1)
    sched.set_timesteps(20, device=device)
    g = torch.Generator(device=device).manual_seed(3)
    guided, x = (torch.randn(4, 4, 64, 64, device=device, generator=g) for _ in range(2))
    t = sched.timesteps[7]
    prev_e, lp_e = eager_sampling_step(sched, guided, t, x, 1.0, torch.Generator(device=device).manual_seed(5))
    prev_c, lp_c = ddim_step_with_logprob(sched, guided, int(t), x, 1.0,
                                          generator=torch.Generator(device=device).manual_seed(5))
    ts = sched.timesteps[[0, 6, 12, 19]]
    lp_re = eager_recompute_log_prob(sched, guided, ts, x, prev_c, 1.0)
    lp_rc = ddim_step_with_logprob(sched, guided, ts, x, 1.0, prev_sample=prev_c)[1]
    e = (_err(prev_e, prev_c), _err(lp_e, lp_c), _err(lp_re, lp_rc))
    _report("eager step == fused step", max(e) < 1e-3,
            f"max|Δprev|={e[0]:.2e} |Δlogp|={e[1]:.2e} |Δlogp recompute|={e[2]:.2e}")


def check_overlapped_scoring(device: torch.device, size: str = "gpu") -> None:
    """rewards.overlap (scoring thread on its own CUDA stream, anchor sampled there) gives the inline rewards."""
    print("trainer: overlapped reward scoring vs inline (CUDA streams)")
    import copy
    import dataclasses
    import tempfile
    from pathlib import Path

    from cxrl.rewards import AnchorScoreCache

    from .bench_rl_epoch import TINY_SD15, build_trainer

    # diffusers' own attention: this check is about the scoring stream, not about attention kernels
    setting = dataclasses.replace(TINY_SD15, attention_backend=None)
    trainer, _ = build_trainer(setting, str(device), Path(tempfile.mkdtemp(prefix="cxrl-gpu-check-")))
    with torch.no_grad():   # LoRA B starts at zero: make the policy differ from the anchor
        for p in trainer.policy.unet_params:
            p.add_(0.05 * torch.randn_like(p))
    snapshot = copy.deepcopy(trainer.state_groups())
    rewards = {}
    for overlap in (True, False):
        trainer.load_state_groups(copy.deepcopy(snapshot))
        trainer.suite.cache = AnchorScoreCache(None, "gpu-check", {})
        trainer.cfg.rewards.overlap = overlap
        entries, seeds, local = trainer.draw_prompts(1)
        pending = [] if overlap else None

        def submit(batch, begin, end, images):   # what Trainer.run_epoch does with rewards.overlap
            args, kwargs = trainer._chunk_args(batch, begin, end, images)
            pending.append(trainer._scorer().submit(*args, **kwargs))
        batch = trainer.collect_rollouts(1, entries[local], seeds[local], 0, on_chunk=submit if overlap else None)
        rewards[overlap] = trainer.score(batch, pending)[0].components
    trainer.close()
    err = _err(rewards[True], rewards[False])
    _report("overlap == inline rewards", err <= 1e-5, f"max|Δreward|={err:.2e} over {rewards[True].numel()} values")


CHECKS = (check_ddim_step, check_flash_attention, check_eager_baseline_step, check_overlapped_scoring)


def run_checks(device: torch.device, size: str) -> None:
    """Every check, each on its own: an exception fails that check and the next one runs."""
    for check in CHECKS:
        try:
            check(device, size)
        except Exception as err:
            traceback.print_exc()
            _report(check.__name__, False, f"raised {type(err).__name__}: {str(err).splitlines()[0][:300]}")


def suite_step(rec, rehearse: bool) -> None:
    """The GPU suite's step: the checks recorded in ``rec`` as they finish."""
    global _RECORD
    from .gpu_steps import device_for

    _RECORD = rec
    try:
        run_checks(torch.device(device_for(rehearse)), "tiny" if rehearse else "gpu")
    finally:
        _RECORD = None
    rec.headline(checks=len(rec.data["checks"]), failed=len(rec.failures))


def main() -> int:
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device; the CPU equivalents are the TRITON_INTERPRET=1 unit tests", file=sys.stderr)
        return 2
    run_checks(torch.device("cuda"), "gpu")
    print(f"gpu_check: {len(FAILURES)} failure(s)" + (f": {FAILURES}" if FAILURES else ""))
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
