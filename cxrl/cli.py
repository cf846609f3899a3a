"""The ``cxrl`` command. Each subcommand lives in ``cxrl/commands/<name>.py`` and exposes
``add_arguments(parser)`` and ``run(args) -> int``; they are imported only when chosen so that
``cxrl --help`` stays fast and one broken optional dependency cannot take down every command.

Every expected error — a bad input, a missing file, a bad reward, a full disk — ends the command with one
line on stderr naming what and where, and exit code 2; ``--debug`` (or ``CXRL_DEBUG=1``) shows the
traceback instead. A run stopped by repeated non-finite updates exits 3, a failure on another torchrun
rank 1.
"""
from __future__ import annotations

import argparse
import difflib
import importlib
import os
import sys

from cxrl.messages import show_on_stderr

# OpenMP worker threads spin at every barrier before they sleep (libgomp's default: a few hundred thousand turns).
# Alone on a machine that costs nothing; beside another busy process (two runs on a 2-vCPU VM) the spinning threads
# can hold the cores the other side's threads wait for: the demo UNet's 2-thread forward+backward took 25 ms per
# sample alone and, side by side, 92-996 ms (intermittently collapsing) with the default spin, 82-90 ms with 10,000
# turns, which cost nothing alone in 3 of 4 timings (docs/demo.md, "Threads"; benchmarks/thread_contention.py).
# It has to be in the environment before torch loads libgomp, so it is set here, before any command imports torch;
# a GOMP_SPINCOUNT (or OMP_WAIT_POLICY) the user set wins.
OPENMP_SPIN_COUNT = "10000"
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", OPENMP_SPIN_COUNT)

# subcommand name -> (module, one-line help)
COMMANDS = {
    "train": ("cxrl.commands.train", "RL fine-tuning (no arguments: the embedded demo)"),
    "sample": ("cxrl.commands.sample", "generate images from prompts"),
    "evaluate": ("cxrl.commands.evaluate", "paper metrics: posture, AUROC, consistency, FID, MS-SSIM"),
    "bench": ("cxrl.commands.bench", "throughput benchmarks, side by side with baselines"),
    "pretrain": ("cxrl.commands.pretrain", "train the demo base generator on the phantom world"),
    "train-reward": ("cxrl.commands.train_reward", "train a reward model (posture | diagnostic | consistency)"),
    "anchor-scores": ("cxrl.commands.anchor_scores", "precompute RLCF anchor scores for a config's prompts and seeds"),
    "step-credit": ("cxrl.commands.step_credit", "which DDIM steps decide the rewards: the steps worth training"),
    "data": ("cxrl.commands.data", "inspect / preview / prepare datasets"),
    "backend": ("cxrl.commands.backend", "print which compute backends are active and why"),
}
# errors a user can cause and fix: one line, exit 2 (OSError covers missing files, permissions, a full disk)
EXPECTED_ERRORS = (ValueError, OSError)


def build_parser(argv: list[str]) -> tuple[argparse.ArgumentParser, object | None]:
    parser = argparse.ArgumentParser(prog="cxrl", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (also CXRL_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    module = None
    for name, (module_name, help_text) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text)
        sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of an error")
        if name == chosen:
            module = importlib.import_module(module_name)
            module.add_arguments(sp)
    return parser, module


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    if chosen is not None and chosen not in COMMANDS:
        close = difflib.get_close_matches(chosen, COMMANDS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        print(f"cxrl: unknown command '{chosen}'{hint}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    parser, module = build_parser(argv)
    args, extra = parser.parse_known_args(argv)
    # argparse gives a `nargs="*"` positional only the words before the first option, so `key=value` overrides
    # after `--output DIR` come back unparsed: they are overrides all the same, wherever they stand
    overrides = [a for a in extra if "=" in a and not a.startswith("-")]
    if overrides and hasattr(args, "overrides"):
        args.overrides = list(args.overrides) + overrides
        extra = [a for a in extra if a not in overrides]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if module is None:
        parser.print_help()
        return 0
    show_on_stderr()
    _quiet_library_progress_bars()
    debug = getattr(args, "debug", False) or os.environ.get("CXRL_DEBUG", "") not in ("", "0")
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print(f"cxrl {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001  (mapped to exit codes below; re-raised with --debug)
        if debug:
            raise
        return _report(args.command, err)


def _quiet_library_progress_bars() -> None:
    """transformers and diffusers draw a progress bar for every model they load; on a command's stderr that is
    noise around cxrl's own messages and bars."""
    for name in ("transformers", "diffusers"):
        module = sys.modules.get(name)   # loaded by the chosen command when it uses them; never imported here
        if module is not None:
            module.utils.logging.disable_progress_bar()


def _report(command: str, err: Exception) -> int:
    """One line for an error and its exit code; anything unexpected keeps its traceback."""
    from cxrl.rl.distributed import RemoteRankError  # only on an error: keeps `cxrl --help` light
    from cxrl.rl.update import NonFiniteAbort

    if isinstance(err, NonFiniteAbort):
        print(f"cxrl {command}: aborted: {err}", file=sys.stderr)
        return 3
    if isinstance(err, RemoteRankError):
        print(f"cxrl {command}: {err}", file=sys.stderr)
        return 1
    if isinstance(err, EXPECTED_ERRORS):
        print(f"cxrl {command}: error: {err} (--debug for the traceback)", file=sys.stderr)
        return 2
    raise err


if __name__ == "__main__":
    raise SystemExit(main())
