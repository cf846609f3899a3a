"""The checksummed file formats: the trajectory store (same bytes as csrc/arena_io.cpp, so every
backend reads every other's files) and the advantage tracker's state.

Every read verifies what it reads; a missing file raises FileNotFoundError and a truncated, corrupted or
foreign one :class:`TrajectoryFormatError`, each naming the file and what is wrong. Writes go to
``<path>.tmp`` and are renamed into place, so a crash never leaves a partial file under ``path``.
"""
from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import torch

DTYPE_CODES = {torch.float32: 1, torch.float16: 2, torch.bfloat16: 3, torch.float64: 4}
CODE_DTYPES = {code: dtype for dtype, code in DTYPE_CODES.items()}


class TrajectoryFormatError(ValueError):
    """A trajectory or tracker file that is truncated, corrupted or not a cxrl file."""


def _replace_atomically(path: str | os.PathLike, chunks) -> None:
    tmp = f"{os.fspath(path)}.tmp"
    with open(tmp, "wb") as f:
        f.writelines(chunks)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------ store file
# Little-endian header, 148 bytes; see csrc/arena_io.cpp for the field table.
MAGIC = b"CXRLTRJ1"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<8sIIQQQII8QQ6I")
_HEADER_CRC = struct.Struct("<I")
HEADER_BYTES = _HEADER.size + _HEADER_CRC.size
SECTIONS = ("latents", "log_probs", "timesteps", "prompt_ids", "rewards", "advantages")


def _raw_bytes(t: torch.Tensor) -> memoryview:
    return memoryview(t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy())


def write_store_file(path: str | os.PathLike, store) -> None:
    """Write ``store``'s six sections with a header and one CRC-32 per section."""
    payload = [_raw_bytes(getattr(store, name)) for name in SECTIONS]
    shape = list(store.latent_shape) + [0] * (8 - len(store.latent_shape))
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, DTYPE_CODES[store.dtype], store.num_samples, store.num_steps,
                          store.num_rewards, len(store.latent_shape), store.dtype.itemsize, *shape,
                          sum(p.nbytes for p in payload), *(zlib.crc32(p) for p in payload))
    _replace_atomically(path, [header + _HEADER_CRC.pack(zlib.crc32(header)), *payload])


def read_store_file(path: str | os.PathLike, make_store):
    """Parse and verify a store file; ``make_store(N, T, shape, K, dtype)`` builds the empty store."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"trajectory file '{path}' does not exist")
    where = f"trajectory file '{path}'"
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise TrajectoryFormatError(f"{where} is truncated: {size} bytes, shorter than the {HEADER_BYTES}-byte header")
    with path.open("rb") as f:
        raw = f.read(HEADER_BYTES)
        if raw[:8] != MAGIC:
            raise TrajectoryFormatError(f"{where} is not a cxrl trajectory file (bad magic)")
        if _HEADER_CRC.unpack(raw[_HEADER.size:])[0] != zlib.crc32(raw[:_HEADER.size]):
            raise TrajectoryFormatError(f"{where} is corrupted: header checksum mismatch")
        _, version, code, n, t, k, ndim, itemsize, *rest = _HEADER.unpack(raw[:_HEADER.size])
        shape8, payload_bytes, crcs = rest[:8], rest[8], rest[9:]
        if version != FORMAT_VERSION:
            raise TrajectoryFormatError(f"{where} has format version {version}; this build reads version 1")
        if code not in CODE_DTYPES or not 1 <= ndim <= 8 or CODE_DTYPES[code].itemsize != itemsize:
            raise TrajectoryFormatError(f"{where} has an invalid header (dtype code {code}, ndim {ndim})")
        try:
            store = make_store(n, t, tuple(shape8[:ndim]), k, CODE_DTYPES[code])
        except ValueError as err:
            raise TrajectoryFormatError(f"{where} has an invalid header: {err}") from err
        targets = [getattr(store, name) for name in SECTIONS]
        expected = sum(x.numel() * x.element_size() for x in targets)
        if payload_bytes != expected:
            raise TrajectoryFormatError(f"{where} has a payload size that does not match its dimensions")
        if size != HEADER_BYTES + expected:
            what = "is truncated" if size < HEADER_BYTES + expected else "has unexpected trailing bytes"
            raise TrajectoryFormatError(f"{where} {what}: {size} bytes, expected {HEADER_BYTES + expected}")
        for name, target, crc in zip(SECTIONS, targets, crcs):
            data = f.read(target.numel() * target.element_size())
            if zlib.crc32(data) != crc:
                raise TrajectoryFormatError(f"{where} is corrupted: checksum mismatch in section '{name}'")
            flat = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            target.copy_(flat.view(target.dtype).view(target.shape))
    return store


# ---------------------------------------------------------------------------------- tracker file
TRACKER_MAGIC = b"CXRLADV1"
_TRACKER_HEADER = struct.Struct("<8sIIQ")  # magic, version, crc32 of the JSON, JSON length


def write_tracker_file(path: str | os.PathLike, state: dict) -> None:
    """An advantage tracker's ``state_dict`` as checksummed JSON."""
    data = json.dumps(state).encode()
    _replace_atomically(path, [_TRACKER_HEADER.pack(TRACKER_MAGIC, 1, zlib.crc32(data), len(data)), data])


def read_tracker_file(path: str | os.PathLike) -> dict:
    """The ``state_dict`` stored by :func:`write_tracker_file`, verified."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"advantage tracker file '{path}' does not exist")
    raw = path.read_bytes()
    if len(raw) < _TRACKER_HEADER.size or raw[:8] != TRACKER_MAGIC:
        raise TrajectoryFormatError(f"'{path}' is not a cxrl advantage tracker file (bad magic or truncated header)")
    _, version, crc, length = _TRACKER_HEADER.unpack(raw[:_TRACKER_HEADER.size])
    data = raw[_TRACKER_HEADER.size:]
    if version != 1 or len(data) != length:
        raise TrajectoryFormatError(f"advantage tracker file '{path}' is truncated or of unknown version {version}")
    if zlib.crc32(data) != crc:
        raise TrajectoryFormatError(f"advantage tracker file '{path}' is corrupted: checksum mismatch")
    return json.loads(data)
