"""`implied_negatives` of the diagnostic reward: a report labelled No Finding is scored as negative for the named
labels it leaves unmentioned, and for nothing else; mentioned labels keep the report's value; bad names are refused;
a config entry reaches every ensemble member; the anchor-score cache tells the two apart."""
import math

import pytest
import torch

from cxrl.compose.rewards import reward_from_config
from cxrl.data.labels import CHEXPERT_LABELS
from cxrl.rewards.diagnostic import masked_bce_score, with_implied_negatives
from cxrl.rewards.loading import load_reward_model

NORMAL = CHEXPERT_LABELS.index("No Finding")
LESION = CHEXPERT_LABELS.index("Lung Lesion")
FRACTURE = CHEXPERT_LABELS.index("Fracture")
DEVICES = CHEXPERT_LABELS.index("Support Devices")


def _labels():
    labels = torch.full((4, 14), math.nan)
    labels[0, NORMAL] = 1.0                                   # normal, lesion unmentioned: lesion becomes 0
    labels[1, NORMAL], labels[1, LESION] = 1.0, -1.0          # normal, lesion uncertain: kept uncertain
    labels[2, LESION] = 1.0                                   # abnormal: untouched
    labels[3, NORMAL], labels[3, DEVICES] = 1.0, 1.0          # normal with a device: lesion 0, device kept
    return labels


def test_only_unmentioned_labels_of_normal_reports_become_negative():
    labels = _labels()
    got = with_implied_negatives(labels, [LESION, FRACTURE])
    expected = labels.clone()
    expected[0, LESION] = expected[0, FRACTURE] = 0.0
    expected[1, FRACTURE] = 0.0
    expected[3, LESION] = expected[3, FRACTURE] = 0.0
    torch.testing.assert_close(got, expected, equal_nan=True, rtol=0, atol=0)
    assert torch.isnan(labels[0, LESION])                     # the input is not modified


def test_the_score_is_the_masked_bce_against_the_completed_labels():
    labels = _labels()
    images = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    metadata = [{"labels": row} for row in labels]
    prompts = ["a", "b", "c", "d"]
    plain = load_reward_model("diagnostic")
    implying = load_reward_model("diagnostic", implied_negatives=["Lung Lesion"])
    completed = labels.clone()
    completed[[0, 3], LESION] = 0.0
    expected, _ = masked_bce_score(plain.predict_proba(images), completed)
    got = implying.score(images, prompts, metadata)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    full = plain.score(images, prompts, metadata)
    assert got[0] != full[0] and got[3] != full[3] and got[1] == full[1] and got[2] == full[2]


def test_bad_names_are_refused():
    with pytest.raises(ValueError, match=r"implied_negatives \['Nodule'\] are not CheXpert labels; choose from"):
        load_reward_model("diagnostic", implied_negatives=["Nodule"])
    with pytest.raises(ValueError, match="'No Finding' itself cannot be one"):
        load_reward_model("diagnostic", implied_negatives=["No Finding"])
    assert load_reward_model("diagnostic", implied_negatives="Fracture").implied_negative_columns == [FRACTURE]


def test_a_config_entry_reaches_every_member_and_keys_the_anchor_cache(anchor_cache_namespace):
    entry = {"name": "diagnostic", "path": ["asset:rewards/diagnostic", "asset:rewards/diagnostic-seed1"],
             "kwargs": {"implied_negatives": ["Lung Lesion"]}}
    model, _ = reward_from_config(entry)
    assert [m.implied_negative_columns for m in model.members] == [[LESION]] * 2
    assert anchor_cache_namespace({"implied_negatives": ["Lung Lesion"]}) != anchor_cache_namespace(None)
