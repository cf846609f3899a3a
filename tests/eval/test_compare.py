"""The paired tuned − base comparison: exact reference values for identical and shifted score sets, and the
AUROC over a fixed label subset in every resample."""
import math

import pytest
import torch

from cxrl.eval.auroc import macro_auroc
from cxrl.eval.compare import (
    comparison_markdown,
    improved,
    metric_values,
    paired_bootstrap,
    paired_bootstrap_per_label,
    resample_counts,
    resampled_metric_values,
)
from cxrl.eval.scoring import SampleScores


def test_paired_bootstrap_reference_values():
    g = torch.Generator().manual_seed(0)
    prompts, per_prompt = 12, 3
    labels = torch.full((prompts, 14), math.nan, dtype=torch.float64)
    labels[:, 0] = torch.tensor([1.0, 0.0] * 6)
    labels[:, 2] = torch.tensor([0.0, 0.0, 1.0] * 4)
    base = SampleScores(-torch.rand(prompts, per_prompt, generator=g, dtype=torch.float64),
                        torch.rand(prompts, per_prompt, generator=g, dtype=torch.float64),
                        torch.rand(prompts, per_prompt, 14, generator=g))
    same = paired_bootstrap(base, base, labels, resamples=50, seed=1)
    for key in ("posture", "consistency", "auroc"):
        assert same[key]["diff"] == 0 and same[key]["ci_low"] == 0 and same[key]["ci_high"] == 0
    assert not improved(same, "posture")

    # tuned = base shifted by a constant: posture/consistency differences are exactly the shift in every
    # resample; perfectly separating probabilities give AUROC 1 against the macro AUROC of the base
    separating = labels.nan_to_num(0.5).unsqueeze(1).expand(-1, per_prompt, -1).clone().float()
    tuned = SampleScores(base.posture + 0.1, base.consistency - 0.05, separating)
    out = paired_bootstrap(base, tuned, labels, resamples=50, seed=1)
    assert out["posture"]["diff"] == pytest.approx(0.1) and out["posture"]["std"] == pytest.approx(0.0, abs=1e-12)
    assert out["consistency"]["ci_high"] == pytest.approx(-0.05)
    assert improved(out, "posture") and not improved(out, "consistency") and improved(out, "auroc")
    expected_base = macro_auroc(base.probs.flatten(0, 1), labels.repeat_interleave(per_prompt, 0)).macro
    assert out["auroc"]["base"] == pytest.approx(expected_base) and out["auroc"]["tuned"] == pytest.approx(1.0)
    assert out["auroc"]["ci_low"] <= out["auroc"]["diff"] <= out["auroc"]["ci_high"]

    # the AUROC over chosen label columns averages exactly those labels in the full set and every resample;
    # the all-label AUROC is reported beside it
    only_first = paired_bootstrap(base, tuned, labels, resamples=50, seed=1, columns=[0])
    labels_first = labels.repeat_interleave(per_prompt, 0)
    expected_first = macro_auroc(base.probs.flatten(0, 1), labels_first, columns=[0]).macro
    assert only_first["auroc"]["base"] == pytest.approx(expected_first) != pytest.approx(expected_base)
    assert only_first["auroc_all_labels"]["base"] == pytest.approx(expected_base)
    assert only_first["auroc"]["tuned"] == pytest.approx(1.0)


