"""AUROC: rank-based implementation vs a brute-force pairwise count (with ties), label masking."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from cxrl.eval.auroc import binary_auroc, macro_auroc


def _pairwise(scores, targets):
    pos = [s for s, t in zip(scores, targets) if t == 1]
    neg = [s for s, t in zip(scores, targets) if t == 0]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 1)), min_size=2, max_size=40))
def test_matches_pairwise_count_with_ties(pairs):
    scores = [float(s) for s, _ in pairs]  # few distinct values: many ties
    targets = [t for _, t in pairs]
    value = binary_auroc(torch.tensor(scores), torch.tensor(targets))
    if len(set(targets)) < 2:
        assert math.isnan(value)
    else:
        assert value == pytest.approx(_pairwise(scores, targets), abs=1e-12)


def test_perfect_reversed_and_monotone_invariance():
    scores = torch.tensor([0.1, 0.4, 0.35, 0.8])
    targets = torch.tensor([0, 0, 1, 1])
    assert binary_auroc(scores, targets) == pytest.approx(0.75)
    assert binary_auroc(torch.logit(scores), targets) == pytest.approx(0.75)
    assert binary_auroc(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0, 1, 1])) == 1.0
    assert binary_auroc(torch.tensor([3.0, 2.0, 1.0]), torch.tensor([0, 1, 1])) == 0.0


def test_macro_masks_uncertain_and_unmentioned():
    nan = float("nan")
    labels = torch.tensor([
        [1.0, 1.0, nan],
        [0.0, -1.0, 1.0],
        [1.0, 0.0, nan],
        [0.0, nan, 1.0],
    ])
    scores = torch.tensor([
        [0.9, 0.2, 0.5],
        [0.1, 0.99, 0.5],   # uncertain entry of label b would flip it if counted
        [0.3, 0.1, 0.5],
        [0.4, 0.95, 0.5],   # unmentioned entry of label b likewise
    ])
    result = macro_auroc(scores, labels, ["a", "b", "c"])
    assert result.per_label == {"a": pytest.approx(0.75), "b": pytest.approx(1.0)}
    assert result.skipped == ["c"]  # only positives remain
    assert result.macro == pytest.approx(0.875)


def test_macro_nan_when_nothing_qualifies_and_errors():
    result = macro_auroc(torch.rand(3, 2), torch.ones(3, 2))
    assert math.isnan(result.macro) and result.per_label == {}
    with pytest.raises(ValueError, match="same shape"):
        macro_auroc(torch.rand(3, 2), torch.ones(3, 3))
    with pytest.raises(ValueError, match="targets must be 0 or 1"):
        binary_auroc(torch.rand(3), torch.tensor([0.0, 1.0, -1.0]))


def test_label_without_classifier_output_is_skipped():
    labels = torch.tensor([[1.0, 1.0], [0.0, 0.0], [1.0, 0.0]])
    scores = torch.tensor([[0.9, float("nan")], [0.1, float("nan")], [0.8, float("nan")]])
    result = macro_auroc(scores, labels, ["has_output", "no_output"])
    assert result.per_label == {"has_output": 1.0} and result.skipped == ["no_output"]


def test_supported_label_columns_count_prompts_of_each_class():
    from cxrl.eval.auroc import supported_label_columns

    nan = float("nan")
    labels = torch.tensor([
        [1.0, 1.0, 1.0, nan],
        [1.0, 0.0, -1.0, 1.0],
        [0.0, 0.0, 0.0, 1.0],
        [0.0, nan, 0.0, 1.0],
    ])
    assert supported_label_columns(labels, 1) == [0, 1, 2]       # column 3 has no negative
    assert supported_label_columns(labels, 2) == [0]             # b: 1 positive; c: the -1 is not a positive
    assert supported_label_columns(labels, 3) == []
    with pytest.raises(ValueError, match="min_count"):
        supported_label_columns(labels, 0)


def test_macro_over_columns_excludes_the_others():
    labels = torch.tensor([[1.0, 1.0], [0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    scores = torch.tensor([[0.9, 0.1], [0.1, 0.9], [0.8, 0.2], [0.2, 0.3]])
    every = macro_auroc(scores, labels, ["a", "b"])
    only_a = macro_auroc(scores, labels, ["a", "b"], columns=[0])
    assert every.per_label == {"a": 1.0, "b": 0.0} and every.macro == 0.5
    assert only_a.per_label == {"a": 1.0} and only_a.macro == 1.0
    assert only_a.excluded == ["b"] and only_a.skipped == []
