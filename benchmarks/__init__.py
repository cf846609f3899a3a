"""cxrl benchmark suite: ``python -m benchmarks`` or ``cxrl bench``. One case per ``bench_<case>.py``; the GPU suite's
driver (``gpu_suite.py``) and its steps (``gpu_steps.py`` and the modules it names).

Imports: the cases import cxrl, diffusers and torch-heavy modules inside the functions that use them, on purpose.
The runner imports every case module to list the cases, the GPU machine has no diffusers (and no trl) until the
carried wheels are installed, and the suite's driver must run — and report what is missing — with the standard
library alone; so a case module has to load where another case's dependencies are absent.
"""
