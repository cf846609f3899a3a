"""The project's reward-model training loops at toy size: what each model is for, measured on held-out data the
loop never saw (the evaluator half of the phantom reports), besides the numbers the loop reports itself."""
import pytest
import torch

from cxrl.config import RewardTrainingConfig, section_from_dict
from cxrl.diffusion.tokenizer import build_clip_tokenizer
from cxrl.rewards.posture import IDENTITY_POSTURE, pose_images, sample_postures
from cxrl.training.reward_data import phantom_training_set
from cxrl.data.labels import CHEXPERT_LABELS
from cxrl.eval.auroc import binary_auroc
from cxrl.rewards.diagnostic import unmentioned_as_negative
from cxrl.training.reward_models import finding_keys, train_consistency, train_diagnostic, train_posture

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


NAN = float("nan")
NO_FINDING, LESION, EFFUSION = (CHEXPERT_LABELS.index(n) for n in ("No Finding", "Lung Lesion", "Pleural Effusion"))


def test_unmentioned_as_negative_fills_only_what_the_report_leaves_out():
    labels = torch.full((3, 14), NAN)
    labels[0, NO_FINDING] = 1.0                       # "normal chest": nothing else mentioned
    labels[1, LESION], labels[1, EFFUSION] = 1.0, 0.0  # a nodule, no effusion; No Finding unmentioned
    labels[2, LESION] = -1.0                          # an uncertain nodule
    out = unmentioned_as_negative(labels)
    assert torch.isnan(labels).sum() == 14 * 3 - 4    # the input is left as it was
    assert out[0, NO_FINDING] == 1 and (out[0, [i for i in range(14) if i != NO_FINDING]] == 0).all()
    assert out[1, LESION] == 1 and out[1, EFFUSION] == 0 and out[1, NO_FINDING] == 0
    assert out[2, LESION] == -1 and out[2, NO_FINDING] == 0   # uncertain stays uncertain (masked in the loss)
    assert not torch.isnan(out).any()
    # a report that states nothing at all keeps No Finding unmentioned: nothing says whether it is normal
    assert torch.isnan(unmentioned_as_negative(torch.full((1, 14), NAN))[0, NO_FINDING])


def test_train_diagnostic_with_unmentioned_negatives_rewards_a_normal_report_for_a_normal_image(held_out):
    """Under CheXpert masking the No Finding head sees positives only (the labeler never writes 0) and calls every
    image normal, so a normal report's s_diag is ~0 whatever is drawn. Trained with unmentioned findings as
    negatives, the reward for "normal chest" is higher on the held-out reports' normal images (no finding drawn)
    than on the others."""
    data = phantom_training_set("reward", renders_per_report=1, resolution=32, max_items=384)
    drawn = (held_out["labels"] == 1) | (held_out["labels"] == -1)
    drawn[:, NO_FINDING] = False
    normal = ~drawn.any(dim=1)
    assert 10 < int(normal.sum()) < 86
    normal_report = torch.full((1, 14), NAN)
    normal_report[0, NO_FINDING] = 1.0
    metadata = [{"labels": normal_report[0]}] * len(normal)
    gap, no_finding = {}, {}
    for mode in ("masked", "negative"):
        # ~5 s each; measured for seeds 0-2: No Finding on abnormal images 0.97-0.99 (masked), 0.53-0.62 (negative)
        cfg = _config(epochs=16, learning_rate=5e-3, widths=[8, 16, 32], unmentioned=mode)
        reward, metrics = train_diagnostic(data["images"], data["labels"], cfg)
        assert metrics["train_loss"][-1] < metrics["train_loss"][0]
        images = held_out["images"].float()
        with torch.no_grad():
            s_diag = reward(images, ["normal chest"] * len(normal), metadata)
            no_finding[mode] = reward.predict_proba(images)[:, NO_FINDING]
        gap[mode] = float(s_diag[normal].mean() - s_diag[~normal].mean())
    assert float(no_finding["masked"][~normal].mean()) > 0.9, no_finding
    assert float(no_finding["negative"][~normal].mean()) < float(no_finding["negative"][normal].mean()) - 0.1
    assert binary_auroc(no_finding["negative"], normal.float()) > 0.75
    assert gap["negative"] > 0.15 and gap["negative"] > 3 * gap["masked"], gap
