"""``cxrl evaluate``: the paper's metrics for a tuned model (and its base) on held-out prompts.

    cxrl evaluate --model runs/demo/final --baseline runs/demo/anchor --data phantom --n-prompts 64 --out eval/

Samples every model from the same initial noise (4 per prompt), scores them with the held-out
evaluators (``cxrl/assets/evaluators/`` unless overridden — never the reward models the RL optimised)
and writes ``metrics.json`` (one object per model), ``run.json``, ``results.md`` (the paper's
Tables 1–2 layout) and sample grids.

FID features (``--fid-features``): ``auto`` = the diagnostic evaluator's own features on the phantom
world, torchxrayvision DenseNet-121 ``features2`` on IU X-ray / MIMIC (its weights must be in the cache;
a missing file is an error, never a silent switch to another network); the reference set is the real
images of the same held-out prompts (phantom renders, MIMIC JPGs, Open-i PNGs with ``--images-dir``).
"""
from __future__ import annotations

from pathlib import Path

import torch

from cxrl.eval.evaluate import FID_FEATURE_CHOICES

DATASETS = ("phantom", "iuxray", "mimic")


def add_arguments(parser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="tuned generator directory")
    parser.add_argument("--baseline", type=Path, help="base/anchor generator directory, evaluated side by side")
    parser.add_argument("--data", choices=DATASETS, required=True, help="where the held-out prompts come from")
    parser.add_argument("--data-root", type=Path, help="mimic: the MIMIC-CXR-JPG root (files/ + the CSVs)")
    parser.add_argument("--reports-root", type=Path, help="mimic: the MIMIC-CXR reports files/ tree (prompts from reports)")
    parser.add_argument("--images-dir", type=Path, help="iuxray: Open-i PNG directory (enables FID on IU X-ray)")
    parser.add_argument("--split", default="test", help="dataset split of the held-out prompts (default test)")
    parser.add_argument("--n-prompts", type=int, default=64, help="held-out prompts to evaluate (default 64)")
    parser.add_argument("--samples-per-prompt", type=int, default=4, help="samples per prompt (MS-SSIM protocol: 4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the prompt choice and the initial noise")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50)")
    parser.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance scale (default 5, as in training)")
    parser.add_argument("--eta", type=float, default=1.0, help="DDIM eta (default 1: the stochastic policy RL trains)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per sampling / scoring batch")
    parser.add_argument("--min-label-prompts", type=int, default=3,
                        help="a label enters the macro AUROC only with at least this many positive and as many negative "
                             "prompts (default 3; 1 = every label with both classes, also reported as auroc_all_labels)")
    parser.add_argument("--no-ace", action="store_true", help="ignore ACE tokens saved with --model (the w/o-ACE view)")
    parser.add_argument("--evaluators", type=Path, help="root with posture/ diagnostic/ consistency/ (default: shipped)")
    for kind in ("posture", "diagnostic", "consistency"):
        extra = " or xrv:<weights>, a torchxrayvision classifier" if kind == "diagnostic" else ""
        parser.add_argument(f"--{kind}-evaluator", help=f"{kind} evaluator directory{extra} (overrides --evaluators)")
    parser.add_argument("--fid-features", choices=FID_FEATURE_CHOICES, default="auto", help="FID feature extractor (see above)")
    parser.add_argument("--xrv-weights", default="densenet121-res224-all", help="torchxrayvision DenseNet-121 weights for FID")
    parser.add_argument("--xrv-cache-dir", type=Path, help="torchxrayvision weights cache (default ~/.torchxrayvision/models_data)")
    parser.add_argument("--resolution", type=int, help="reference image size (default: the model's output size)")
    parser.add_argument("--out", type=Path, default=Path("eval"), help="output directory (default ./eval)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")


def select_indices(length: int, count: int, seed: int) -> list[int]:
    """``count`` distinct indices of ``range(length)`` chosen by ``seed``, in increasing order."""
    if length == 0:
        raise ValueError("the chosen split has no items")
    if count < 1:
        raise ValueError(f"--n-prompts must be >= 1, got {count}")
    order = torch.randperm(length, generator=torch.Generator().manual_seed(seed))[:count]
    return sorted(order.tolist())


