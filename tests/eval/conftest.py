"""Tiny real evaluator models (random weights, saved in the project's on-disk format and loaded back
through the real loader) and tiny generators shared by the evaluation tests.

Tests here run torch single-threaded: on a shared, oversubscribed CPU the tiny models' intra-op thread
pool spends most of its time spinning (measured: 24 s -> 0.7 s for one tiny sampling run). The previous
thread count is restored after each module and each session fixture, so other test directories are
unaffected.
"""
import contextlib

import pytest
import torch


@contextlib.contextmanager
def single_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(autouse=True, scope="module")
def _single_threaded_module():
    with single_thread():
        yield


@pytest.fixture(scope="session")
def evaluator_root(tmp_path_factory):
    """A directory with posture/ diagnostic/ consistency/ evaluators, each a tiny random model."""
    root = tmp_path_factory.mktemp("evaluators")
    with single_thread():
        _save_tiny_evaluators(root)
    return root


def _save_tiny_evaluators(root):
    from cxrl.diffusion.tokenizer import build_clip_tokenizer
    from cxrl.diffusion.tiny import REPORT_LIKE_SENTENCES
    from cxrl.rewards.consistency import ConsistencyReward, DualEncoder
    from cxrl.rewards.diagnostic import CXRClassifier, DiagnosticReward
    from cxrl.rewards.posture import PostureNet, PostureReward

    torch.manual_seed(0)
    tiny = {"widths": (8, 16), "feature_dim": 16, "resolution": 32}
    posture_net = PostureNet(**tiny)
    torch.nn.init.normal_(posture_net.head.weight, std=0.5)  # a fresh PostureNet predicts identity for every image
    PostureReward(posture_net).save(root / "posture")
    DiagnosticReward(CXRClassifier(**tiny)).save(root / "diagnostic")
    tokenizer = build_clip_tokenizer(list(REPORT_LIKE_SENTENCES), 600, root / "tok", model_max_length=32)
    encoder = DualEncoder(vocab_size=len(tokenizer), max_length=32, embed_dim=16, widths=(8, 16), image_feature_dim=16,
                          text_width=16, text_layers=1, text_heads=2, resolution=32).attach_tokenizer(tokenizer)
    ConsistencyReward(encoder).save(root / "consistency")


@pytest.fixture
def make_items():
    return _make_items


def _make_items(count: int, size: int = 32, seed: int = 0, with_images: bool = True) -> list[dict]:
    """Dataset items following the shared contract, with alternating effusion labels."""
    from cxrl.diffusion.tiny import REPORT_LIKE_SENTENCES

    g = torch.Generator().manual_seed(seed)
    items = []
    for i in range(count):
        labels = torch.full((14,), float("nan"))
        labels[10] = float(i % 2)   # Pleural Effusion: both classes present
        labels[0] = float(1 - i % 2)  # No Finding
        image = torch.rand(1, size, size, generator=g) if with_images else None
        prompt = REPORT_LIKE_SENTENCES[i % len(REPORT_LIKE_SENTENCES)]
        items.append({"id": f"item-{i}", "prompt": prompt, "labels": labels, "image": image, "posture": None, "report": prompt})
    return items


@pytest.fixture(scope="session")
def tiny_generators(tmp_path_factory):
    """Two tiny random pixel-space generators (32 px, 1 channel) saved in the diffusers layout."""
    from cxrl.diffusion.tiny import make_tiny_generator

    root = tmp_path_factory.mktemp("generators")
    with single_thread():
        return {name: make_tiny_generator(root / name, kind="pixel", resolution=32, block_out_channels=(16, 32), seed=seed)
                for name, seed in (("base", 0), ("tuned", 1))}
