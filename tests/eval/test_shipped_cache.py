"""The base model's evaluation that ships with the package (cxrl/assets/eval_cache) is found by `cxrl train`'s own
evaluation inputs on this machine. A miss costs a user the whole base sampling (984 CFG samples: doubling the
evaluation), and it happened silently once, on an AVX2 VM: the key hashed the phantom reference images bit for bit, and
numpy's exp/sin may round their last bit differently on another CPU."""
import torch

from cxrl.compose import build_generator, evaluation_inputs
from cxrl.config import load_config
from cxrl.eval.cache import SHIPPED_CACHE, EvaluationCache, evaluation_key_parts, items_digest, key_of


def test_the_demo_finds_its_shipped_base_evaluation(tmp_path):
    cfg = load_config(None)
    device = torch.device("cpu")
    base = build_generator(cfg.model, device, workdir=tmp_path)
    inputs = evaluation_inputs(cfg, base.resolution[0], device)
    parts = evaluation_key_parts(base, None, inputs.items, inputs.evaluators, inputs.feature_extractor, cfg.eval,
                                 cfg.sampling)
    cache = EvaluationCache([SHIPPED_CACHE])
    nearest = cache.nearest_miss(parts, "base")
    assert nearest is not None, f"no shipped base evaluation records its key parts in {SHIPPED_CACHE}"
    meta, differ = nearest
    # The entry is valid for the torch it was made with; with another torch the run samples the base afresh (and
    # says so), which is right, so only the torch version may differ here.
    assert set(differ) <= {"torch"}, f"{meta.name} differs from this machine's demo evaluation in {differ}"
    if not differ:
        hit = cache.get(key_of(parts))
        assert hit is not None and hit.samples.shape == (246, 4, 1, 32, 32)


def test_reference_images_hash_on_a_grid_not_bit_for_bit():
    item = {"id": "a", "prompt": "p", "labels": torch.tensor([1.0, 0.0]), "image": torch.full((1, 4, 4), 0.3, dtype=torch.float64)}
    nudged = dict(item, image=item["image"] + 1e-12)                    # another CPU's last-bit rounding
    moved = dict(item, image=item["image"] + 1e-3)                      # a different image
    assert items_digest([item]) == items_digest([nudged])
    assert items_digest([item]) != items_digest([moved])
    assert items_digest([item]) != items_digest([dict(item, labels=torch.tensor([0.0, 1.0]))])
