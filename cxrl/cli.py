"""The ``cxrl`` command. Each subcommand lives in ``cxrl/commands/<name>.py`` and exposes
``add_arguments(parser)`` and ``run(args) -> int``; they are imported only when chosen so that
``cxrl --help`` stays fast and one broken optional dependency cannot take down every command.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# subcommand name -> (module, one-line help)
COMMANDS = {
    "train": ("cxrl.commands.train", "RL fine-tuning (no arguments: the embedded demo)"),
    "sample": ("cxrl.commands.sample", "generate images from prompts"),
    "evaluate": ("cxrl.commands.evaluate", "paper metrics: posture, AUROC, consistency, FID, MS-SSIM"),
    "bench": ("cxrl.commands.bench", "throughput benchmarks, side by side with baselines"),
    "pretrain": ("cxrl.commands.pretrain", "train the demo base generator on the phantom world"),
    "train-reward": ("cxrl.commands.train_reward", "train a reward model (posture | diagnostic | consistency)"),
    "data": ("cxrl.commands.data", "inspect / preview / prepare datasets"),
    "backend": ("cxrl.commands.backend", "print which compute backends are active and why"),
}


def build_parser(argv: list[str]) -> tuple[argparse.ArgumentParser, object | None]:
    parser = argparse.ArgumentParser(prog="cxrl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = argv[0] if argv and not argv[0].startswith("-") else None
    module = None
    for name, (module_name, help_text) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text)
        if name == chosen:
            module = importlib.import_module(module_name)
            module.add_arguments(sp)
    return parser, module


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-") and argv[0] not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(argv[0], COMMANDS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        print(f"cxrl: unknown command '{argv[0]}'{hint}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    parser, module = build_parser(argv)
    args = parser.parse_args(argv)
    if module is None:
        parser.print_help()
        return 0
    return int(module.run(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
