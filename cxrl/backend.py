"""``python -m cxrl.backend`` prints which backends are active and why."""
from cxrl._backend import format_report

if __name__ == "__main__":
    print(format_report())
