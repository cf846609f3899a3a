"""``cxrl sample``: generate images from prompts with a saved generator.

    cxrl sample --model DIR --prompt "Small left pleural effusion." [--n 4] [--seed 0] [--out samples/]
    cxrl sample --model DIR --prompts prompts.txt --ace

Writes ``<out>/p<prompt>_s<sample>.png`` (8-bit grayscale or RGB), ``<out>/prompts.txt`` (one prompt per
line, in file-name order) and ``<out>/grid.png`` (all samples, captioned). ``--ace`` conditions on the
ACE tokens saved in ``DIR/ace/`` (an error when the model has none: asking for them and silently not
using them would give a "w/o ACE" image under an ACE label).
"""
from __future__ import annotations

from pathlib import Path

import torch

from cxrl.compose import resolve_asset
from cxrl.config import Config, apply_overrides
from cxrl.data.prompt_files import read_utf8
from cxrl.diffusion.ace import load_ace
from cxrl.diffusion.generator import load_generator
from cxrl.eval.evaluate import generate_samples
from cxrl.eval.grids import save_grid, tensor_to_pil


def add_arguments(parser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="one prompt (a report text)")
    source.add_argument("--prompts", type=Path, help="a text file with one prompt per line (blank lines skipped)")
    parser.add_argument("--model", required=True, help="generator directory (diffusers layout, see cxrl.diffusion) or asset:NAME")
    parser.add_argument("--n", type=int, default=4, help="samples per prompt (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial noise (default 0)")
    parser.add_argument("--out", type=Path, default=Path("samples"), help="output directory (default ./samples)")
    parser.add_argument("--ace", action="store_true", help="use the ACE tokens saved in MODEL/ace/")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50)")
    parser.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance scale (default 5, as in training)")
    parser.add_argument("--eta", type=float, default=1.0, help="DDIM eta in (0, 1] (default 1: the stochastic policy RL trains)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per sampling batch (default 16)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    parser.add_argument("--no-grid", action="store_true", help="skip grid.png")


def read_prompts(path: Path) -> list[str]:
    """Non-blank lines of ``path`` (stripped)."""
    if not path.is_file():
        raise FileNotFoundError(f"--prompts: file {path} not found (expected one prompt per line)")
    prompts = [line.strip() for line in read_utf8(path).splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"--prompts: {path} contains no prompts (one per line)")
    return prompts


def load_model(model: str | Path, device, use_ace: bool):
    """(generator, ace or None) from a saved generator directory (or ``asset:NAME``)."""
    model_dir = resolve_asset(model)
    gen = load_generator(model_dir, device=device)
    ace = load_ace(model_dir, device=device, dtype=gen.dtype, required=True) if use_ace else None
    return gen, ace


def run(args) -> int:
    prompts = [args.prompt] if args.prompt is not None else read_prompts(args.prompts)
    if not prompts[0].strip():
        raise ValueError("--prompt: empty prompt")
    # the flags, checked like any config: eval.* says how many and in which batches, sampling.* how
    cfg = apply_overrides(Config(), [f"eval.samples_per_prompt={args.n}", f"eval.seed={args.seed}", f"eval.batch_size={args.batch_size}",
                             f"sampling.num_steps={args.steps}", f"sampling.guidance_scale={args.guidance}",
                             f"sampling.eta={args.eta}"])
    gen, ace = load_model(args.model, args.device, args.ace)
    samples = generate_samples(gen, prompts, cfg.eval, cfg.sampling, ace=ace)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    width = max(3, len(str(len(prompts) - 1)))
    for p in range(samples.shape[0]):
        for s in range(samples.shape[1]):
            tensor_to_pil(samples[p, s]).save(out / f"p{p:0{width}d}_s{s:02d}.png")
    (out / "prompts.txt").write_text("\n".join(prompts) + "\n", encoding="utf-8")
    if not args.no_grid:
        captions = [prompt for prompt in prompts for _ in range(samples.shape[1])]
        save_grid(samples.flatten(0, 1), captions, out / "grid.png", ncols=samples.shape[1])
    print(f"cxrl sample: {samples.shape[0] * samples.shape[1]} images ({len(prompts)} prompt(s) x {args.n}, "
          f"{'with' if ace is not None else 'without'} ACE) -> {out}")
    return 0
