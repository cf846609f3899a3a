"""`cxrl anchor-scores`: precomputed anchor scores are exactly what the run's anchor gives, a run with the same
anchor, sampler and rewards reads them instead of sampling, and any change to those is another namespace."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent / "rl"))
from rl_run_helpers import tiny_overrides  # noqa: E402

from cxrl.cli import main  # noqa: E402
from cxrl.compose import build_trainer  # noqa: E402
from cxrl.config import Config, apply_overrides  # noqa: E402
from cxrl.rl.prompts import PromptPool, reward_metadata  # noqa: E402

PROMPTS = [{"prompt": p, "labels": None} for p in ("small left effusion", "normal chest", "mild cardiomegaly")]


def _overrides(gen_dir, out, extra=()):
    return [*tiny_overrides(gen_dir, out, epochs=1), "rewards.seed_bank_size=2", "data.source=file",
            "rewards.feedback=comparative",
            f"data.path={out.parent / 'prompts.txt'}", *extra]


def test_precomputed_anchor_scores_are_the_anchors_and_are_read_back(tiny_pixel_dir, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent / "rl"))   # the tiny custom rewards
    tmp_path.joinpath("prompts.txt").write_text("\n".join(e["prompt"] for e in PROMPTS) + "\n")
    scores_dir = tmp_path / "scores"
    assert main(["anchor-scores", "--out", str(scores_dir), *_overrides(tiny_pixel_dir, tmp_path / "a")]) == 0
    files = list(scores_dir.glob("*.json.gz"))
    assert len(files) == 1

    cfg = apply_overrides(Config(), _overrides(tiny_pixel_dir, tmp_path / "b", [f"rewards.anchor_scores={scores_dir}"]))
    trainer = build_trainer(cfg, PromptPool(PROMPTS))
    suite = trainer.suite
    assert suite.cache.preloaded == 6 and files[0].name == f"{suite.cache.namespace}.json.gz"   # 3 prompts x 2 seeds
    prompts = [e["prompt"] for e in PROMPTS for _ in range(2)]
    seeds = suite.seed_bank.seeds_for(prompts)
    metadata = [reward_metadata(e) for e in PROMPTS for _ in range(2)]
    read = suite.anchor_scores(prompts, metadata, seeds, None, trainer.device)
    assert suite.anchor_images_generated == 0                         # every score came from the file
    suite.cache.entries.clear()                                       # now sample the anchor for real
    fresh = torch.cat([suite.anchor_scores(prompts[i:i + 2], metadata[i:i + 2], seeds[i:i + 2], None, trainer.device)
                       for i in range(0, 6, 2)])
    assert suite.anchor_images_generated == 6
    torch.testing.assert_close(read, fresh, rtol=0, atol=1e-5, equal_nan=True)

    other = apply_overrides(cfg, ["sampling.num_steps=2"])             # another sampler: another namespace
    assert build_trainer(other, PromptPool(PROMPTS)).suite.cache.preloaded == 0
