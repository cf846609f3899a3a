"""``cxrl bench [CASE ...] [--size cpu|gpu] [--json FILE]``: the benchmark suite (``cxrl.benchmarks``)."""
from cxrl.benchmarks.runner import add_arguments, run_from_args

__all__ = ["add_arguments", "run"]   # add_arguments is the runner's own: `cxrl bench` and `python -m benchmarks` agree


def run(args) -> int:
    return run_from_args(args)
