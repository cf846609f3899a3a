"""``cxrl bench [CASE ...] [--size cpu|gpu] [--json FILE]``: the benchmark suite (``cxrl.benchmarks``)."""


def add_arguments(parser):
    from cxrl.benchmarks.runner import add_arguments as add

    add(parser)


def run(args) -> int:
    from cxrl.benchmarks.runner import run_from_args

    return run_from_args(args)
