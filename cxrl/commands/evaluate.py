"""``cxrl evaluate``: the paper's metrics for a tuned model (and its base) on held-out prompts.

    cxrl evaluate --model runs/demo/final --baseline asset:base --data phantom --n-prompts 64 --out eval/
    cxrl evaluate --model runs/demo/final --baseline asset:base --config runs/demo/config.yaml   # as the run did
    cxrl evaluate --model RUN/final --baseline /models/roentgen --data mimic --data-root ROOT --reports-root REPORTS \
        --evaluators /models/cxrl-evaluators-mimic      # MIMIC: evaluators trained on MIMIC (docs/paper_run.md)

Samples every model from the same initial noise (4 per prompt), scores them with the held-out evaluators
(``cxrl/assets/evaluators/`` unless overridden — never the reward models the RL optimised), compares tuned
with base paired by prompt (bootstrap confidence intervals) and writes ``metrics.json`` (one object per
model), ``run.json``, ``results.md`` (the paper's Tables 1–2 layout), ``comparison.json`` and sample grids.
It is the same path as ``cxrl train``'s end-of-run evaluation (:func:`cxrl.eval.run.run_evaluation`).

Settings come from the ``eval`` and ``sampling`` sections of ``--config`` (a run's config.yaml reproduces its
evaluation: the models are loaded in its ``model.dtype`` with its ``model.attention``); flags override them.
A MIMIC evaluation refuses the shipped evaluators (trained on phantom renders): pass MIMIC-trained ones. Without ``--config`` the defaults are those listed in each flag's help.
FID features (``--fid-features``): ``auto`` = the diagnostic evaluator's own features on the phantom
world, torchxrayvision DenseNet-121 ``features2`` on IU X-ray / MIMIC when its weights are in the cache
(else the evaluator's; metrics.json, run.json and results.md say which and why); the reference set is the real images of the same held-out
prompts (phantom renders, MIMIC JPGs, Open-i PNGs with ``--images-dir``).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from cxrl.compose import build_generator, evaluation_inputs, resolve_asset
from cxrl.config import EVAL_SOURCES, load_config
from cxrl.diffusion.ace import load_ace
from cxrl.eval.run import run_evaluation

# flag -> (config key, the default when no --config is given)
FLAG_KEYS = {
    "data": ("eval.source", "phantom"), "split": ("eval.split", "test"), "n_prompts": ("eval.num_prompts", 64),
    "samples_per_prompt": ("eval.samples_per_prompt", 4), "seed": ("eval.seed", 0), "steps": ("sampling.num_steps", 50),
    "guidance": ("sampling.guidance_scale", 5.0), "eta": ("sampling.eta", 1.0), "batch_size": ("eval.batch_size", 16),
    "min_label_prompts": ("eval.min_label_prompts", 3), "evaluators": ("eval.evaluators", None),
    "fid_features": ("eval.fid_features", None), "xrv_weights": ("eval.xrv_weights", None),
    "xrv_cache_dir": ("eval.xrv_cache_dir", None), "resolution": ("eval.resolution", None),
    "data_root": ("data.path", None), "images_dir": ("data.path", None), "reports_root": ("data.reports_path", None),
    "bootstrap": ("eval.bootstrap", None), "cache_dir": ("eval.cache_dir", None), "dtype": ("model.dtype", None),
}


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="tuned generator directory (or asset:NAME)")
    parser.add_argument("--baseline", help="base/anchor generator directory (or asset:base), evaluated side by side")
    parser.add_argument("--config", help="YAML config (e.g. a run's config.yaml): its eval and sampling sections")
    parser.add_argument("--data", choices=EVAL_SOURCES, help="where the held-out prompts come from (eval.source; default phantom)")
    parser.add_argument("--data-root", help="mimic: the MIMIC-CXR-JPG root (files/ + the CSVs)")
    parser.add_argument("--reports-root", help="mimic: the MIMIC-CXR reports files/ tree (prompts from reports)")
    parser.add_argument("--images-dir", help="iuxray: Open-i PNG directory (enables FID on IU X-ray)")
    parser.add_argument("--split", help="split of the held-out prompts (default test)")
    parser.add_argument("--n-prompts", type=int, help="distinct held-out prompts (default 64; 0 = all of the split)")
    parser.add_argument("--samples-per-prompt", type=int, help="samples per prompt (MS-SSIM protocol: 4, the default)")
    parser.add_argument("--seed", type=int, help="seed of the prompt choice and the initial noise (default 0)")
    parser.add_argument("--steps", type=int, help="DDIM steps (default 50)")
    parser.add_argument("--guidance", type=float, help="classifier-free guidance scale (default 5, as in training)")
    parser.add_argument("--eta", type=float, help="DDIM eta (default 1: the stochastic policy RL trains)")
    parser.add_argument("--batch-size", type=int, help="images per sampling / scoring batch (default 16)")
    parser.add_argument("--bootstrap", type=int, help="prompt resamples of the tuned - base intervals (default 1000)")
    parser.add_argument("--min-label-prompts", type=int,
                        help="a label enters the macro AUROC only with at least this many positive and as many negative "
                             "prompts (default 3; 1 = every label with both classes, also reported as auroc_all_labels)")
    parser.add_argument("--no-ace", action="store_true", help="ignore ACE tokens saved with --model (the w/o-ACE view)")
    parser.add_argument("--evaluators", help="root with posture/ diagnostic/ consistency/ (default: shipped)")
    for kind in ("posture", "diagnostic", "consistency"):
        extra = " or xrv:<weights>, a torchxrayvision classifier" if kind == "diagnostic" else ""
        parser.add_argument(f"--{kind}-evaluator", help=f"{kind} evaluator directory{extra} (overrides --evaluators)")
    parser.add_argument("--fid-features", choices=("auto", "evaluator", "xrv", "none"), help="FID features (default auto)")
    parser.add_argument("--xrv-weights", help="torchxrayvision DenseNet-121 weights for FID (default densenet121-res224-all)")
    parser.add_argument("--xrv-cache-dir", help="torchxrayvision weights cache (default ~/.torchxrayvision/models_data)")
    parser.add_argument("--resolution", type=int, help="reference image size (default: the model's output size)")
    parser.add_argument("--cache-dir", help="also write each model's evaluation to this cache (eval.cache_dir); a later "
                        "evaluation of the same weights under the same protocol reuses it")
    parser.add_argument("--no-cache", action="store_true", help="evaluate every model afresh (eval.use_cache=false)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                        help="dtype the models are loaded in (model.dtype; default float32, or the --config's)")
    parser.add_argument("--out", type=Path, default=Path("eval"), help="output directory (default ./eval)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")


def evaluation_config(args):
    """The config the evaluation reads: ``--config`` (or the defaults above), then the flags given."""
    overrides = []
    for flag, (key, default) in FLAG_KEYS.items():
        value = getattr(args, flag)
        if value is None and args.config is None:
            value = default
        if value is not None:
            overrides.append(f"{key}={value}")
    paths = {k: getattr(args, f"{k}_evaluator") for k in ("posture", "diagnostic", "consistency")
             if getattr(args, f"{k}_evaluator") is not None}
    if args.no_cache:
        overrides.append("eval.use_cache=false")
    cfg = load_config(args.config or None, overrides)
    cfg.eval.evaluator_paths.update(paths)
    return cfg


def load_models(args, cfg) -> tuple[dict, dict]:
    """``({"base": anchor, "tuned": policy}, {"tuned": ace})``; the anchor never gets ACE tokens. The generators are
    loaded as a run loads them (``model.dtype``, ``model.attention``), the ACE tokens in float32 as a run trains
    them, so ``--config RUN/config.yaml`` evaluates what the run's end-of-run evaluation did."""
    device = torch.device(args.device)
    models, aces = {}, {}
    if args.baseline is not None:
        models["base"] = build_generator(dataclasses.replace(cfg.model, path=str(args.baseline)), device)
    models["tuned"] = build_generator(dataclasses.replace(cfg.model, path=str(args.model)), device)
    ace = None if args.no_ace else load_ace(resolve_asset(args.model), device=device, dtype=torch.float32)
    if ace is not None:
        aces["tuned"] = ace
    return models, aces


def run(args) -> int:
    cfg = evaluation_config(args)
    if cfg.eval.torch_threads:   # as cxrl train's end-of-run evaluation does: the same samples, bit for bit
        torch.set_num_threads(cfg.eval.torch_threads)
    models, aces = load_models(args, cfg)
    inputs = evaluation_inputs(cfg, models["tuned"].resolution[0], args.device)
    model_dirs = {"tuned": str(args.model), **({"base": str(args.baseline)} if args.baseline is not None else {})}
    extra = {"data": cfg.eval.source, "split": cfg.eval.split, "model_dirs": model_dirs}
    evaluation = run_evaluation(models, inputs.items, inputs.evaluators, inputs.feature_extractor, cfg.eval, cfg.sampling,
                                aces=aces, out_dir=args.out, extra=extra)
    print(evaluation.table, end="")
    print(f"cxrl evaluate: wrote metrics.json, run.json, results.md{', comparison.json' if evaluation.comparison else ''} "
          f"and grids/ in {args.out}")
    return 0
