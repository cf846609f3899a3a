"""Generator loading/saving, the locally built CLIP tokenizer, and diffusers' own pipeline on our output."""
import json
import shutil

import pytest
import torch

from cxrl.diffusion import (
    AdaptiveConditionEmbedding,
    apply_lora,
    build_clip_tokenizer,
    load_ace,
    load_generator,
    sample_images,
    save_generator,
)
from cxrl.diffusion.tiny import REPORT_LIKE_SENTENCES

PROMPTS = ["small left pleural effusion", "no acute cardiopulmonary process", "mild cardiomegaly"]
pytestmark = pytest.mark.usefixtures("one_thread")


def _unet_out(gen, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, *gen.latent_shape, generator=g)
    with torch.no_grad():
        return gen.unet(x, torch.tensor([900, 17]), encoder_hidden_states=gen.encode_prompts(PROMPTS[:2])).sample


def _randomize_lora(unet, seed=1, std=0.2):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * std)


# ------------------------------------------------------------------------------------- tokenizer
def test_tokenizer_is_clip_format_and_loads_in_transformers(tmp_path):
    from transformers import CLIPTokenizer

    tok = build_clip_tokenizer(list(REPORT_LIKE_SENTENCES), 800, tmp_path / "tok", model_max_length=40)
    again = CLIPTokenizer.from_pretrained(str(tmp_path / "tok"), local_files_only=True)
    vocab = json.loads((tmp_path / "tok" / "vocab.json").read_text())
    assert len(tok) == len(vocab) <= 800
    # CLIP convention: start/end of text are the two highest ids, end of text also pads.
    assert (tok.bos_token_id, tok.eos_token_id) == (len(vocab) - 2, len(vocab) - 1)
    assert tok.pad_token_id == tok.eos_token_id and tok.model_max_length == again.model_max_length == 40
    text = "Small LEFT pleural effusion; Ünusual glyph 7%"
    ids = tok(text)["input_ids"]
    assert ids == again(text)["input_ids"] and ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok.unk_token_id not in ids[1:-1]  # every byte has a symbol: nothing is unknown
    # Frequent report words became whole tokens with the end-of-word suffix; case is folded.
    assert "effusion</w>" in vocab and "pleural</w>" in vocab
    assert tok.convert_ids_to_tokens(ids[1:5]) == ["small</w>", "left</w>", "pleural</w>", "effusion</w>"]
    assert tok.decode(ids, skip_special_tokens=True).startswith("small left pleural effusion")
    padded = tok([text], padding="max_length", max_length=40, truncation=True)["input_ids"][0]
    assert len(padded) == 40 and padded[-1] == tok.pad_token_id


def test_tokenizer_rejects_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="vocab_size"):
        build_clip_tokenizer(["a b"], 100, tmp_path / "t")
    with pytest.raises(ValueError, match="no non-empty"):
        build_clip_tokenizer(["", "  "], 600, tmp_path / "t")
    with pytest.raises(ValueError, match=r"texts\[1\]"):
        build_clip_tokenizer(["fine", 3], 600, tmp_path / "t")
    with pytest.raises(ValueError, match="single string"):
        build_clip_tokenizer("a report", 600, tmp_path / "t")


def _reference_merges(word_counts: dict, num_merges: int, min_frequency: int = 2) -> list:
    """Textbook BPE, recounting every pair at every step: the most frequent pair, ties to the smallest."""
    words = {tuple(w[:-1]) + (w[-1] + "</w>",): c for w, c in word_counts.items()}
    merges = []
    while len(merges) < num_merges:
        counts = {}
        for symbols, c in words.items():
            for pair in zip(symbols, symbols[1:]):
                counts[pair] = counts.get(pair, 0) + c
        if not counts:
            break
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        if counts[best] < min_frequency:
            break
        merges.append(best)
        merged = {}
        for symbols, c in words.items():
            out, i = [], 0
            while i < len(symbols):
                if symbols[i:i + 2] == best:
                    out.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            merged[tuple(out)] = merged.get(tuple(out), 0) + c
        words = merged
    return merges


def test_merges_equal_textbook_bpe():
    from collections import Counter

    from cxrl.diffusion.tokenizer import learn_merges

    words = Counter(w.strip(".,").lower() for s in REPORT_LIKE_SENTENCES for w in s.split() if w.strip(".,"))
    words.update({"aaaa": 3, "aaa": 2, "abab": 2})   # overlapping pairs: merged left to right
    assert learn_merges(words, 300) == _reference_merges(words, 300)
    assert learn_merges(words, 7) == _reference_merges(words, 7)


