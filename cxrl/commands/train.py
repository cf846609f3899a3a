"""``cxrl train``: RL fine-tuning. With no arguments it runs the demo config shipped in the package.

    cxrl train [--config FILE] [key=value ...] [--output DIR] [--resume DIR]
    torchrun --nproc_per_node N -m cxrl train ...        (data parallel; gloo on CPU, nccl on GPU)

``--resume DIR`` continues the run in DIR from its newest complete checkpoint, with the config the run
was started with (``DIR/config.yaml``) unless ``--config`` is given; overrides apply on top.
Every finished run saves the tuned generator to ``<output>/final`` (diffusers layout, ACE tokens in ``ace/``).
With ``eval.enabled`` (on in the demo config) it then evaluates base vs tuned on held-out prompts with the held-out evaluators (:func:`cxrl.rl.demo.evaluate_run`):
the paper-layout table is printed and metrics.json / results.md / comparison.json / grids go to ``<output>/eval``.
Exit codes: 0 done, 2 bad config/missing input, 3 aborted on repeated non-finite updates, 1 other error.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("--config", default=None, help="YAML config (default: the packaged demo config)")
    parser.add_argument("--output", default=None, help="run directory (overrides log.output_dir)")
    parser.add_argument("--resume", default=None, metavar="DIR", help="continue the run in DIR from its last complete checkpoint")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.learning_rate=1e-4")


def _resolve_config(args):
    from cxrl.config import load_config

    config_path = args.config
    if args.resume and config_path is None:
        saved = Path(args.resume) / "config.yaml"
        if not saved.is_file():
            raise FileNotFoundError(f"--resume {args.resume}: no config.yaml there (is it a cxrl run directory?); "
                                    "pass --config explicitly")
        config_path = saved
    cfg = load_config(config_path, args.overrides)
    if args.resume:
        cfg.log.output_dir = str(args.resume)
    elif args.output:
        cfg.log.output_dir = str(args.output)
    return cfg


def run(args) -> int:
    from cxrl.config import to_yaml
    from cxrl.rl.distributed import RemoteRankError, init_distributed
    from cxrl.rl.update import NonFiniteAbort

    try:
        cfg = _resolve_config(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"cxrl train: error: {err}", file=sys.stderr)
        return 2
    if cfg.train.torch_threads:
        import torch

        torch.set_num_threads(cfg.train.torch_threads)
    dist = init_distributed(cfg.model.device, cfg.dist.backend, cfg.dist.timeout_s)
    trainer = None
    try:
        try:
            trainer = _build(cfg, dist)
        except (ValueError, FileNotFoundError) as err:
            print(f"cxrl train: error: {err}", file=sys.stderr)
            return 2
        out = Path(cfg.log.output_dir)
        if args.resume and not trainer.resume(out):
            trainer.logger.info(f"no complete checkpoint in {out / 'checkpoints'}; starting from epoch 0")
        if dist.is_main:
            out.mkdir(parents=True, exist_ok=True)
            (out / "config.yaml").write_text(to_yaml(cfg))
        started = time.perf_counter()
        trainer.fit()
        trainer.logger.info(f"done: {cfg.train.epochs} epochs in {time.perf_counter() - started:.0f} s; outputs in {out}")
    except NonFiniteAbort as err:
        print(f"cxrl train: aborted: {err}", file=sys.stderr)
        return 3
    except RemoteRankError as err:
        print(f"cxrl train: {err}", file=sys.stderr)
        return 1
    finally:
        dist.close()
    if not dist.is_main:
        return 0
    final = _save_final(cfg, trainer, Path(cfg.log.output_dir))
    if not cfg.eval.enabled:
        return 0
    try:
        _final_evaluation(cfg, trainer, final.parent)
    except (ValueError, FileNotFoundError) as err:
        print(f"cxrl train: evaluation error: {err}", file=sys.stderr)
        return 2
    return 0


def _save_final(cfg, trainer, out: Path) -> Path:
    """The tuned generator in the diffusers layout at ``<out>/final`` (what ``cxrl sample`` / ``cxrl evaluate`` load)."""
    from cxrl.diffusion.generator import save_generator

    final = save_generator(trainer.gen, out / "final", ace=trainer.policy.ace, overwrite=True)
    what = "full UNet weights" if cfg.model.finetune == "full" else "LoRA merged into the UNet"
    ace = ", ACE tokens in ace/" if trainer.policy.ace is not None else ""
    trainer.logger.info(f"tuned generator saved to {final} ({what}{ace})")
    return final


def _final_evaluation(cfg, trainer, out: Path) -> None:
    """Evaluate the tuned generator against a fresh load of the base (the untouched anchor)."""
    from cxrl.rl.components import build_generator
    from cxrl.rl.demo import comparison_markdown, evaluate_run

    if cfg.eval.torch_threads:
        import torch

        torch.set_num_threads(cfg.eval.torch_threads)
    base = build_generator(cfg.model, trainer.device, workdir=out / "work" / "rank0")
    evaluation = evaluate_run(cfg, trainer.gen, ace=trainer.policy.ace, base_gen=base, out_dir=out / cfg.eval.output_subdir,
                              log=trainer.logger.info)
    print("\n" + evaluation.table + "\n" + comparison_markdown(evaluation.comparison, cfg.eval.bootstrap), flush=True)
    trainer.logger.info(f"evaluation took {evaluation.seconds:.0f} s; metrics.json, results.md, comparison.json and "
                        f"grids/ in {evaluation.out_dir}")


def _build(cfg, dist):
    from cxrl.rl.components import resolve_asset
    from cxrl.rl.prompts import load_prompt_pool
    from cxrl.rl.trainer import Trainer

    with dist.stage("setup"):
        if cfg.model.path != "tiny":  # fail before the slow steps when the generator is missing
            resolve_asset(cfg.model.path)
        pool = load_prompt_pool(cfg.data)
        trainer = Trainer(cfg, pool, dist)
    return trainer
