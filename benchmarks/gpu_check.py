"""Correctness of the Triton kernels on a real GPU (compiled, not interpreted), against their references.

Run by ``benchmarks/gpu_suite.sh``; exits non-zero on any mismatch. On the CPU the same checks run in
the unit tests under ``TRITON_INTERPRET=1``; this is the check that the compiled kernels agree too.
Tolerance rule for low precision: |fast − ref64| ≤ 2·|torch same dtype − ref64| + atol.
"""
from __future__ import annotations

import sys

import torch

from cxrl.kernels import ddim_step_reference, flash_attention, fused_ddim_step

FAILURES: list[str] = []


def _report(name: str, ok: bool, detail: str) -> None:
    print(f"  [{'ok' if ok else 'FAIL'}] {name}: {detail}", flush=True)
    if not ok:
        FAILURES.append(name)


def _err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def check_ddim_step(device: torch.device) -> None:
    print("fused DDIM step + log-prob (Triton vs torch reference)")
    for shape in [(3, 1, 17, 23), (32, 4, 64, 64), (32, 1, 64, 64)]:
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


def check_flash_attention(device: torch.device) -> None:
    print("flash attention (Triton vs fp64 math reference)")
    cases = [(2, 8, 1024, 1024, 40), (2, 8, 256, 77, 80), (1, 8, 4096, 4096, 64), (2, 8, 256, 256, 160),
             (2, 8, 333, 79, 128), (1, 2, 37, 77, 40)]
    for (B, H, N, Nk, D) in cases:
        for dtype in (torch.float16, torch.bfloat16, torch.float32):
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


def main() -> int:
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device; the CPU equivalents are the TRITON_INTERPRET=1 unit tests", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    check_ddim_step(device)
    check_flash_attention(device)
    print(f"gpu_check: {len(FAILURES)} failure(s)" + (f": {FAILURES}" if FAILURES else ""))
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
