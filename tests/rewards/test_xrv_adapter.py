"""torchxrayvision backend on a random-init DenseNet: normalisation, resizing, label mapping, missing weights."""
import pytest
import torch

xrv = pytest.importorskip("torchxrayvision")

from cxrl.rewards import DiagnosticReward, XRVClassifier, load_reward_model  # noqa: E402
from cxrl.rewards.diagnostic import masked_bce_score  # noqa: E402
from cxrl.data.labels import CHEXPERT_LABELS as CHEXPERT_ORDER  # noqa: E402
from cxrl.rewards.xrv_backend import XRV_TO_CHEXPERT, xrv_mapping_indices  # noqa: E402


@pytest.fixture(scope="module")
def densenet():
    torch.manual_seed(0)
    # a small DenseNet keeps the test fast; the adapter only relies on forward / features2 / pathologies
    return xrv.models.DenseNet(weights=None, block_config=(1, 1, 1, 1), num_init_features=8, growth_rate=4).eval()


def test_input_convention_and_resizing(densenet):
    seen = {}
    hook = densenet.features.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0].clone()))
    reward = DiagnosticReward(XRVClassifier(densenet))
    images = torch.rand(2, 3, 64, 48)  # RGB, odd size: converted by luminance, resized to 224
    images[0, :, 0, 0] = 0.0
    images[0, :, 10:20, 10:20] = 1.0
    reward.predict_proba(images)
    hook.remove()
    x = seen["x"]
    assert x.shape == (2, 1, 224, 224)
    assert x.min() >= -1024 - 1e-3 and x.max() <= 1024 + 1e-3
    assert x.min() < -1000 and x.max() > 1000  # black -> -1024, white -> +1024
    gray = (images * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    expected = torch.nn.functional.interpolate(gray, size=(224, 224), mode="bilinear", align_corners=False) * 2048 - 1024
    torch.testing.assert_close(x, expected, atol=1e-3, rtol=1e-4)


def test_label_mapping(densenet):
    adapter = XRVClassifier(densenet)
    x = torch.rand(3, 1, 224, 224) * 2048 - 1024
    with torch.no_grad():
        raw = torch.sigmoid(densenet(x))  # random init: no op_threshs, outputs are logits
        probs = adapter.probabilities(x)
    pathologies = xrv.datasets.default_pathologies
    assert probs.shape == (3, 14)
    for c, label in enumerate(CHEXPERT_ORDER):
        src = [k for k, v in XRV_TO_CHEXPERT.items() if v == label]
        if src:
            torch.testing.assert_close(probs[:, c], raw[:, pathologies.index(src[0])])
        else:
            assert torch.isnan(probs[:, c]).all(), label
    assert torch.isnan(probs[:, CHEXPERT_ORDER.index("No Finding")]).all()
    torch.testing.assert_close(probs[:, CHEXPERT_ORDER.index("Pleural Effusion")], raw[:, pathologies.index("Effusion")])


def test_unmapped_labels_are_masked_in_the_score(densenet):
    reward = DiagnosticReward(XRVClassifier(densenet))
    labels = torch.full((2, 14), float("nan"))
    labels[0, CHEXPERT_ORDER.index("Support Devices")] = 1.0  # no xrv output: masked -> no label -> 0
    labels[1, CHEXPERT_ORDER.index("Cardiomegaly")] = 1.0
    images = torch.rand(2, 1, 64, 64)
    scores = reward(images, ["tube", "big heart"], [{"labels": labels[0]}, {"labels": labels[1]}])
    assert scores[0] == 0 and reward.last_unlabelled.tolist() == [True, False]
    p = reward.predict_proba(images)[1, CHEXPERT_ORDER.index("Cardiomegaly")]
    torch.testing.assert_close(scores[1], torch.log(p))


def test_mapping_handles_models_with_empty_outputs():
    # e.g. the 'chex' weights list '' for outputs the dataset lacks
    mapping = xrv_mapping_indices(["", "Effusion", "Cardiomegaly"])
    assert mapping[CHEXPERT_ORDER.index("Pleural Effusion")] == 1
    assert mapping[CHEXPERT_ORDER.index("Cardiomegaly")] == 2
    assert (mapping >= 0).sum() == 2


def test_missing_weights_error_names_file_folder_and_url(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_reward_model("diagnostic", backend="xrv", weights="densenet121-res224-all", cache_dir=tmp_path)
    msg = str(info.value)
    url = xrv.models.model_urls["densenet121-res224-all"]["weights_url"]
    assert url.rsplit("/", 1)[1] in msg and str(tmp_path) in msg and url in msg
    assert list(tmp_path.iterdir()) == []  # nothing downloaded or created
    with pytest.raises(ValueError, match="unknown weights"):
        load_reward_model("diagnostic", backend="xrv", weights="densenet121-res224-nope", cache_dir=tmp_path)
    # a config entry's `path` is the weights directory: the same error names it; path and cache_dir must agree
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "mine")):
        load_reward_model("diagnostic", tmp_path / "mine", backend="xrv")
    with pytest.raises(ValueError, match="give one"):
        load_reward_model("diagnostic", tmp_path / "mine", backend="xrv", cache_dir=tmp_path / "other")


def test_masked_bce_reference():
    probs = torch.tensor([[0.9, 0.2, 0.5, float("nan")], [0.3, 0.6, 0.1, 0.8]])
    labels = torch.tensor([[1.0, 0.0, -1.0, 1.0], [float("nan"), -1.0, float("nan"), float("nan")]])
    score, has = masked_bce_score(probs, labels)
    expected0 = -(-torch.log(torch.tensor(0.9)) - torch.log(torch.tensor(0.8))) / 2
    torch.testing.assert_close(score[0], expected0)
    assert score[1] == 0 and has.tolist() == [True, False]