def test_resampled_metrics_equal_the_metrics_of_each_resample_built_out():
    """All resamples at once (prompt counts, pairwise wins) give what building each resample and computing its
    metrics gives: ties, uncertain and unmentioned labels, a rare label missing from some resamples, and a label
    whose scores are non-finite for one prompt."""
    g = torch.Generator().manual_seed(4)
    prompts, per_prompt, num_labels = 30, 4, 14
    labels = torch.full((prompts, num_labels), math.nan, dtype=torch.float64)
    labels[:, 0] = (torch.rand(prompts, generator=g) < 0.4).double()
    labels[:, 1] = torch.tensor([1.0, 0.0, -1.0] * 10)
    labels[:2, 2], labels[2:, 2] = 1.0, 0.0                     # two positive prompts: absent from some resamples
    labels[:, 3] = torch.tensor([1.0] + [0.0] * 29)              # one: absent from about a third of them
    labels[:, 4] = (torch.arange(prompts) % 2).double()
    probs = torch.rand(prompts, per_prompt, num_labels, generator=g)
    probs[:, :, 1] = (probs[:, :, 1] * 4).floor() / 4           # heavy ties
    probs[7, 2, 4] = math.nan                                    # label 4 unscorable whenever prompt 7 is drawn
    scores = SampleScores(torch.rand(prompts, per_prompt, generator=g, dtype=torch.float64), None, probs)
    counts = resample_counts(prompts, 40, seed=9)
    assert counts.shape == (40, prompts) and bool((counts.sum(dim=1) == prompts).all())
    for columns in (None, [0, 2, 3, 4]):
        fast = resampled_metric_values(scores, labels, counts, columns)
        generator = torch.Generator().manual_seed(9)
        for r in range(40):
            index = torch.randint(prompts, (prompts,), generator=generator)
            assert torch.equal(torch.bincount(index, minlength=prompts).double(), counts[r])
            slow = metric_values(scores, labels, index, columns)
            assert set(slow) == set(fast)
            for key, value in slow.items():
                if math.isnan(value):
                    assert math.isnan(float(fast[key][r])), (key, r)
                else:
                    assert float(fast[key][r]) == pytest.approx(value, rel=1e-12, abs=1e-12), (key, r, columns)


def test_per_label_differences_are_each_labels_auroc_in_the_same_resamples():
    """Each label's tuned − base AUROC and its interval come from the resamples of the macro comparison: every
    resample's per-label difference equals the one computed by building that resample; the full-set values are
    macro_auroc's per-label values, and their mean is the compared macro AUROC."""
    g = torch.Generator().manual_seed(11)
    prompts, per_prompt, num_labels = 24, 3, 14
    labels = torch.full((prompts, num_labels), math.nan, dtype=torch.float64)
    labels[:, 0] = (torch.arange(prompts) % 3 == 0).double()
    labels[:, 5] = torch.tensor([1.0, 0.0, -1.0] * 8)
    labels[:1, 7], labels[1:, 7] = 1.0, 0.0                       # one positive prompt: missing from some resamples
    labels[:, 9] = 0.0                                            # one class only: no AUROC, no row
    base = SampleScores(None, None, torch.rand(prompts, per_prompt, num_labels, generator=g))
    tuned = SampleScores(None, None, torch.rand(prompts, per_prompt, num_labels, generator=g))
    names = [f"L{i}" for i in range(num_labels)]
    rows = paired_bootstrap_per_label(base, tuned, labels, resamples=30, seed=3, names=names)
    assert list(rows) == ["L0", "L5", "L7"]
    macro = paired_bootstrap(base, tuned, labels, resamples=30, seed=3)["auroc"]
    assert sum(r["diff"] for r in rows.values()) / 3 == pytest.approx(macro["diff"], abs=1e-12)
    generator = torch.Generator().manual_seed(3)
    expected = {name: [] for name in rows}
    for _ in range(30):
        index = torch.randint(prompts, (prompts,), generator=generator)
        repeated = labels[index].repeat_interleave(per_prompt, 0)
        b = macro_auroc(base.probs[index].flatten(0, 1), repeated, names).per_label
        t = macro_auroc(tuned.probs[index].flatten(0, 1), repeated, names).per_label
        for name in rows:
            if name in b and name in t:
                expected[name].append(t[name] - b[name])
    for name, entry in rows.items():
        draws = torch.tensor(expected[name], dtype=torch.float64)
        assert entry["resamples"] == draws.numel()
        assert entry["std"] == pytest.approx(float(draws.std()), rel=1e-9)
        assert entry["ci_low"] == pytest.approx(float(draws.quantile(0.025)), rel=1e-9)
        assert entry["base"] == pytest.approx(macro_auroc(base.probs.flatten(0, 1), labels.repeat_interleave(
            per_prompt, 0), names).per_label[name])
    assert rows["L7"]["resamples"] < 30 == rows["L0"]["resamples"]
    only = paired_bootstrap_per_label(base, tuned, labels, resamples=30, seed=3, names=names, columns=[5])
    assert list(only) == ["L5"] and only["L5"] == rows["L5"]
    table = comparison_markdown({"auroc": macro}, 30, rows)
    assert "AUROC per label" in table and "| L7 |" in table