def open_dataset(args, resolution: int):
    """The held-out dataset of ``--data`` / ``--split`` (items follow the shared dataset-item contract)."""
    if args.data == "iuxray":
        from cxrl.data.iuxray import IUXrayReports

        return IUXrayReports(split=args.split, images_dir=args.images_dir, resolution=resolution)
    if args.data == "mimic":
        from cxrl.data import MimicCXR

        if args.data_root is None:
            raise ValueError("--data mimic needs --data-root (the MIMIC-CXR-JPG directory)")
        return MimicCXR(args.data_root, split=args.split, resolution=resolution, reports_root=args.reports_root)
    from cxrl.data import PhantomCXR

    # phantoms rendered for the held-out split's reports: the FID reference set for the same prompts
    return PhantomCXR(split=args.split, resolution=resolution)


def choose_feature_extractor(args, evaluators, has_references: bool):
    """The named FID extractor for ``--fid-features`` (see :func:`cxrl.eval.evaluate.build_feature_extractor`)."""
    from cxrl.eval.evaluate import build_feature_extractor

    cache = str(args.xrv_cache_dir) if args.xrv_cache_dir is not None else None
    return build_feature_extractor(args.fid_features, args.data, evaluators, has_references=has_references,
                                   xrv_weights=args.xrv_weights, xrv_cache_dir=cache, device=args.device)


def load_models(args) -> tuple[dict, dict]:
    """``({"base": anchor, "tuned": policy}, {"tuned": ace})``; the anchor never gets ACE tokens."""
    from cxrl.commands.sample import load_model
    from cxrl.diffusion.ace import load_ace

    models, aces = {}, {}
    if args.baseline is not None:
        models["base"], _ = load_model(args.baseline, args.device, use_ace=False)
    models["tuned"], _ = load_model(args.model, args.device, use_ace=False)
    ace = None if args.no_ace else load_ace(args.model, device=args.device, dtype=models["tuned"].dtype)
    if ace is not None:
        aces["tuned"] = ace
    return models, aces


def run(args) -> int:
    from cxrl.eval.evaluate import SamplingSettings, evaluate_models
    from cxrl.eval.evaluators import load_evaluators
    from cxrl.eval.report import table_notes
    from cxrl.eval.tables import markdown_table

    if args.min_label_prompts < 1:
        raise ValueError(f"--min-label-prompts must be >= 1, got {args.min_label_prompts}")
    settings = SamplingSettings(samples_per_prompt=args.samples_per_prompt, num_steps=args.steps,
                                guidance_scale=args.guidance, eta=args.eta, seed=args.seed,
                                batch_size=args.batch_size).validate()
    # an explicitly requested extractor is built first: missing weights fail before any sampling
    extractor = choose_feature_extractor(args, None, True) if args.fid_features == "xrv" else None
    models, aces = load_models(args)
    overrides = {k: getattr(args, f"{k}_evaluator") for k in ("posture", "diagnostic", "consistency")
                 if getattr(args, f"{k}_evaluator") is not None}
    evaluators = load_evaluators(args.evaluators, overrides, device=args.device, xrv_cache_dir=args.xrv_cache_dir)

    resolution = args.resolution or models["tuned"].resolution[0]
    dataset = open_dataset(args, resolution)
    items = [dataset[i] for i in select_indices(len(dataset), min(args.n_prompts, len(dataset)), args.seed)]
    has_references = sum(item.get("image") is not None for item in items) >= 2
    if extractor is None:
        extractor = choose_feature_extractor(args, evaluators, has_references)

    model_dirs = {"tuned": str(args.model), **({"base": str(args.baseline)} if args.baseline is not None else {})}
    extra = {"data": args.data, "split": args.split, "model_dirs": model_dirs}
    results = evaluate_models(models, items, evaluators, extractor, aces=aces, settings=settings,
                              out_dir=args.out, extra=extra, min_label_prompts=args.min_label_prompts)
    print(markdown_table(results, table_notes(results)), end="")
    print(f"cxrl evaluate: wrote metrics.json, run.json, results.md and grids/ in {args.out}")
    return 0
