"""cxrl benchmark suite: ``python -m benchmarks`` or ``cxrl bench``. One case per ``bench_<case>.py``."""
