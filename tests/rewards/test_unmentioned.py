"""`unmentioned` of the diagnostic reward: 'negative' scores a report's unmentioned findings (and the No Finding of a
report that states a finding) as absent, the phantom world's truth; a model trained that way
(`reward_training.unmentioned`) scores that way when loaded unless its entry says otherwise; the fingerprint that keys
cached scores tells the conventions apart and stays as it was for the default."""
import math

import pytest
import torch

from cxrl.data.labels import CHEXPERT_LABELS
from cxrl.rewards.diagnostic import CXRClassifier, DiagnosticReward, masked_bce_score, unmentioned_as_negative
from cxrl.rewards.loading import load_reward_model

NORMAL = CHEXPERT_LABELS.index("No Finding")
LESION = CHEXPERT_LABELS.index("Lung Lesion")


def _tiny(seed: int = 0) -> CXRClassifier:
    torch.manual_seed(seed)
    return CXRClassifier(widths=(4, 8), feature_dim=8, resolution=32)


def test_negative_scores_against_the_completed_labels():
    labels = torch.full((2, 14), math.nan)
    labels[0, NORMAL] = 1.0          # "normal chest": every finding becomes 0
    labels[1, LESION] = 1.0          # "a nodule": No Finding and the other findings become 0
    images = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    metadata = [{"labels": row} for row in labels]
    net = _tiny()
    masked, negative = DiagnosticReward(net), DiagnosticReward(net, unmentioned="negative")
    probs = masked.predict_proba(images)
    torch.testing.assert_close(negative.score(images, ["a", "b"], metadata),
                               masked_bce_score(probs, unmentioned_as_negative(labels))[0], rtol=0, atol=0)
    torch.testing.assert_close(masked.score(images, ["a", "b"], metadata), masked_bce_score(probs, labels)[0],
                               rtol=0, atol=0)
    assert (negative.score(images, ["a", "b"], metadata) != masked.score(images, ["a", "b"], metadata)).all()


def test_a_model_scores_with_the_convention_it_was_trained_with(tmp_path):
    for convention in ("masked", "negative"):
        DiagnosticReward(_tiny()).save(tmp_path / convention, {"training": {"config": {"unmentioned": convention}}})
        assert DiagnosticReward.load(tmp_path / convention).unmentioned == convention
    assert DiagnosticReward.load(tmp_path / "negative", unmentioned="masked").unmentioned == "masked"
    DiagnosticReward(_tiny()).save(tmp_path / "older", {})            # saved before the option existed
    assert DiagnosticReward.load(tmp_path / "older").unmentioned == "masked"
    assert load_reward_model("diagnostic").unmentioned == "masked"   # the shipped members were trained masked


def test_bad_values_are_refused():
    with pytest.raises(ValueError, match=r"unmentioned must be one of \['masked', 'negative'\], got 'zero'"):
        DiagnosticReward(_tiny(), unmentioned="zero")


def test_the_fingerprint_tells_the_conventions_apart():
    net = _tiny()
    plain = DiagnosticReward(net)
    negative = DiagnosticReward(net, unmentioned="negative")
    implying = DiagnosticReward(net, implied_negatives=["Lung Lesion"])
    assert len({plain.fingerprint(), negative.fingerprint(), implying.fingerprint()}) == 3
    # the default adds nothing to the weights' fingerprint, so anchor scores cached before the option stay valid
    base = super(DiagnosticReward, plain).fingerprint()
    assert plain.fingerprint() == base
