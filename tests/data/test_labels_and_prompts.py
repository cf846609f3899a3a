import math

import pytest
import torch

from cxrl.data.labels import CHEXPERT_LABELS, apply_label_policy, as_label_dict, labels_to_tensor, tensor_to_labels
from cxrl.data.prompts import build_prompt, estimate_tokens, prompt_from_labels, truncate_to_limit
from cxrl.data.sections import findings_and_impression, parse_sections


def test_label_order_matches_architecture_doc():
    assert CHEXPERT_LABELS[0] == "No Finding" and CHEXPERT_LABELS[-1] == "Support Devices"
    assert len(CHEXPERT_LABELS) == 14 and CHEXPERT_LABELS[10] == "Pleural Effusion"


def test_tensor_roundtrip_and_nan_for_none():
    d = {"Cardiomegaly": 1, "Edema": -1, "Pneumothorax": 0}
    t = labels_to_tensor(d)
    assert t.dtype == torch.float32 and t.shape == (14,)
    assert t[2] == 1 and t[5] == -1 and t[9] == 0 and math.isnan(t[0].item())
    back = tensor_to_labels(t)
    assert back["Cardiomegaly"] == 1 and back["Edema"] == -1 and back["Pneumothorax"] == 0 and back["No Finding"] is None
    assert labels_to_tensor(back).nan_to_num(7).tolist() == t.nan_to_num(7).tolist()


@pytest.mark.parametrize("bad", [{"Cardiomegally": 1}, {"Edema": 2}, {"Edema": True}])
def test_bad_labels_name_the_field(bad):
    with pytest.raises(ValueError, match="Cardiomegally|Edema"):
        labels_to_tensor(bad)


def test_tensor_shape_checked():
    with pytest.raises(ValueError, match="shape"):
        tensor_to_labels(torch.zeros(13))


def test_label_policies():
    t = labels_to_tensor({"Cardiomegaly": -1, "Edema": 1})
    assert apply_label_policy(t, "ones")[2] == 1
    assert apply_label_policy(t, "zeros")[2] == 0
    assert math.isnan(apply_label_policy(t, "ignore")[2].item())
    zeros_blank = apply_label_policy(t, "ignore", "zeros")
    assert math.isnan(zeros_blank[2].item()), "an uncertain label masked by 'ignore' must not become a blank->0"
    assert zeros_blank[0] == 0 and zeros_blank[5] == 1
    with pytest.raises(ValueError, match="uncertain policy"):
        apply_label_policy(t, "maybe")


MIMIC_STYLE = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with cough, rule out pneumonia

 COMPARISON:  None.

 FINDINGS:

 The heart is mildly enlarged.  Small left pleural effusion.  No pneumothorax.

 IMPRESSION:

 Cardiomegaly and small left effusion.
"""


def test_sections_parse_mimic_headers():
    s = parse_sections(MIMIC_STYLE)
    assert s["findings"].startswith("The heart is mildly enlarged")
    assert s["impression"] == "Cardiomegaly and small left effusion."
    assert "rule out pneumonia" in s["indication"]
    assert "pneumonia" not in findings_and_impression(s)


def test_prompt_sources_and_fallbacks():
    assert build_prompt(MIMIC_STYLE, "impression") == "Cardiomegaly and small left effusion."
    assert build_prompt(MIMIC_STYLE, "findings").startswith("The heart is mildly enlarged")
    both = build_prompt(MIMIC_STYLE, "both")
    assert both.startswith("The heart") and both.endswith("left effusion.")
    assert build_prompt("FINDINGS: Lungs are clear.", "impression") == "Lungs are clear."
    assert build_prompt("", "impression") == ""
    with pytest.raises(ValueError, match="prompt source"):
        build_prompt(MIMIC_STYLE, "history")


def test_truncation_on_sentence_boundary():
    text = " ".join(f"Sentence number {i} is here." for i in range(40))
    out = truncate_to_limit(text, max_tokens=30)
    assert estimate_tokens(out) <= 30 and out.endswith(".") and text.startswith(out) and len(out) < len(text)
    kept = out.count(".")
    assert out == " ".join(f"Sentence number {i} is here." for i in range(kept))   # whole sentences, in order
    # as many as fit: one more sentence (the next one of the text) would exceed the limit
    assert estimate_tokens(" ".join([out, f"Sentence number {kept} is here."])) > 30


def test_truncation_with_a_tokenizer_callable():
    calls = []

    def tokenizer(text):  # a character-level tokenizer: strict enough to force truncation
        calls.append(text)
        return {"input_ids": list(range(len(text)))}

    out = truncate_to_limit("Short one. A much longer second sentence here.", max_tokens=12, tokenizer=tokenizer)
    assert out == "Short one." and calls


def test_overlong_single_sentence_is_cut_by_words():
    out = truncate_to_limit("word " * 200, max_tokens=10)
    assert estimate_tokens(out) <= 10 and len(out.split()) == 8


def test_prompt_from_labels():
    assert prompt_from_labels({"Cardiomegaly": 1, "Edema": -1}) == "Cardiomegaly. Possible edema."
    assert prompt_from_labels({"No Finding": 1}) == "No acute cardiopulmonary abnormality."
    assert prompt_from_labels(as_label_dict({"Support Devices": 1})).endswith("Support devices.")