def test_tokenizer_is_the_same_in_every_build(tmp_path):
    """The `tokenizers` trainer broke ties between equally frequent pairs by a per-process hash order: with ten
    tied pairs and room for three merges, builds chose different merges (and the tiny generator differed
    between processes). Ties now go to the smallest pair, in every build."""
    texts = ["ab ac ad ae af ag ah ai aj ak"] * 2
    builds = []
    for i in range(4):
        build_clip_tokenizer(texts, 517, tmp_path / f"t{i}")
        builds.append([(tmp_path / f"t{i}" / name).read_bytes() for name in ("vocab.json", "merges.txt")])
    assert all(b == builds[0] for b in builds)
    merges = (tmp_path / "t0" / "merges.txt").read_text().splitlines()[1:]
    assert merges == ["a b</w>", "a c</w>", "a d</w>"]


def test_empty_prompt_embedding_follows_the_text_encoders_weights(tiny_pixel_dir):
    """The cached empty-prompt embedding (CFG's negative) is recomputed after any in-place change of the encoder
    (an RL update that trains it, a restored checkpoint) and for a copy with another encoder, never served stale."""
    import copy
    import dataclasses
    gen = load_generator(tiny_pixel_dir)
    first = gen.empty_embeds()
    assert gen.empty_embeds() is first                                   # cached while nothing changes
    other = dataclasses.replace(gen, text_encoder=copy.deepcopy(gen.text_encoder))
    with torch.no_grad():
        other.text_encoder.final_layer_norm.bias.add_(0.5)   # the copy changes; gen's encoder does not
    torch.testing.assert_close(other.empty_embeds(), first + 0.5)
    assert gen.empty_embeds() is first
    with torch.no_grad():
        gen.text_encoder.final_layer_norm.bias.add_(0.25)
    changed = gen.empty_embeds()
    torch.testing.assert_close(changed, first + 0.25)
    assert torch.equal(changed, gen.encode_prompts([""]))
    grad = gen.encode_prompts(["mild cardiomegaly"], with_grad=True)
    assert not grad.requires_grad                                        # frozen weights: nothing to differentiate
    gen.text_encoder.requires_grad_(True)
    grad = gen.encode_prompts(["mild cardiomegaly"], with_grad=True)
    assert grad.requires_grad and not gen.encode_prompts(["mild cardiomegaly"]).requires_grad


# ----------------------------------------------------------------------------------------- loading
def test_load_pixel_generator(tiny_pixel_dir):
    gen = load_generator(tiny_pixel_dir)
    assert not gen.is_latent and gen.vae is None
    assert gen.latent_shape == (1, 16, 16) and gen.resolution == (16, 16) and gen.image_channels == 1
    embeds = gen.encode_prompts(PROMPTS)
    assert embeds.shape == (3, 77, gen.context_dim) and not embeds.requires_grad
    assert torch.equal(embeds, gen.encode_prompts(PROMPTS))
    # Prompts differ only in their own tokens: different prompts give different embeddings.
    assert not torch.allclose(embeds[0], embeds[1])
    assert not any(p.requires_grad for p in gen.unet.parameters())
    latents = torch.linspace(-1.5, 1.5, 2 * 16 * 16).reshape(2, 1, 16, 16)
    images = gen.decode(latents)
    assert torch.allclose(images, ((latents + 1) / 2).clamp(0, 1))


def test_load_latent_generator_decodes_through_the_vae(tiny_latent_dir):
    gen = load_generator(tiny_latent_dir)
    assert gen.is_latent and gen.vae_scale_factor == 2
    assert gen.latent_shape == (4, 8, 8) and gen.resolution == (16, 16) and gen.image_channels == 1
    latents = torch.randn(2, 4, 8, 8)
    images = gen.decode(latents)
    with torch.no_grad():
        expected = gen.vae.decode(latents / gen.vae.config.scaling_factor).sample / 2 + 0.5
    assert images.shape == (2, 1, 16, 16) and images.min() >= 0 and images.max() <= 1
    assert torch.allclose(images, expected.clamp(0, 1))
    with pytest.raises(ValueError, match="latents"):
        gen.decode(torch.randn(2, 1, 16, 16))


@pytest.mark.parametrize("component", ["unet", "text_encoder", "tokenizer", "scheduler"])
def test_missing_component_is_named(tiny_pixel_dir, tmp_path, component):
    broken = tmp_path / "gen"
    shutil.copytree(tiny_pixel_dir, broken)
    shutil.rmtree(broken / component)
    with pytest.raises(FileNotFoundError, match=f"{component}"):
        load_generator(broken)


def test_missing_files_and_directory_are_named(tiny_pixel_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="generator directory not found"):
        load_generator(tmp_path / "nowhere")
    broken = tmp_path / "gen"
    shutil.copytree(tiny_pixel_dir, broken)
    (broken / "tokenizer" / "vocab.json").unlink()
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        load_generator(broken)
    (broken / "unet" / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"unet.config\.json"):
        load_generator(broken)


