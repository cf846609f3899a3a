"""Data sources by name: held-out evaluation items, prompt pools, one spelling of sources and splits, and
evaluators that are never the reward models a run optimises."""
from pathlib import Path

import pytest
import torch

from cxrl.compose import evaluation_inputs, held_out_items, open_dataset, prompt_pool
from cxrl.config import load_config
from cxrl.data.iuxray import IUXrayReports

REPO = Path(__file__).resolve().parents[2]


def test_held_out_items_are_distinct_test_prompts():
    dataset = open_dataset("phantom", "test", resolution=32)
    items = held_out_items(dataset, 6, seed=3)
    assert len({i["prompt"] for i in items}) == 6
    assert all(i["id"].startswith("phantom-test-") and i["image"].shape == (1, 32, 32) for i in items)
    assert [i["id"] for i in held_out_items(dataset, 6, seed=3)] == [i["id"] for i in items]
    distinct = len(set(IUXrayReports(split="test").prompts))
    with pytest.raises(ValueError, match="distinct prompts"):
        held_out_items(dataset, distinct + 1, seed=0)
    every = held_out_items(dataset, 0, seed=0)   # 0: the whole split, once per distinct prompt
    assert len(every) == len({i["prompt"] for i in every}) == distinct
    assert {i["id"] for i in items} <= {i["id"] for i in every}
    with pytest.raises(ValueError, match="eval.num_prompts must be 0"):
        load_config(None, ["eval.enabled=true", "eval.num_prompts=1"])


def test_prompt_entries_match_the_items_without_reading_images():
    dataset = open_dataset("phantom", "validate", resolution=16)
    for index in (0, 5, len(dataset) - 1):
        entry, item = dataset.prompt_entry(index), dataset[index]
        assert entry["prompt"] == item["prompt"] and torch.equal(entry["labels"].nan_to_num(9), item["labels"].nan_to_num(9))
    pool = prompt_pool(load_config(None, ["data.split=validate", "eval.split=test", "monitor.every=0",
                                          "train.final_policy=last"]).data)
    assert len(pool) == len({dataset.prompt_entry(i)["prompt"] for i in range(len(dataset))})


def test_one_spelling_of_sources_and_splits():
    with pytest.raises(ValueError, match="'iu_xray' was renamed 'iuxray'"):
        load_config(None, ["data.source=iu_xray"])
    with pytest.raises(ValueError, match="'validation' was renamed 'validate'"):
        load_config(None, ["data.split=validation"])
    with pytest.raises(ValueError, match="split 'validation' is not one of"):
        open_dataset("iuxray", "validation")
    with pytest.raises(ValueError, match="needs the MIMIC-CXR-JPG root"):
        open_dataset("mimic", "train")


def test_reward_models_are_refused_as_evaluators():
    cfg = load_config(None, ["eval.evaluators=" + str(REPO / "cxrl" / "assets" / "rewards")])
    with pytest.raises(ValueError, match="reward model the RL optimises"):
        evaluation_inputs(cfg, 32, "cpu")
