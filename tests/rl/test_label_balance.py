"""data.label_balance: each prompt weighs n**-a for the rarest class it belongs to (a finding stated present or a
finding stated absent). Checked against a hand count on a small pool, by the draw frequencies it produces, with
a prompt file's weights and balanced draws, and on the demo's own pool."""
import numpy as np
import pytest
import torch

from cxrl.compose import prompt_pool
from cxrl.config import load_config
from cxrl.data.labels import CHEXPERT_LABELS
from cxrl.rl.prompts import PromptPool, label_balanced_weights

nan = float("nan")


def _labels(*rows):
    """Rows of {label column: value}; every other label unmentioned (nan)."""
    out = np.full((len(rows), 14), nan)
    for i, row in enumerate(rows):
        for j, v in row.items():
            out[i, j] = v
    return out


def test_weights_follow_the_rarest_class_of_each_prompt():
    # classes: label 0 present (prompts 0-3: 4), label 1 present (prompt 3: 1), label 2 absent (prompts 0, 4: 2),
    # label 3 uncertain (prompt 5: no class); prompt 6 states nothing
    labels = _labels({0: 1, 2: 0}, {0: 1}, {0: 1}, {0: 1, 1: 1}, {2: 0}, {3: -1}, {})
    w = label_balanced_weights(labels, 1.0)
    expected = np.array([1 / 2, 1 / 4, 1 / 4, 1 / 1, 1 / 2, 1 / 4, 1 / 4])   # nothing stated: the largest class (4)
    np.testing.assert_allclose(w, expected / expected.sum())
    root = label_balanced_weights(labels, 0.5)
    np.testing.assert_allclose(root, expected ** 0.5 / (expected ** 0.5).sum())
    np.testing.assert_allclose(label_balanced_weights(labels, 0.0), np.full(7, 1 / 7))


def test_draws_show_rare_findings_more_often_and_common_ones_less():
    rng = np.random.default_rng(0)
    n = 400
    present = rng.random((n, 14)) < np.array([0.5, 0.2, 0.04] + [0.0] * 11)
    labels = np.where(present, 1.0, nan)
    entries = [{"prompt": f"report {i}", "labels": torch.from_numpy(labels[i])} for i in range(n)]
    uniform, balanced = PromptPool(entries), PromptPool(entries, label_balance=0.5)
    index = {e["prompt"]: i for i, e in enumerate(entries)}

    def shares(pool):
        drawn = [index[e["prompt"]] for seed in range(40) for epoch in range(16) for e in pool.draw(4, 1, seed, epoch)]
        return present[drawn].mean(axis=0)

    u, b = shares(uniform), shares(balanced)
    expected = balanced.weights @ present   # the weighted share the draws follow (without replacement in an epoch)
    assert abs(b[2] - expected[2]) < 0.02 and abs(u[2] - present[:, 2].mean()) < 0.02
    assert b[2] > 2 * u[2] and b[0] < u[0]   # the rare finding twice as often, the common one less


def test_a_prompt_files_weights_multiply_and_balanced_draws_aim_at_the_weighted_share():
    labels = _labels({0: 1}, {0: 1}, {0: 1}, {1: 1})
    entries = [{"prompt": f"r{i}", "labels": torch.from_numpy(labels[i])} for i in range(4)]
    pool = PromptPool(entries, weights=[1.0, 2.0, 1.0, 1.0], label_balance=1.0, balanced=True)
    expected = np.array([1 / 3, 2 / 3, 1 / 3, 1.0])
    np.testing.assert_allclose(pool.weights, expected / expected.sum())
    assert pool.findings is not None and pool.findings[3, 1] == 1


def test_bad_exponents_and_unlabelled_prompts_are_refused():
    entries = [{"prompt": "a", "labels": torch.zeros(14)}, {"prompt": "no labels here", "labels": None}]
    with pytest.raises(ValueError, match="data.label_balance weighs .* 1 of 2 prompts have no labels"):
        PromptPool(entries, label_balance=0.5)
    for bad in (-0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="label_balance must be a finite exponent >= 0"):
            PromptPool(entries[:1], label_balance=bad)
    with pytest.raises(ValueError, match="label_balance"):
        load_config(None, ["data.label_balance=-1"])


def test_the_demos_pool_at_square_root_balance():
    """On the demo's pool (IU X-ray train reports), a = 0.5 about doubles the expected Pneumonia and Fracture
    prompts of a 64-prompt run and lowers the No Finding ones; the demo itself draws uniformly."""
    assert load_config(None).data.label_balance == 0.0
    uniform = prompt_pool(load_config(None).data)
    pool = prompt_pool(load_config(None, ["data.label_balance=0.5"]).data)
    assert uniform.weights is None and pool.weights is not None
    labels = np.stack([np.asarray(e["labels"], dtype=np.float64) for e in pool.entries])
    present = labels == 1
    before, after = 64 * present.mean(axis=0), 64 * (pool.weights @ present)
    col = {name: j for j, name in enumerate(CHEXPERT_LABELS)}
    for rare in ("Pneumonia", "Fracture", "Edema"):
        assert after[col[rare]] > 1.5 * before[col[rare]], (rare, before[col[rare]], after[col[rare]])
    assert after[col["No Finding"]] < before[col["No Finding"]]
