"""Shared fixtures: tiny random-weight generators saved once per session in the diffusers layout.

The directories are read-only by convention: tests load them with ``load_generator`` (a fresh,
independent copy each time) and save changes elsewhere.
"""
import os

# Triton decides between compiled and interpreted mode when it is first imported, so this must happen
# before any test module imports it: with no GPU, Triton kernel bodies run in the CPU interpreter.
if os.environ.get("CXRL_TEST_GPU") != "1":
    try:
        import torch

        if not torch.cuda.is_available():
            os.environ.setdefault("TRITON_INTERPRET", "1")
    except ImportError:
        pass

import pytest


@pytest.fixture(scope="session")
def tiny_pixel_dir(tmp_path_factory):
    """Pixel-space 1x16x16 generator (UNet widths 32/64, 2-layer CLIP of width 32)."""
    from cxrl.diffusion.tiny import make_tiny_generator

    return make_tiny_generator(tmp_path_factory.mktemp("tiny_pixel") / "gen", kind="pixel", resolution=16)


@pytest.fixture(scope="session")
def tiny_latent_dir(tmp_path_factory):
    """Latent generator: 1x16x16 images through a 2x AutoencoderKL to 4x8x8 latents."""
    from cxrl.diffusion.tiny import make_tiny_generator

    return make_tiny_generator(tmp_path_factory.mktemp("tiny_latent") / "gen", kind="latent", resolution=16)


@pytest.fixture
def one_thread():
    """Run the test with one intra-op torch thread (restored after): on a shared, loaded CPU one thread
    is several times faster than two contended ones for these tiny models."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session", autouse=True)
def _torch_threads():
    """One intra-op torch thread for the whole suite (``CXRL_TEST_THREADS`` overrides): the test models
    are tiny, and on a 2-core machine shared with torchrun subprocesses and the C++ gather threads, more
    torch threads mostly measure oversubscription (a tiny UNet forward went from 0.5 s to 10 s)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("CXRL_TEST_THREADS", "1")))
    yield
    torch.set_num_threads(before)
