"""``python -m benchmarks [CASE ...] [--size cpu|gpu] [--json FILE]`` — same as ``cxrl bench``."""
import sys

from .runner import main

if __name__ == "__main__":
    sys.exit(main())
