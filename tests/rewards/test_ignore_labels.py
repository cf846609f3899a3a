"""`ignore_labels` of the diagnostic reward: the named labels are scored as if the report did not mention them,
through a config entry's kwargs and into every ensemble member; unknown names are refused; the anchor-score
cache tells the two apart."""
import math

import pytest
import torch

from cxrl.compose.rewards import reward_from_config
from cxrl.data.labels import CHEXPERT_LABELS
from cxrl.rewards.diagnostic import masked_bce_score
from cxrl.rewards.loading import load_reward_model

LESION = CHEXPERT_LABELS.index("Lung Lesion")
EFFUSION = CHEXPERT_LABELS.index("Pleural Effusion")


def _batch():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 1, 32, 32, generator=g)
    labels = torch.full((3, 14), math.nan)
    labels[0, LESION], labels[0, EFFUSION] = 1.0, 0.0
    labels[1, LESION] = 0.0                               # only the ignored label: no labelled class is left
    labels[2, EFFUSION] = 1.0
    return images, ["a", "b", "c"], [{"labels": row} for row in labels], labels


def test_ignored_labels_drop_out_of_the_score():
    images, prompts, metadata, labels = _batch()
    plain = load_reward_model("diagnostic")
    ignoring = load_reward_model("diagnostic", ignore_labels=["Lung Lesion"])
    probs = plain.predict_proba(images)
    masked = labels.clone()
    masked[:, LESION] = math.nan
    expected, has_label = masked_bce_score(probs, masked)
    got = ignoring.score(images, prompts, metadata)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert has_label.tolist() == [True, False, True] and ignoring.last_unlabelled.tolist() == [False, True, False]
    # without the option the lesion term is in the score (the first two samples differ), the third is the same
    full = plain.score(images, prompts, metadata)
    assert full[0] != got[0] and full[1] != got[1] and full[2] == got[2]


def test_ignore_labels_reach_every_ensemble_member_from_a_config_entry():
    entry = {"name": "diagnostic", "weight": 6.0,
             "path": ["asset:rewards/diagnostic", "asset:rewards/diagnostic-seed1"],
             "kwargs": {"ignore_labels": ["Lung Lesion", "Fracture"]}}
    model, weight = reward_from_config(entry)
    assert weight == 6.0
    fracture = CHEXPERT_LABELS.index("Fracture")
    assert [m.ignored_columns for m in model.members] == [[LESION, fracture]] * 2


def test_unknown_labels_are_refused_by_name():
    with pytest.raises(ValueError, match=r"ignore_labels \['Lesion'\] are not CheXpert labels; choose from"):
        load_reward_model("diagnostic", ignore_labels=["Lesion"])
    assert load_reward_model("diagnostic", ignore_labels="Fracture").ignored_columns == [CHEXPERT_LABELS.index("Fracture")]


def test_the_anchor_score_cache_keys_ignored_labels(anchor_cache_namespace):
    """Comparative feedback caches the anchor's scores: an entry that ignores a label scores other numbers, so it
    must not share the cache of one that does not."""
    namespace = anchor_cache_namespace
    plain = namespace(None)
    assert namespace({"ignore_labels": ["Lung Lesion"]}) != plain == namespace(None)
