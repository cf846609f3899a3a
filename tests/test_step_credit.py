"""`cxrl step-credit`: branching variances and per-step log-prob gradient norms on a real (tiny) generator, checked
against direct recomputation, and the skip_last_steps suggestion against its definition."""
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent / "rl"))
from rl_run_helpers import tiny_overrides  # noqa: E402

from cxrl.cli import main  # noqa: E402
from cxrl.compose import build_trainer  # noqa: E402
from cxrl.config import Config, apply_overrides  # noqa: E402
from cxrl.diffusion.rollout import recompute_log_prob  # noqa: E402
from cxrl.rl.prompts import PromptPool  # noqa: E402
from cxrl.rl.step_credit import (StepCredit, branch_variances, log_prob_grad_norms, sample_trunks,  # noqa: E402
                                 suggest_skip_last)

PROMPTS = [{"prompt": p, "labels": None} for p in ("small left effusion", "normal chest", "mild cardiomegaly")]


def _credit(variance):
    steps = len(next(iter(variance.values()))) - 1
    return StepCredit(timesteps=list(range(steps)), sigma=[1.0] * steps, variance=variance, grad_norm=[1.0] * steps)


def test_suggestion_skips_exactly_the_quiet_tail_of_every_reward():
    # V(-1), V(0..4): the tail from step 3 decides 1% of a and 1.5% of b; from step 2, 10% of a
    credit = _credit({"a": [1.0, 0.9, 0.5, 0.1, 0.01, 0.001], "b": [2.0, 2.0, 1.0, 0.5, 0.03, 0.0]})
    assert credit.tail_share("a") == pytest.approx([0.9, 0.5, 0.1, 0.01, 0.001])
    assert suggest_skip_last(credit, 0.02) == 2
    assert suggest_skip_last(credit, 0.005) == 1 and suggest_skip_last(credit, 0.0001) == 0
    # one reward decided late keeps the step: the rule is "every reward"
    assert suggest_skip_last(_credit({"a": [1.0, 1.0, 1.0, 1.0, 0.0, 0.0], "b": [1.0, 1.0, 1.0, 1.0, 0.5, 0.0]}), 0.02) == 1
    # at least one step stays trainable even when nothing moves the rewards
    assert suggest_skip_last(_credit({"a": [1.0, 0.0, 0.0, 0.0]}), 0.02) == 2


def _trainer(tiny_pixel_dir, tmp_path, monkeypatch, steps=4):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent / "rl"))   # the tiny custom rewards
    cfg = apply_overrides(Config(), tiny_overrides(tiny_pixel_dir, tmp_path / "run", extra=[f"sampling.num_steps={steps}"]))
    return build_trainer(cfg, PromptPool(PROMPTS)), cfg.sampling


def test_branching_shares_the_trunk_and_gradient_norms_match_a_direct_backward(tiny_pixel_dir, tmp_path, monkeypatch):
    trainer, s = _trainer(tiny_pixel_dir, tmp_path, monkeypatch)
    gen, ace = trainer.gen, trainer.policy.ace
    settings = dict(num_steps=s.num_steps, guidance_scale=s.guidance_scale, eta=s.eta, ace=ace)
    variance = branch_variances(gen, trainer.suite, PROMPTS, branches=3, seed=0, **settings)
    for name in trainer.suite.names:
        v = variance[name]
        assert len(v) == s.num_steps + 1 and all(x >= 0 for x in v)
        # branching after the last step's input shares everything but one small step: far less spread than fresh x_T
        assert v[0] > 0 and v[-1] < 0.5 * v[0]
    # the same seed gives the same numbers (the measurement is reproducible)
    assert branch_variances(gen, trainer.suite, PROMPTS, branches=3, seed=0, **settings) == variance

    embeds = gen.encode_prompts([PROMPTS[0]["prompt"]])
    trunk = sample_trunks(gen, embeds, generator=torch.Generator().manual_seed(1), **settings)
    norms = log_prob_grad_norms(gen, trainer.policy.params, embeds, trunk, **settings)
    j = s.num_steps - 1
    log_prob = recompute_log_prob(gen, trunk[j], trunk[j + 1], gen.scheduler.timesteps[j:j + 1].long(), embeds,
                                  ace=ace, guidance_scale=s.guidance_scale, eta=s.eta, num_steps=s.num_steps)
    grads = torch.autograd.grad(log_prob.sum(), [p for p in trainer.policy.params if p.requires_grad], allow_unused=True)
    direct = float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads if g is not None)))
    assert norms[j] == pytest.approx(direct, rel=1e-5) and all(n > 0 for n in norms)
    assert all(p.grad is None for p in trainer.policy.params)   # nothing left to leak into a training step


def test_command_prints_the_table_and_writes_json(tiny_pixel_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent / "rl"))
    tmp_path.joinpath("prompts.txt").write_text("\n".join(e["prompt"] for e in PROMPTS) + "\n")
    overrides = [*tiny_overrides(tiny_pixel_dir, tmp_path / "run"), "data.source=file", f"data.path={tmp_path / 'prompts.txt'}"]
    out = tmp_path / "credit.json"
    assert main(["step-credit", "--prompts", "3", "--branches", "2", "--gradient-prompts", "1", "--json", str(out),
                 *overrides]) == 0
    text = capsys.readouterr().out
    data = json.loads(out.read_text())
    assert len(data["timesteps"]) == 3 and set(data["variance"]) == {"bright", "contrast"}
    assert f"suggested: train.skip_last_steps={data['suggested_skip_last_steps']}" in text
    assert suggest_skip_last(StepCredit(**{k: data[k] for k in ("timesteps", "sigma", "variance", "grad_norm")})) \
        == data["suggested_skip_last_steps"]
    assert main(["step-credit", "--threshold", "2", *overrides]) == 2   # a bad flag is one line, exit 2
