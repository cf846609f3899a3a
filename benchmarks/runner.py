"""Runs benchmark cases: each ``bench_<case>.py`` exposes ``run(size) -> list[CaseResult]``.

Every case times cxrl and its baselines side by side in one process (see ``harness.py``); this runner
only picks cases, appends their rows to ``benchmarks/results/<case>.csv``, prints the tables last and
optionally writes everything as JSON.
"""
from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
import time
from pathlib import Path

from .harness import append_csv, environment

PACKAGE = __name__.rsplit(".", 1)[0]


def available_cases() -> list[str]:
    here = Path(__file__).resolve().parent
    return sorted(m.name[len("bench_"):] for m in pkgutil.iter_modules([str(here)]) if m.name.startswith("bench_"))


def run_cases(cases: list[str], size: str, results_dir: str | None = None) -> list:
    results = []
    for case in cases:
        module = importlib.import_module(f"{PACKAGE}.bench_{case}")
        t0 = time.perf_counter()
        print(f"== {case} ({size}) ...", file=sys.stderr, flush=True)
        case_results = module.run(size=size)
        for r in case_results:
            append_csv(r, results_dir)
        print(f"   done in {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
        results.extend(case_results)
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("cases", nargs="*", help=f"cases to run (default: all): {', '.join(available_cases())}")
    parser.add_argument("--size", choices=["cpu", "gpu"], default=None,
                        help="problem sizes: 'cpu' finishes the suite in minutes on 2 cores; 'gpu' is the real SD shape (default: gpu when CUDA is present)")
    parser.add_argument("--json", dest="json_path", default=None, help="also write all results to this JSON file")
    parser.add_argument("--results-dir", default=None, help="where CSV rows are appended (default benchmarks/results)")


def run_from_args(args) -> int:
    import torch

    known = available_cases()
    unknown = [c for c in args.cases if c not in known]
    if unknown:
        print(f"unknown benchmark case(s) {unknown}; available: {known}", file=sys.stderr)
        return 2
    size = args.size or ("gpu" if torch.cuda.is_available() else "cpu")
    results = run_cases(args.cases or known, size, args.results_dir)
    print(f"\n# cxrl benchmarks ({size}) on {environment()['device']}, torch {environment()['torch']}")
    for r in results:
        print(r.table())
    if args.json_path:
        payload = {"environment": environment(), "size": size, "results": [row for r in results for row in r.rows()]}
        Path(args.json_path).write_text(json.dumps(payload, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))
