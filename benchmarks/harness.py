"""The one harness every benchmark case uses.

A case times several *providers* (cxrl and its baselines) side by side in one process: providers are
alternated within each repetition so that drift in machine load hits them equally; the result is the
median and the p20/p80 spread per provider, and the ratio of each provider's median to the baseline's.
Rows append to ``benchmarks/results/<case>.csv`` with machine, device, versions and git sha.
"""
from __future__ import annotations

import csv
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass
class Timing:
    provider: str
    seconds: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def quantile(self, q: float) -> float:
        s = sorted(self.seconds)
        return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


@dataclass
class CaseResult:
    case: str
    size: str
    mode: str
    timings: dict[str, Timing]
    baseline: str
    extra: dict[str, float] = field(default_factory=dict)

    def ratio(self, provider: str) -> float:
        """How many times faster ``provider`` is than the baseline (baseline median / provider median)."""
        return self.timings[self.baseline].median / self.timings[provider].median

    def rows(self) -> list[dict]:
        env = environment()
        out = []
        for name, t in self.timings.items():
            row = {
                "case": self.case, "size": self.size, "mode": self.mode, "provider": name,
                "p20_ms": f"{1e3 * t.quantile(0.2):.4f}", "p50_ms": f"{1e3 * t.median:.4f}",
                "p80_ms": f"{1e3 * t.quantile(0.8):.4f}", "reps": len(t.seconds),
                "speedup_vs_baseline": f"{self.ratio(name):.3f}", "baseline": self.baseline,
            }
            row.update({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in self.extra.items()})
            row.update(env)
            out.append(row)
        return out

    def table(self) -> str:
        lines = [f"{self.case} [{self.size}, {self.mode}]"]
        for name, t in self.timings.items():
            lines.append(
                f"  {name:28s} p50 {1e3 * t.median:10.3f} ms  (p20 {1e3 * t.quantile(0.2):.3f}, p80 {1e3 * t.quantile(0.8):.3f})"
                f"  x{self.ratio(name):.2f} vs {self.baseline}"
            )
        for k, v in self.extra.items():
            lines.append(f"  {k}: {v:.6g}" if isinstance(v, float) else f"  {k}: {v}")
        return "\n".join(lines)


def _sync(device: str | None) -> None:
    if device and device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def time_side_by_side(
    providers: dict[str, Callable[[], object]],
    *,
    reps: int = 10,
    warmup: int = 2,
    device: str | None = None,
) -> dict[str, Timing]:
    """Run each provider ``warmup`` times, then ``reps`` alternating repetitions; wall-clock seconds."""
    for fn in providers.values():
        for _ in range(warmup):
            fn()
        _sync(device)
    timings = {name: Timing(name, []) for name in providers}
    for rep in range(reps):
        # rotate the order each repetition so no provider always runs right after another
        names = list(providers)
        names = names[rep % len(names):] + names[: rep % len(names)]
        for name in names:
            _sync(device)
            t0 = time.perf_counter()
            providers[name]()
            _sync(device)
            timings[name].seconds.append(time.perf_counter() - t0)
            progress(f"{name} rep {rep + 1}/{reps}", timings[name].seconds[-1])
    return timings


def progress(what: str, seconds: float) -> None:
    """One line per finished epoch or call, flushed: a step killed at its cap still shows how far it got and at what
    pace (the GPU suite keeps the log)."""
    print(f"[bench] {what}: {seconds:.3f} s", file=sys.stderr, flush=True)


_ENV_CACHE: dict | None = None


def environment() -> dict[str, str]:
    """Machine, device, versions and git sha recorded with every row."""
    global _ENV_CACHE
    if _ENV_CACHE is None:
        import torch

        try:
            import triton

            triton_version = triton.__version__
        except ImportError:
            triton_version = "none"
        try:
            sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                 cwd=Path(__file__).parent, timeout=5).stdout.strip() or "unknown"
        except (OSError, subprocess.TimeoutExpired):
            sha = "unknown"
        device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu x{os.cpu_count()}"
        _ENV_CACHE = {
            "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "machine": f"{platform.node()} {platform.machine()}",
            "device": device,
            "torch": torch.__version__,
            "triton": triton_version,
            "git_sha": sha,
        }
    return dict(_ENV_CACHE)


def append_csv(result: CaseResult, results_dir: Path | None = None) -> Path:
    results_dir = Path(results_dir or os.environ.get("CXRL_BENCH_RESULTS", RESULTS_DIR))
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{result.case}.csv"
    rows = result.rows()
    fieldnames = list(rows[0].keys())
    exists = path.exists()
    if exists:  # keep the old header if columns match; otherwise start a new file beside it
        with path.open() as f:
            header = next(csv.reader(f), [])
        if header != fieldnames:
            path = results_dir / f"{result.case}-{len(fieldnames)}cols.csv"
            exists = path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fieldnames)
        if not exists:
            writer.writeheader()
        writer.writerows(rows)
    return path


class single_thread_on_cpu:
    """Context manager: one intra-op torch thread while timing on the CPU (on a shared, loaded CPU more
    threads mostly measure contention); restores the previous count. No-op on CUDA."""

    def __init__(self, device: str):
        self.device = device

    def __enter__(self):
        import torch

        self.before = torch.get_num_threads()
        if not str(self.device).startswith("cuda"):
            torch.set_num_threads(1)
        return self

    def __exit__(self, *exc):
        import torch

        torch.set_num_threads(self.before)
        return False


def case_main(run: Callable[[str], list[CaseResult]], description: str, argv: list[str] | None = None) -> int:
    """The ``python -m benchmarks.bench_<case>`` entry point shared by every case."""
    import argparse

    import torch

    parser = argparse.ArgumentParser(description=description.strip().splitlines()[0])
    parser.add_argument("--size", choices=["cpu", "gpu"], default="gpu" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-csv", action="store_true", help="print only; do not append to benchmarks/results")
    args = parser.parse_args(argv)
    for result in run(args.size):
        if not args.no_csv:
            print("  ->", append_csv(result))
        print(result.table())
    return 0


def synced_clock(device) -> Callable[[], float]:
    """A ``perf_counter`` that first waits for queued CUDA work when ``device`` is a GPU."""
    cuda = str(device).startswith("cuda")

    def now() -> float:
        if cuda:
            import torch

            torch.cuda.synchronize()
        return time.perf_counter()

    return now


def device_for_size(size: str) -> str:
    """``'cpu'`` or ``'cuda'`` for a case's ``size``; a GPU size without a GPU is an error, not a silent CPU run."""
    if size not in ("cpu", "gpu"):
        raise ValueError(f"size {size!r} must be 'cpu' or 'gpu'")
    if size == "gpu":
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("size='gpu' needs a CUDA device; use size='cpu' here")
        return "cuda"
    return "cpu"


def write_record(record: dict, out: str | Path | None) -> None:
    """Print a standalone benchmark's JSON record and, unless ``out`` is empty, write it there (folders made)."""
    text = json.dumps(record, indent=1)
    print(text)
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
