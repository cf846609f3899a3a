"""data.exclude_findings: the RL prompt pool without the prompts that state a named finding present. Checked on a
hand-made pool (which mentions stay), on the demo's own pool against an independent count, and for its errors."""
import pytest

from cxrl.compose import prompt_pool
from cxrl.config import load_config
from cxrl.data.labels import LABEL_INDEX, labels_to_tensor
from cxrl.rl.prompts import without_findings


def _entry(prompt, **labels):
    return {"prompt": prompt, "labels": labels_to_tensor({k.replace("_", " "): v for k, v in labels.items()})}


def test_only_prompts_stating_the_finding_present_leave():
    entries = [_entry("nodule", Lung_Lesion=1), _entry("no nodules", Lung_Lesion=0), _entry("possible nodule", Lung_Lesion=-1),
               _entry("normal", No_Finding=1), _entry("nodule and effusion", Lung_Lesion=1, Pleural_Effusion=1),
               _entry("effusion", Pleural_Effusion=1)]
    kept = without_findings(entries, ["Lung Lesion"])
    assert [e["prompt"] for e in kept] == ["no nodules", "possible nodule", "normal", "effusion"]
    both = without_findings(entries, ["Lung Lesion", "Pleural Effusion"])
    assert [e["prompt"] for e in both] == ["no nodules", "possible nodule", "normal"]
    assert without_findings(entries, []) == entries


def test_demo_pool_loses_exactly_its_lesion_prompts_and_keeps_its_order():
    full = prompt_pool(load_config(None).data)
    cut = prompt_pool(load_config(None, ["data.exclude_findings=[Lung Lesion]"]).data)
    column = LABEL_INDEX["Lung Lesion"]
    expected = [e["prompt"] for e in full.entries if float(e["labels"][column]) != 1.0]
    assert [e["prompt"] for e in cut.entries] == expected
    assert 0 < len(full) - len(cut) < len(full) // 5   # the demo's pool: 113 of 1,494 distinct train prompts
    draws = cut.draw(16, 2, seed=3, epoch=5)
    assert all(float(e["labels"][column]) != 1.0 for e in draws)
    # max_prompts caps the pool that is left, not the one before
    capped = prompt_pool(load_config(None, ["data.exclude_findings=[Lung Lesion]", "data.max_prompts=50"]).data)
    assert [e["prompt"] for e in capped.entries] == expected[:50]


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="did you mean 'Lung Lesion'"):
        load_config(None, ["data.exclude_findings=[lung lesion]"])
    with pytest.raises(ValueError, match="must be of type list"):
        load_config(None, ["data.exclude_findings=Lung Lesion"])
    with pytest.raises(ValueError, match="distinct"):
        load_config(None, ["data.exclude_findings=[Edema, Edema]"])
    with pytest.raises(ValueError, match="no labels"):
        without_findings([{"prompt": "a line of a .txt file", "labels": None}], ["Edema"])
    with pytest.raises(ValueError, match="no prompt is left"):
        without_findings([_entry("edema", Edema=1)], ["Edema"])

