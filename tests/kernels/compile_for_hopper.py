"""Compile the flash-attention kernels for sm_90 with Triton's bundled compiler (no GPU needed) and print
one JSON line per run: shared memory the compiler allocated, whether the head dim is masked, wgmma use.

Run without TRITON_INTERPRET (the interpreter replaces the kernels with Python functions);
test_flash_attention_configs.py runs it in a subprocess.
"""
import importlib
import json
import os
import sys

if os.environ.get("TRITON_INTERPRET") == "1":
    sys.exit("compile_for_hopper.py: unset TRITON_INTERPRET (the interpreter cannot compile kernels)")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from cxrl.kernels import flash_attention_common as common  # noqa: E402

fa = importlib.import_module("cxrl.kernels.flash_attention")
fb = importlib.import_module("cxrl.kernels.flash_attention_bwd")
KERNEL_FNS = {"fwd": fa._attn_fwd_kernel, "bwd_dkdv": fb._attn_bwd_dkdv_kernel, "bwd_dq": fb._attn_bwd_dq_kernel}


def compile_kernel(kernel_fn, head_dim: int, cfg, dtype: str = "fp16", arch: int = 90):
    m, n, warps, stages = cfg
    constants = dict(HEAD_DIM=head_dim, BLOCK_D=common.block_d(head_dim), DOT_PRECISION="ieee", BLOCK_M=m, BLOCK_N=n)
    signature = {}
    for name in kernel_fn.arg_names:
        if name in constants:
            signature[name] = "constexpr"
        elif name.startswith("stride") or name in ("n_q", "n_k"):
            signature[name] = "i32"
        elif name in ("sm_scale", "qk_scale_log2"):
            signature[name] = "fp32"
        else:  # tensors: LSE and DELTA are fp32 rows, the rest are in the inputs' dtype
            signature[name] = "*fp32" if name in ("LSE", "DELTA") else f"*{dtype}"
    src = ASTSource(fn=kernel_fn, signature=signature,
                    constexprs={(kernel_fn.arg_names.index(k),): v for k, v in constants.items()})
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps, "num_stages": stages})


def main() -> None:
    rows = []
    for kernel, fn in KERNEL_FNS.items():
        cfg = (common.FWD_CONFIGS if kernel == "fwd" else common.BWD_CONFIGS)[64][0]
        for head_dim in (40, 64):
            compiled = compile_kernel(fn, head_dim, cfg)
            ttir = compiled.asm["ttir"]
            rows.append({"kernel": kernel, "head_dim": head_dim, "config": list(cfg),
                         "shared_bytes": compiled.metadata.shared,
                         "head_dim_mask": "d_ok" in ttir,  # the source's name for the padded-column mask
                         "compares_with_40": "dense<40>" in ttir, "wgmma": "wgmma" in compiled.asm["ptx"]})
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
