"""Which compute backends are active, and why not when they are not.

One report for the whole package (``cxrl.backend_report()``; ``python -m cxrl.backend`` prints it).
Nothing here falls back silently: each probe returns ``(active, reason)`` and modules that pick a
backend at run time (the attention dispatcher, the DDIM step) record their choice with
:func:`record_choice` so the report shows what was actually used.
"""
from __future__ import annotations

import functools
import importlib
import os
import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class BackendStatus:
    name: str
    active: bool
    reason: str


_choices: dict[str, str] = {}
_choices_lock = threading.Lock()


def record_choice(component: str, description: str) -> None:
    """Remember a run-time backend decision (e.g. attention for a shape) for the report."""
    with _choices_lock:
        _choices[component] = description


def recorded_choices() -> dict[str, str]:
    with _choices_lock:
        return dict(_choices)


@functools.lru_cache(maxsize=None)
def cpp_store() -> BackendStatus:
    try:
        ext = importlib.import_module("cxrl._C")
    except ImportError as err:
        why = "not built (installed with CXRL_BUILD_EXT=0?)" if "No module named" in str(err) else str(err)
        return BackendStatus("cpp_store", False, f"cxrl._C could not be imported: {why}; using the pure-Python store")
    return BackendStatus("cpp_store", True, f"cxrl._C {getattr(ext, '__version__', '')} ({ext.__file__})".strip())


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@functools.lru_cache(maxsize=None)
def triton_kernels() -> BackendStatus:
    try:
        import triton
    except ImportError as err:
        return BackendStatus("triton", False, f"triton is not installed ({err}); torch reference kernels are used")
    if os.environ.get("TRITON_INTERPRET") == "1":
        return BackendStatus("triton", True, f"triton {triton.__version__} in interpreter mode (TRITON_INTERPRET=1): kernel bodies run on the CPU")
    if not _cuda_available():
        return BackendStatus("triton", False, f"triton {triton.__version__} installed but no CUDA device; torch reference kernels are used")
    return BackendStatus("triton", True, f"triton {triton.__version__} on CUDA")


@functools.lru_cache(maxsize=None)
def xformers_attention() -> BackendStatus:
    try:
        import xformers  # noqa: F401
        import xformers.ops as xops
    except Exception as err:  # xformers raises more than ImportError when its build mismatches torch
        return BackendStatus("xformers", False, f"xformers does not import: {err}")
    if not _cuda_available():
        return BackendStatus("xformers", False, "xformers imports but has no CPU kernels and there is no CUDA device")
    import torch

    try:  # importing is not enough: a wheel built for another torch/CUDA fails only when run
        q = torch.randn(1, 8, 1, 64, device="cuda", dtype=torch.float16)
        xops.memory_efficient_attention(q, q, q)
    except Exception as err:
        return BackendStatus("xformers", False, f"xformers imports but fails to run on this device: {err}")
    return BackendStatus("xformers", True, f"xformers {xformers.__version__} runs on {torch.cuda.get_device_name()}")


@functools.lru_cache(maxsize=None)
def sdpa_attention() -> BackendStatus:
    import torch
    import torch.nn.functional as F

    if not hasattr(F, "scaled_dot_product_attention"):
        return BackendStatus("sdpa", False, f"torch {torch.__version__} has no scaled_dot_product_attention")
    where = "CUDA" if _cuda_available() else "CPU"
    return BackendStatus("sdpa", True, f"torch {torch.__version__} scaled_dot_product_attention on {where}")


def backend_report() -> dict[str, dict]:
    """Every backend with ``active`` and ``reason``, plus the run-time choices made so far."""
    statuses = [cpp_store(), triton_kernels(), xformers_attention(), sdpa_attention()]
    report = {s.name: {"active": s.active, "reason": s.reason} for s in statuses}
    report["choices"] = recorded_choices()
    return report


def format_report(report: dict | None = None) -> str:
    report = report if report is not None else backend_report()
    lines = ["cxrl backends:"]
    for name, entry in report.items():
        if name == "choices":
            continue
        mark = "on " if entry["active"] else "off"
        lines.append(f"  [{mark}] {name:10s} {entry['reason']}")
    if report.get("choices"):
        lines.append("run-time choices:")
        lines += [f"  {k}: {v}" for k, v in sorted(report["choices"].items())]
    return "\n".join(lines)
