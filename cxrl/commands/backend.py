"""``cxrl backend``: the backend report (same as ``python -m cxrl.backend``)."""
import json

from cxrl._backend import backend_report, format_report


def add_arguments(parser):
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args) -> int:
    print(json.dumps(backend_report(), indent=2) if args.json else format_report())
    return 0
