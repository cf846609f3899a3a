"""``cxrl bench [CASE ...] [--size cpu|gpu] [--json FILE]``: the benchmark suite (``cxrl.benchmarks``)."""
from cxrl.benchmarks.runner import add_arguments, run_from_args


def run(args) -> int:
    return run_from_args(args)
