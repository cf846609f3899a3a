"""The CLIP-style consistency backend on a tiny random transformers CLIPModel saved to a temp dir."""
import pytest
import torch
import torch.nn.functional as F

from cxrl.rewards import ConsistencyReward, load_reward_model

TEXTS = ["no acute cardiopulmonary process", "small left pleural effusion", "the heart is enlarged",
         "right upper lobe consolidation", "endotracheal tube in place"] * 4
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from cxrl.diffusion.tokenizer import build_clip_tokenizer

    root = tmp_path_factory.mktemp("tiny_clip")
    tok = build_clip_tokenizer(TEXTS, 600, root)
    config = CLIPConfig(
        text_config={"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "max_position_embeddings": 77, "eos_token_id": tok.eos_token_id,
                     "bos_token_id": tok.bos_token_id, "pad_token_id": tok.pad_token_id},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                       "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )
    torch.manual_seed(0)
    CLIPModel(config).eval().save_pretrained(root)
    CLIPImageProcessor(image_mean=list(MEAN), image_std=list(STD), size={"shortest_edge": 32},
                       crop_size={"height": 32, "width": 32}).save_pretrained(root)
    return root


def reference_similarity(root, images, prompts):
    from transformers import CLIPModel, CLIPTokenizer

    model = CLIPModel.from_pretrained(root).eval()
    tok = CLIPTokenizer.from_pretrained(root)
    # documented pipeline: antialiased bicubic resize (as PIL does), gray -> RGB, processor mean/std
    x = F.interpolate(images, size=(32, 32), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1).repeat(1, 3, 1, 1)
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    enc = tok(prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        img = model.get_image_features(pixel_values=x)
        txt = model.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    img = img if isinstance(img, torch.Tensor) else img.pooler_output
    txt = txt if isinstance(txt, torch.Tensor) else txt.pooler_output
    return F.normalize(img, dim=-1), F.normalize(txt, dim=-1)


def test_clip_dir_matches_manual_pipeline(clip_dir):
    reward = load_reward_model("consistency", clip_dir, backend="clip")
    assert isinstance(reward, ConsistencyReward) and reward.comparative
    torch.manual_seed(1)
    images = torch.rand(4, 1, 64, 64)  # 1-channel at 64 px: replicated to RGB and resized to 32
    prompts = TEXTS[:4]
    img, txt = reference_similarity(clip_dir, images, prompts)
    scores = reward(images, prompts, None)
    torch.testing.assert_close(scores, (img * txt).sum(-1), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(reward.similarity_matrix(images, prompts), img @ txt.t(), atol=1e-5, rtol=1e-4)
    assert scores.abs().max() <= 1.0 + 1e-6


def test_clip_rgb_input_is_luminance(clip_dir):
    reward = load_reward_model("consistency", clip_dir, backend="clip")
    gray = torch.rand(2, 1, 32, 32)
    rgb = gray.repeat(1, 3, 1, 1)  # luminance of an equal-channel image is the channel itself
    torch.testing.assert_close(reward(rgb, TEXTS[:2]), reward(gray, TEXTS[:2]), atol=1e-5, rtol=1e-4)


def test_clip_missing_dir_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_reward_model("consistency", tmp_path / "nope", backend="clip")
    with pytest.raises(ValueError, match="needs path"):
        load_reward_model("consistency", backend="clip")