# ------------------------------------------------------------------------------------ save / load
def test_full_weights_round_trip(tiny_pixel_dir, tmp_path):
    gen = load_generator(tiny_pixel_dir)
    torch.manual_seed(3)
    with torch.no_grad():  # stands in for full fine-tuning: every UNet weight moves
        for p in gen.unet.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    ace = AdaptiveConditionEmbedding(2, gen.context_dim, seed=4)
    out = save_generator(gen, tmp_path / "tuned", ace=ace)
    loaded = load_generator(out)
    assert torch.equal(_unet_out(gen), _unet_out(loaded))
    assert torch.equal(gen.encode_prompts(PROMPTS), loaded.encode_prompts(PROMPTS))
    assert loaded.scheduler.config.beta_schedule == gen.scheduler.config.beta_schedule
    assert torch.equal(load_ace(out).tokens, ace.tokens)
    index = json.loads((out / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"] and "vae" not in index
    with pytest.raises(FileExistsError, match="overwrite"):
        save_generator(gen, out)
    save_generator(gen, out, overwrite=True)  # replacing drops the stale ace/
    assert load_ace(out) is None and not list(tmp_path.glob(".tuned.*"))


@pytest.mark.parametrize("merge", [True, False])
def test_lora_round_trip(tiny_pixel_dir, tmp_path, merge):
    gen = load_generator(tiny_pixel_dir)
    apply_lora(gen.unet, rank=2, alpha=4)
    _randomize_lora(gen.unet)
    before = _unet_out(gen)
    out = save_generator(gen, tmp_path / "lora", merge_lora=merge)
    assert (out / "lora").is_dir() is (not merge)
    loaded = load_generator(out)
    # merged W + s·B·A rounds differently from the separate LoRA branch: float32 rounding on outputs of size ~1,
    # measured 8.9e-6 alone and just over 1e-5 (the old tolerance) in a full run once the tokenizer's merges changed
    torch.testing.assert_close(_unet_out(loaded), before, atol=5e-5, rtol=1e-5)
    assert (_unet_out(load_generator(tiny_pixel_dir)) - before).abs().max() > 1e-2   # the adapter matters
    # The live model still has its (unmerged, trainable) adapter after saving.
    assert any("lora_B" in n for n, _ in gen.unet.named_parameters())
    assert torch.equal(_unet_out(gen), before)
    # The base weights on disk are the untouched originals when the adapter is kept apart.
    base = load_generator(tiny_pixel_dir)
    if not merge:
        from diffusers import UNet2DConditionModel

        plain = UNet2DConditionModel.from_pretrained(str(out / "unet"), local_files_only=True).state_dict()
        original = base.unet.state_dict()
        assert plain.keys() == original.keys()
        assert all(torch.equal(plain[k], original[k]) for k in plain)


def test_diffusers_pipeline_loads_and_reproduces_saved_latent_model(tiny_latent_dir, tmp_path):
    from diffusers import StableDiffusionPipeline

    gen = load_generator(tiny_latent_dir)
    apply_lora(gen.unet, rank=2)
    _randomize_lora(gen.unet)
    out = save_generator(gen, tmp_path / "sd", ace=AdaptiveConditionEmbedding(2, gen.context_dim))
    pipe = StableDiffusionPipeline.from_pretrained(str(out), safety_checker=None, feature_extractor=None,
                                                   requires_safety_checker=False, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    noise = torch.randn(2, *gen.latent_shape, generator=torch.Generator().manual_seed(0))
    theirs = pipe(PROMPTS[:2], height=16, width=16, num_inference_steps=3, guidance_scale=3.0, eta=1.0,
                  latents=noise.clone(), generator=torch.Generator().manual_seed(5), output_type="pt").images
    ours = sample_images(gen, PROMPTS[:2], num_steps=3, guidance_scale=3.0, eta=1.0, initial_noise=noise,
                         generator=torch.Generator().manual_seed(5))
    assert theirs.shape == ours.shape == (2, 1, 16, 16)
    assert torch.allclose(theirs, ours, atol=1e-4), (theirs - ours).abs().max()


def test_inconsistent_components_are_refused(tiny_pixel_dir, tmp_path):
    broken = tmp_path / "gen"
    shutil.copytree(tiny_pixel_dir, broken)
    config_path = broken / "tokenizer" / "tokenizer_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "model_max_length": 100}))
    with pytest.raises(ValueError, match="model_max_length 100 exceeds"):
        load_generator(broken)


def test_tiny_builder_validates_and_builds_deeper_unets(tmp_path):
    from cxrl.diffusion import make_tiny_generator

    with pytest.raises(ValueError, match="kind"):
        make_tiny_generator(tmp_path / "x", kind="video")
    with pytest.raises(ValueError, match="resolution=17"):
        make_tiny_generator(tmp_path / "x", resolution=17)
    # The demo base shape in miniature: three UNet levels, a wider text encoder with its own max length.
    path = make_tiny_generator(tmp_path / "deep", resolution=16, block_out_channels=(32, 32, 64),
                               cross_attention_dim=48, text_heads=4, model_max_length=24, seed=1)
    gen = load_generator(path)
    assert len(gen.unet.down_blocks) == 3 and gen.context_dim == 48 and gen.max_length == 24
    assert gen.encode_prompts(PROMPTS).shape == (3, 24, 48)
    assert _unet_out(gen).shape == (2, 1, 16, 16)
