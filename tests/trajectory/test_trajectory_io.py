"""Save/load: round trips on every backend and across backends (one file format), CRC-32 equal to
zlib's, and truncated / corrupted / foreign files rejected with a clear error."""
import zlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cxrl.trajectory import TrajectoryFormatError, TrajectoryStore
from cxrl.trajectory.extension import _C
from cxrl.trajectory.format import HEADER_BYTES, SECTIONS
from cxrl.trajectory.reference import ReferenceTrajectoryStore

HAS_C = _C is not None
needs_c = pytest.mark.skipif(not HAS_C, reason="cxrl._C is not built")
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def random_store(make, n, t, shape, k, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = make(n, t, shape, k, dtype)
    s.latents.copy_(torch.randn(s.latents.shape, generator=g).to(dtype))
    s.log_probs.copy_(torch.randn(n, t, generator=g))
    s.timesteps.copy_(torch.randint(0, 1000, (n, t), generator=g))
    s.prompt_ids.copy_(torch.randint(0, 9, (n,), generator=g))
    s.rewards.copy_(torch.randn(n, k, generator=g))
    s.advantages.copy_(torch.randn(n, generator=g))
    return s


MAKERS = {
    "cpp": lambda *a: TrajectoryStore(*a, backend="cpp"),
    "torch": lambda *a: TrajectoryStore(*a, backend="torch"),
    "reference": lambda *a: ReferenceTrajectoryStore(*a),
}
LOADERS = {
    "cpp": lambda p: TrajectoryStore.load(p, backend="cpp"),
    "torch": lambda p: TrajectoryStore.load(p, backend="torch"),
    "reference": ReferenceTrajectoryStore.load,
}
PAIRS = [(w, r) for w in MAKERS for r in LOADERS if HAS_C or (w == r == "reference")]


def assert_same(a, b):
    assert (a.num_samples, a.num_steps, a.latent_shape, a.num_rewards, a.dtype) == \
        (b.num_samples, b.num_steps, b.latent_shape, b.num_rewards, b.dtype)
    for name in SECTIONS:
        assert torch.equal(getattr(a, name), getattr(b, name)), name


@settings(max_examples=12, deadline=None)
@given(st.sampled_from(PAIRS), st.integers(1, 6), st.integers(1, 5),
       st.lists(st.integers(1, 4), min_size=1, max_size=4), st.integers(1, 3), st.sampled_from(DTYPES))
def test_round_trip_within_and_across_backends(tmp_path_factory, pair, n, t, shape, k, dtype):
    writer, reader = pair
    path = tmp_path_factory.mktemp("io") / "store.cxrl"
    store = random_store(MAKERS[writer], n, t, tuple(shape), k, dtype)
    store.save(path)
    assert path.stat().st_size == HEADER_BYTES + store.nbytes  # header + the six sections, no padding
    assert not path.with_name("store.cxrl.tmp").exists()
    assert_same(store, LOADERS[reader](path))


@pytest.fixture(params=[p for p in ("cpp", "reference") if HAS_C or p == "reference"])
def saved(request, tmp_path):
    store = random_store(MAKERS[request.param], 5, 4, (3, 2), 2, torch.float32)
    path = tmp_path / "store.cxrl"
    store.save(path)
    return path, request.param


def loaders_for_test():
    return [name for name in LOADERS if HAS_C or name == "reference"]


@pytest.mark.parametrize("reader", loaders_for_test())
@pytest.mark.parametrize("keep", [0, 10, HEADER_BYTES - 1, HEADER_BYTES, HEADER_BYTES + 7, -1])
def test_truncated_file_is_rejected(saved, reader, keep):
    path, _ = saved
    data = path.read_bytes()
    path.write_bytes(data[:keep] if keep >= 0 else data[:-1])
    with pytest.raises(TrajectoryFormatError, match="truncated"):
        LOADERS[reader](path)


@pytest.mark.parametrize("reader", loaders_for_test())
def test_corrupted_sections_are_named(saved, reader):
    path, _ = saved
    original = path.read_bytes()
    store = ReferenceTrajectoryStore.load(path)
    offset = HEADER_BYTES
    for name in SECTIONS:
        size = getattr(store, name).numel() * getattr(store, name).element_size()
        bad = bytearray(original)
        bad[offset + size // 2] ^= 0x10
        path.write_bytes(bytes(bad))
        with pytest.raises(TrajectoryFormatError, match=f"checksum mismatch in section '{name}'"):
            LOADERS[reader](path)
        offset += size


@pytest.mark.parametrize("reader", loaders_for_test())
@pytest.mark.parametrize("mutate, match", [
    (lambda b: b"NOTCXRL!" + b[8:], "not a cxrl trajectory file"),
    (lambda b: b[:20] + bytes([b[20] ^ 1]) + b[21:], "header checksum mismatch"),
    (lambda b: b + b"extra", "trailing bytes"),
])
def test_foreign_or_tampered_files_are_rejected(saved, reader, mutate, match):
    path, _ = saved
    path.write_bytes(mutate(path.read_bytes()))
    with pytest.raises(TrajectoryFormatError, match=match):
        LOADERS[reader](path)


@pytest.mark.parametrize("reader", loaders_for_test())
def test_missing_file(tmp_path, reader):
    with pytest.raises(FileNotFoundError, match="nope.cxrl"):
        LOADERS[reader](tmp_path / "nope.cxrl")


@needs_c
@settings(max_examples=30, deadline=None)
@given(st.binary(max_size=5000), st.integers(0, 2**32 - 1))
def test_cpp_crc32_equals_zlib(data, start):
    import numpy as np

    buf = np.frombuffer(data, dtype=np.uint8) if data else np.zeros(0, np.uint8)
    assert _C.crc32(buf, start) == zlib.crc32(data, start)
