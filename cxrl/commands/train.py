"""``cxrl train``: RL fine-tuning. With no arguments it runs the demo config shipped in the package.

    cxrl train [--config FILE] [key=value ...] [--output DIR [--overwrite]] [--resume DIR [--trust-run-code]]
    torchrun --nproc_per_node N -m cxrl train ...        (data parallel; gloo on CPU, nccl on GPU)

``--resume DIR`` continues the run in DIR from its newest complete checkpoint, with the config the run
was started with (``DIR/config.yaml``) unless ``--config`` is given; overrides apply on top. Custom reward
code named in ``DIR/config.yaml`` is imported only with ``--trust-run-code`` (or when the command line names
it again), and ``DIR/config.yaml`` is rewritten only when the resumed run saves its first checkpoint: a resume
that fails before that (a bad override, a reward that raises) leaves the run as it was.
A new run never mixes with another (:mod:`cxrl.rl.run_dir`): a directory named with ``--output`` or
``log.output_dir=`` that holds a run is refused (``--resume`` it, or ``--overwrite`` to delete its run files
first); the default directory of a config (``runs/demo``) becomes ``runs/demo-2``, ``-3``, ... when taken.
Every finished run saves the tuned generator to ``<output>/final`` (diffusers layout, ACE tokens in ``ace/``).
With ``eval.enabled`` (on in the demo config) it then evaluates base vs tuned on held-out prompts with the
held-out evaluators — the same path as ``cxrl evaluate`` (:func:`cxrl.eval.run.run_evaluation`): the
paper-layout table is printed and metrics.json / results.md / comparison.json / grids go to ``<output>/eval``.
Exit codes: 0 done, 2 bad config/missing input, 3 aborted on repeated non-finite updates, 1 other error.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from cxrl.compose import build_generator, build_trainer, evaluation_inputs
from cxrl.config import load_config, to_yaml
from cxrl.config.schema import parse_override
from cxrl.diffusion.generator import save_generator
from cxrl.eval.run import run_evaluation
from cxrl.machine import auto_threads, yardstick
from cxrl.rl.distributed import init_distributed
from cxrl.rl.run_dir import (
    check_can_create,
    clear_run,
    new_run_record,
    next_free_run_dir,
    note_resume,
    read_run_record,
    refuse_existing_run,
    write_run_files,
)

log = logging.getLogger(__name__)


def add_arguments(parser) -> None:
    parser.add_argument("--config", default=None, help="YAML config (default: the packaged demo config)")
    parser.add_argument("--output", default=None, help="run directory (overrides log.output_dir)")
    parser.add_argument("--resume", default=None, metavar="DIR", help="continue the run in DIR from its last complete checkpoint")
    parser.add_argument("--overwrite", action="store_true",
                        help="start over in a directory that holds a run: first delete the files a run writes there")
    parser.add_argument("--trust-run-code", action="store_true",
                        help="with --resume: import the custom reward code named in DIR/config.yaml")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.learning_rate=1e-4")


def resolve_config(args):
    """The run's config and directory (chosen before any rank writes, so every torchrun rank agrees)."""
    if args.resume and args.overwrite:
        raise ValueError("--resume continues the run in a directory, --overwrite deletes it: give one of them")
    if args.resume and args.output and Path(args.output) != Path(args.resume):
        raise ValueError(f"--resume {args.resume} runs in its own directory; --output {args.output} names another")
    config_path = args.config
    if args.resume and config_path is None:
        saved = Path(args.resume) / "config.yaml"
        if not saved.is_file():
            raise FileNotFoundError(f"--resume {args.resume}: no config.yaml there (is it a cxrl run directory?); "
                                    "pass --config explicitly")
        config_path = saved
    cfg = load_config(config_path, args.overrides)
    if args.resume:
        if args.config is None:
            check_run_code(cfg, args)
        cfg.log.output_dir = str(args.resume)
        return cfg
    named = args.output is not None or any(o.split("=", 1)[0].strip() == "log.output_dir" for o in args.overrides)
    if args.output is not None:
        cfg.log.output_dir = str(args.output)
    flag = "--output" if args.output is not None else "log.output_dir"
    check_can_create(cfg.log.output_dir, flag)
    if named and not args.overwrite:
        refuse_existing_run(cfg.log.output_dir, flag)
    elif not named and not args.overwrite:   # a default directory: a person running it again gets a new one
        free = next_free_run_dir(cfg.log.output_dir)
        if str(free) != cfg.log.output_dir:
            log.info("%s holds an earlier run; this run goes to %s (--output DIR to choose, --resume %s to continue "
                     "that one)", cfg.log.output_dir, free, cfg.log.output_dir)
        cfg.log.output_dir = str(free)
    return cfg


def check_run_code(cfg, args) -> None:
    """Code named in a run directory's config.yaml (custom rewards) is imported only when the user names it
    too (``rewards.components=...`` on the command line) or passes ``--trust-run-code``: resuming someone
    else's run must not run their code without asking."""
    named_here = set()
    for item in args.overrides:
        key, value = parse_override(item)
        if key == "rewards.components" and isinstance(value, list):
            named_here |= {e.get("callable") for e in value if isinstance(e, dict)}
    foreign = [e["callable"] for e in cfg.rewards.components if e.get("callable") and e["callable"] not in named_here]
    if foreign and not args.trust_run_code:
        raise PermissionError(f"--resume {args.resume}: its config.yaml names code that resuming would import "
                              f"({', '.join(map(repr, foreign))}); pass --trust-run-code if you trust it")


