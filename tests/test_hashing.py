"""Content hashes: a generator's fingerprint follows its weights, vocabulary and scheduler — and nothing a call
sets on the way (the tokenizer's padding and truncation state after encoding prompts)."""
import torch

from cxrl.diffusion import load_generator
from cxrl.hashing import generator_fingerprint, state_dict_hash


def test_generator_fingerprint_tracks_the_model_not_its_use(tiny_pixel_dir):
    gen = load_generator(tiny_pixel_dir)
    before = generator_fingerprint(gen)
    gen.encode_prompts(["small left pleural effusion"])           # pads and truncates: tokenizer state changes
    assert generator_fingerprint(gen) == before
    assert generator_fingerprint(load_generator(tiny_pixel_dir)) == before   # another load of the same files
    ace = torch.nn.Linear(2, 2)
    assert generator_fingerprint(gen, ace) != before
    weight = next(gen.text_encoder.parameters())
    with torch.no_grad():
        weight.mul_(1.5)
    assert generator_fingerprint(gen) != before
    assert state_dict_hash({"w": torch.ones(2, dtype=torch.bfloat16)}) != state_dict_hash({"w": torch.ones(2)})
