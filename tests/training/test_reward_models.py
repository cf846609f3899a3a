"""The project's reward-model training loops at toy size: what each model is for, measured on held-out data the
loop never saw (the evaluator half of the phantom reports), besides the numbers the loop reports itself."""
import pytest
import torch

from cxrl.config import RewardTrainingConfig, section_from_dict
from cxrl.diffusion.tokenizer import build_clip_tokenizer
from cxrl.rewards.posture import IDENTITY_POSTURE, pose_images, sample_postures
from cxrl.training.reward_data import phantom_training_set
from cxrl.training.reward_models import finding_keys, train_consistency, train_posture

pytestmark = pytest.mark.usefixtures("one_thread")


def _config(**changes) -> RewardTrainingConfig:
    values = {"epochs": 6, "batch_size": 16, "learning_rate": 3e-3, "widths": [8, 16], "feature_dim": 16, "seed": 0,
              "val_fraction": 0.2}
    return section_from_dict(RewardTrainingConfig, {**values, **changes})


@pytest.fixture(scope="module")
def held_out():
    return phantom_training_set("evaluator", renders_per_report=1, resolution=32, max_items=96)


def test_train_posture_predicts_how_misaligned_an_image_is(held_out):
    data = phantom_training_set("reward", renders_per_report=1, resolution=32, max_items=384)
    cfg = _config(epochs=20, learning_rate=5e-3, widths=[8, 16, 32])   # ~4 s; measured corr 0.97 for seeds 0, 1, 2
    reward, metrics = train_posture(data["images"], cfg)
    assert metrics["train_loss"][-1] < 0.5 * metrics["train_loss"][0]
    assert metrics["val_deviation_corr"] > 0.8
    psi = sample_postures(96, torch.Generator().manual_seed(7), cfg.max_scale, cfg.max_shift, cfg.max_rotation)
    posed = pose_images(held_out["images"].float(), psi)
    identity = torch.tensor(IDENTITY_POSTURE)
    true_dev = (psi - identity).norm(dim=1)
    pred_dev = (reward.predict(posed) - identity).norm(dim=1)
    assert float(torch.corrcoef(torch.stack([true_dev, pred_dev]))[0, 1]) > 0.8
    r = reward(posed, ["x"] * 96)   # the reward: the further from aligned, the lower
    assert float(torch.corrcoef(torch.stack([true_dev, r]))[0, 1]) < -0.8


def test_train_consistency_scores_the_matching_report_higher(held_out, tmp_path):
    data = phantom_training_set("reward", renders_per_report=2, resolution=32, max_items=512)
    tokenizer = build_clip_tokenizer(data["prompts"], 700, tmp_path / "tokenizer")
    cfg = _config(epochs=12, batch_size=32, learning_rate=5e-3, widths=[8, 16, 32], feature_dim=32)   # ~5 s
    reward, metrics = train_consistency(data["images"], data["prompts"], tokenizer, cfg, labels=data["labels"],
                                        embed_dim=32, text_width=32, text_layers=1)
    assert metrics["train_loss"][-1] < 0.8 * metrics["train_loss"][0]
    # held out: a report is right for image i when it has image i's findings (the phantom draws findings only)
    keys = finding_keys(held_out["labels"])
    same = keys[:, None] == keys[None, :]
    chance = float(same.float().mean(dim=1).mean())   # a random report's chance of having the right findings
    with torch.no_grad():
        sim = reward.similarity_matrix(held_out["images"].float(), held_out["prompts"])
    top1 = float(same[torch.arange(len(keys)), sim.argmax(dim=1)].float().mean())
    assert top1 > chance + 0.15 and metrics["val_top1_retrieval"] > chance, (top1, chance)
    # top-1 alone is met by always naming the most common findings ('no finding', 59% here); the reward's job is
    # to score image i's own report above reports with other findings (0.5 = chance; measured 0.61-0.67, seeds 0-2)
    own_above_other = float(((sim.diag()[:, None] > sim) & ~same).sum() / (~same).sum())
    assert own_above_other > 0.58, own_above_other
