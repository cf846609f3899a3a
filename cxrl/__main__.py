"""``python -m cxrl ...`` is the ``cxrl`` command (also what ``torchrun -m cxrl train`` runs)."""
from cxrl.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