def run(args) -> int:
    started = time.perf_counter()
    cfg = resolve_config(args)
    dist = init_distributed(cfg.model.device, cfg.dist.backend, cfg.dist.timeout_s)
    threads = cfg.train.torch_threads or auto_threads(dist.device.type, dist.world_size, cfg.rewards.overlap)
    if threads:
        torch.set_num_threads(threads)
    # the machine's speed, measured now, beside the run's times: a time means little without it
    machine = yardstick(dist.device) if dist.is_main else {}
    out = Path(cfg.log.output_dir)
    config_text = to_yaml(cfg)
    try:
        if args.overwrite and dist.is_main:
            removed = clear_run(out, cfg.rewards.anchor_cache, cfg.eval.output_subdir)
            if removed:
                log.info("--overwrite: deleted %s from %s", ", ".join(p.name for p in removed), out)
        dist.barrier()
        record = read_run_record(out) if args.resume else new_run_record(config_text)
        with dist.stage("setup"):
            trainer = build_trainer(cfg, dist=dist)
        if args.resume:
            trainer.run_id = record["run_id"] if record is not None else None
            if not trainer.resume(out):
                log.info("no complete checkpoint in %s; starting from epoch 0", out / "checkpoints")
            if record is None:   # a run started before run.json existed: record it now (its checkpoint's id, if any)
                record = new_run_record(config_text)
                record["run_id"] = trainer.run_id or record["run_id"]
                record["note"] = "recorded at a resume: the run started before cxrl wrote run.json ('created' is that resume)"
            note_resume(record, trainer.epoch, config_text)
            record["resumes"][-1]["machine"] = machine
        else:
            record["machine"] = machine
        trainer.run_id = record["run_id"]
        written = []

        def write_once(_checkpoint=None):
            if dist.is_main and not written:
                write_run_files(out, record, config_text)
                written.append(True)
        # a new run records itself now; a resumed one once it has a checkpoint under its (possibly changed) config,
        # so a resume that fails before that leaves config.yaml and run.json as they were
        if args.resume:
            trainer.on_checkpoint = write_once
        else:
            write_once()
        setup_done = time.perf_counter()
        trainer.fit()
        write_once()   # a resume with no epoch left to run
        train_done = time.perf_counter()
        log.info("done: %d epochs in %.0f s; outputs in %s", cfg.train.epochs, train_done - setup_done, out)
    finally:
        dist.close()
    if not dist.is_main:
        return 0
    save_final(cfg, trainer, out)
    if cfg.eval.enabled:
        final_evaluation(cfg, trainer, out)
    seconds = {"setup": setup_done - started, "train": train_done - setup_done,
               "save_and_evaluate": time.perf_counter() - train_done, "total": time.perf_counter() - started}
    record.setdefault("seconds", []).append({k: round(v, 1) for k, v in seconds.items()})   # one entry per invocation
    write_run_files(out, record, config_text)
    log.info("%.0f s in all (setup %.0f, training %.0f, final model and evaluation %.0f) on a machine whose yardstick "
             "reads %.3f TFLOP/s (single-thread fp32 1024^3 matmul; run.json)", seconds["total"], seconds["setup"],
             seconds["train"], seconds["save_and_evaluate"], machine["matmul_fp32_1024_1thread_tflops"])
    return 0


def save_final(cfg, trainer, out: Path) -> Path:
    """The tuned generator in the diffusers layout at ``<out>/final`` (what ``cxrl sample`` / ``cxrl evaluate`` load)."""
    final = save_generator(trainer.gen, out / "final", ace=trainer.policy.ace, overwrite=True)
    what = "full UNet weights" if cfg.model.finetune == "full" else "LoRA merged into the UNet"
    ace = ", ACE tokens in ace/" if trainer.policy.ace is not None else ""
    log.info("tuned generator saved to %s (%s%s)", final, what, ace)
    return final


def final_evaluation(cfg, trainer, out: Path) -> None:
    """Evaluate the tuned generator against a fresh load of the base (the untouched anchor)."""
    if cfg.eval.torch_threads:
        torch.set_num_threads(cfg.eval.torch_threads)
    base = build_generator(cfg.model, trainer.device, workdir=out / "work" / "rank0")
    inputs = evaluation_inputs(cfg, trainer.gen.resolution[0], trainer.device)
    extra = {"data": cfg.eval.source, "split": cfg.eval.split, "rl_prompt_split": cfg.data.split,
             "torch_threads": torch.get_num_threads(),
             "note": "scored by held-out evaluators, never the reward models the RL optimised"}
    aces = {"tuned": trainer.policy.ace} if trainer.policy.ace is not None else None
    evaluation = run_evaluation({"base": base, "tuned": trainer.gen}, inputs.items, inputs.evaluators,
                                inputs.feature_extractor, cfg.eval, cfg.sampling, aces=aces,
                                out_dir=out / cfg.eval.output_subdir, extra=extra)
    print("\n" + evaluation.table, flush=True)
    log.info("evaluation took %.0f s; metrics.json, results.md, comparison.json and grids/ in %s",
             evaluation.seconds, evaluation.out_dir)
