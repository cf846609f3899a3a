"""The RoentGen-layout generator: SD v1.x configs, loaded by cxrl and by diffusers' own pipeline, which
must produce the same RGB images from the same noise."""
import json

import pytest
import torch

from cxrl.diffusion import load_generator, sample_images
from cxrl.diffusion.roentgen_layout import (
    PROVENANCE_FILE,
    make_roentgen_layout_generator,
)

PROMPTS = ["small left pleural effusion", "no acute cardiopulmonary process"]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def layout_dir(tmp_path_factory):
    return make_roentgen_layout_generator(tmp_path_factory.mktemp("roentgen") / "gen", resolution=32, seed=0)


def _config(path, name, file="config.json"):
    return json.loads((path / name / file).read_text())


def test_configs_follow_stable_diffusion_v1(layout_dir):
    index = json.loads((layout_dir / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert {k: index[k] for k in ("unet", "vae", "text_encoder", "tokenizer", "scheduler")} == {
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDIMScheduler"]}
    assert index["safety_checker"] == [None, None] and index["requires_safety_checker"] is False
    sched = _config(layout_dir, "scheduler", "scheduler_config.json")
    assert (sched["beta_start"], sched["beta_end"], sched["beta_schedule"]) == (0.00085, 0.012, "scaled_linear")
    assert sched["steps_offset"] == 1 and sched["clip_sample"] is False and sched["set_alpha_to_one"] is False
    assert sched["prediction_type"] == "epsilon" and sched["num_train_timesteps"] == 1000
    vae = _config(layout_dir, "vae")
    assert (vae["in_channels"], vae["out_channels"], vae["latent_channels"]) == (3, 3, 4)
    assert len(vae["block_out_channels"]) == 4 and vae["scaling_factor"] == 0.18215  # SD's 8x autoencoder
    unet = _config(layout_dir, "unet")
    assert (unet["in_channels"], unet["out_channels"], unet["sample_size"]) == (4, 4, 4)
    assert unet["down_block_types"] == ["CrossAttnDownBlock2D", "DownBlock2D"]
    assert unet["up_block_types"] == ["UpBlock2D", "CrossAttnUpBlock2D"]
    text = _config(layout_dir, "text_encoder")
    assert text["hidden_act"] == "quick_gelu" and text["hidden_size"] == unet["cross_attention_dim"]
    assert text["max_position_embeddings"] == 77


def test_cxrl_and_diffusers_load_it_and_sample_the_same_rgb_images(layout_dir):
    from diffusers import StableDiffusionPipeline

    gen = load_generator(layout_dir)
    assert gen.is_latent and gen.vae_scale_factor == 8 and gen.latent_shape == (4, 4, 4)
    assert gen.image_channels == 3 and gen.resolution == (32, 32)
    pipe = StableDiffusionPipeline.from_pretrained(str(layout_dir), safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.vae_scale_factor == 8
    noise = torch.randn(2, *gen.latent_shape, generator=torch.Generator().manual_seed(0))
    theirs = pipe(PROMPTS, height=32, width=32, num_inference_steps=3, guidance_scale=3.0, eta=1.0,
                  latents=noise.clone(), generator=torch.Generator().manual_seed(5), output_type="pt").images
    ours = sample_images(gen, PROMPTS, num_steps=3, guidance_scale=3.0, eta=1.0, initial_noise=noise,
                         generator=torch.Generator().manual_seed(5))
    assert theirs.shape == ours.shape == (2, 3, 32, 32)
    assert torch.allclose(theirs, ours, atol=1e-4), (theirs - ours).abs().max()
    assert float((ours[:, 0] - ours[:, 1]).abs().max()) > 0  # a random RGB decoder: channels differ


def test_seeded_weights_validation_and_overwrite(layout_dir, tmp_path):
    from safetensors.torch import load_file

    again = make_roentgen_layout_generator(tmp_path / "again", resolution=32, seed=0)
    other = make_roentgen_layout_generator(tmp_path / "other", resolution=32, seed=1)
    weights = "unet/diffusion_pytorch_model.safetensors"
    a, b, c = (load_file(str(p / weights)) for p in (layout_dir, again, other))
    assert all(torch.equal(a[k], b[k]) for k in a) and not all(torch.equal(a[k], c[k]) for k in a)
    assert json.loads((again / PROVENANCE_FILE).read_text())["seed"] == 0
    with pytest.raises(ValueError, match="multiple of 16"):
        make_roentgen_layout_generator(tmp_path / "bad", resolution=40)
    with pytest.raises(FileExistsError, match="not empty"):
        make_roentgen_layout_generator(again, resolution=32)
    assert make_roentgen_layout_generator(again, resolution=64, overwrite=True) == again
    assert _config(again, "unet")["sample_size"] == 8
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "model_index.json").write_text("{}")
    with pytest.raises(FileExistsError, match="refusing"):
        make_roentgen_layout_generator(foreign, resolution=32, overwrite=True)
    assert (foreign / "model_index.json").exists()
