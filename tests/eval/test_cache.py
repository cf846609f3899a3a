"""Cached evaluations: a hit gives exactly the numbers a fresh evaluation gives, and anything the evaluation
depends on (weights, evaluators, items, settings) changes the key, so a stale entry is never used."""
import logging

import torch

from cxrl.config import Config, apply_overrides
from cxrl.diffusion import load_generator
from cxrl.eval.cache import EvaluationCache, evaluation_key
from cxrl.eval.evaluate import evaluate_models
from cxrl.eval.evaluators import load_evaluators

CFG = apply_overrides(Config(), ["eval.samples_per_prompt=2", "sampling.num_steps=2", "sampling.guidance_scale=2.0",
                                 "eval.seed=3", "eval.batch_size=4"])


def test_a_cache_hit_equals_a_fresh_evaluation_and_any_change_misses(tiny_generators, evaluator_root, make_items, tmp_path,
                                                                       caplog):
    caplog.set_level(logging.INFO, logger="cxrl")
    base = load_generator(tiny_generators["base"])
    evaluators = load_evaluators(evaluator_root)
    items = make_items(3)
    cache = EvaluationCache([], tmp_path / "cache")
    fresh = evaluate_models({"base": base}, items, evaluators, None, CFG.eval, CFG.sampling, cache=cache)
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 1 and "from the cache" not in caplog.text
    again = evaluate_models({"base": base}, items, evaluators, None, CFG.eval, CFG.sampling,
                            cache=EvaluationCache([tmp_path / "cache"]))
    assert "taken from the cache" in caplog.text
    assert again.results == fresh.results                                # the numbers, bit for bit
    torch.testing.assert_close(again.scores["base"].posture, fresh.scores["base"].posture, rtol=0, atol=0)
    torch.testing.assert_close(again.scores["base"].probs, fresh.scores["base"].probs, rtol=0, atol=0)
    assert (again.samples["base"] - fresh.samples["base"]).abs().max() <= 0.5 / 255 + 1e-6   # stored as 8-bit

    key = evaluation_key(base, None, items, evaluators, None, CFG.eval, CFG.sampling)
    other_settings = apply_overrides(CFG, ["sampling.num_steps=3"])
    assert evaluation_key(base, None, items, evaluators, None, other_settings.eval, other_settings.sampling) != key
    assert evaluation_key(base, None, items[:2], evaluators, None, CFG.eval, CFG.sampling) != key
    tuned = load_generator(tiny_generators["tuned"])
    assert evaluation_key(tuned, None, items, evaluators, None, CFG.eval, CFG.sampling) != key
    weight = next(base.unet.parameters())
    original = weight.detach().clone()
    with torch.no_grad():
        weight.add_(1e-3)                                                # weights changed in place: a miss
    assert evaluation_key(base, None, items, evaluators, None, CFG.eval, CFG.sampling) != key
    with torch.no_grad():
        weight.copy_(original)
    assert evaluation_key(base, None, items, evaluators, None, CFG.eval, CFG.sampling) == key
    evaluators.digests["posture"] = "retrained"                          # an evaluator retrained: a miss
    assert evaluation_key(base, None, items, evaluators, None, CFG.eval, CFG.sampling) != key


def test_a_miss_names_what_differs_from_the_nearest_entry(tiny_generators, evaluator_root, make_items, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="cxrl")
    base = load_generator(tiny_generators["base"])
    evaluators = load_evaluators(evaluator_root)
    items = make_items(2)
    evaluate_models({"base": base}, items, evaluators, None, CFG.eval, CFG.sampling,
                    cache=EvaluationCache([], tmp_path / "cache"))
    assert "not in the cache" not in caplog.text                         # an empty cache has nothing to compare with
    other = apply_overrides(CFG, ["sampling.num_steps=3"])
    evaluate_models({"base": base}, items, evaluators, None, other.eval, other.sampling,
                    cache=EvaluationCache([tmp_path / "cache"]))
    assert "evaluation of 'base' not in the cache" in caplog.text and "differs in sampling; sampling it" in caplog.text
