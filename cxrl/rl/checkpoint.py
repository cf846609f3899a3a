"""Atomic, checksummed checkpoints: safetensors for tensors, JSON for small state, never pickle.

Layout of one checkpoint (``<run>/checkpoints/epoch_000012/``)::

    <group>.safetensors   tensors of one state group (weights, ace, optimizer, rng, tracker, ...)
    <group>.json          the JSON part of that group; tensors appear as {"__tensor__": key}
    manifest.json         written last: epoch, and sha256 + size of every other file

A checkpoint is staged in a ``.tmp-*`` directory and renamed into place, so a crash leaves either
the old set of checkpoints or the new one. :func:`latest_checkpoint` verifies manifests and skips a
corrupt or partial checkpoint with a message, falling back to the previous one.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
PREFIX = "epoch_"
log = logging.getLogger(__name__)


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (a full disk, a write limit, permissions); nothing partial is left."""


# ---------------------------------------------------------------------------------------------
# nested state <-> (JSON, flat tensors)


def flatten_state(obj, tensors: dict[str, torch.Tensor] | None = None, prefix: str = "t"):
    """Split a nested state (dicts, lists, tuples, tensors, numbers, strings) into JSON + tensors.

    Non-string dict keys (the optimizer's int parameter ids) and tuples are tagged so that
    :func:`unflatten_state` rebuilds exactly the same structure.
    """
    tensors = {} if tensors is None else tensors
    if isinstance(obj, torch.Tensor):
        key = f"{prefix}"
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": key}, tensors
    if isinstance(obj, np.ndarray):
        return flatten_state(torch.from_numpy(np.ascontiguousarray(obj)), tensors, prefix)
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: flatten_state(v, tensors, f"{prefix}.{k}")[0] for k, v in obj.items()}, tensors
        items = [[_plain_key(k), flatten_state(v, tensors, f"{prefix}.{k}")[0]] for k, v in obj.items()]
        return {"__items__": items}, tensors
    if isinstance(obj, tuple):
        return {"__tuple__": [flatten_state(v, tensors, f"{prefix}.{i}")[0] for i, v in enumerate(obj)]}, tensors
    if isinstance(obj, list):
        return [flatten_state(v, tensors, f"{prefix}.{i}")[0] for i, v in enumerate(obj)], tensors
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item(), tensors
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj, tensors
    raise TypeError(f"checkpoint state at '{prefix}' has unsupported type {type(obj).__name__}")


def _plain_key(key):
    if isinstance(key, (bool, int, float, str)) or key is None:
        return key
    raise TypeError(f"checkpoint state: dict key {key!r} of type {type(key).__name__} is not supported")


def unflatten_state(obj, tensors: dict[str, torch.Tensor]):
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            if obj["__tensor__"] not in tensors:
                raise ValueError(f"checkpoint tensor '{obj['__tensor__']}' is missing")
            return tensors[obj["__tensor__"]]
        if set(obj) == {"__items__"}:
            return {k: unflatten_state(v, tensors) for k, v in obj["__items__"]}
        if set(obj) == {"__tuple__"}:
            return tuple(unflatten_state(v, tensors) for v in obj["__tuple__"])
        return {k: unflatten_state(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [unflatten_state(v, tensors) for v in obj]
    return obj


# ---------------------------------------------------------------------------------------------
# files


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories; the rename is still atomic
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoint_dir(root: str | Path, epoch: int) -> Path:
    return Path(root) / f"{PREFIX}{epoch:06d}"


def save_checkpoint(root: str | Path, epoch: int, groups: dict[str, object], extra_files: dict[str, str] | None = None) -> Path:
    """Write ``groups`` (name -> nested state) as checkpoint ``epoch`` under ``root``, atomically."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = checkpoint_dir(root, epoch)
    staging = root / f".tmp-{final.name}-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        _write_staged(staging, epoch, groups, extra_files)
    except (OSError, SafetensorError) as err:   # safetensors reports a full disk as its own error type
        shutil.rmtree(staging, ignore_errors=True)
        raise CheckpointWriteError(f"cannot write checkpoint {final} ({err}); is the disk full? "
                                   "The previous checkpoints are intact") from err
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if final.exists():  # re-saving an epoch (e.g. after a resume): move the old one aside first
        trash = root / f".old-{final.name}-{os.getpid()}"
        os.replace(final, trash)
        os.replace(staging, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(staging, final)
    _fsync_dir(root)
    return final


def _write_staged(staging: Path, epoch: int, groups: dict[str, object], extra_files: dict[str, str] | None) -> None:
    files: dict[str, dict] = {}
    for name, state in groups.items():
        if not name.replace("_", "").isalnum():
            raise ValueError(f"checkpoint group name '{name}' must be alphanumeric/underscore")
        json_part, tensors = flatten_state(state, prefix=name)
        if tensors:
            save_file(tensors, str(staging / f"{name}.safetensors"))
        (staging / f"{name}.json").write_text(json.dumps(json_part))
    for fname, text in (extra_files or {}).items():
        (staging / fname).write_text(text)
    for path in sorted(staging.iterdir()):
        _fsync_file(path)
        files[path.name] = {"sha256": _sha256(path), "bytes": path.stat().st_size}
    manifest = {"format": FORMAT_VERSION, "epoch": epoch, "groups": sorted(groups), "files": files}
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=1))
    _fsync_file(staging / MANIFEST)
    _fsync_dir(staging)


def verify_checkpoint(path: str | Path) -> tuple[bool, str]:
    """``(ok, reason)``: manifest present and parseable, every listed file present with its checksum."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        return False, "no manifest.json (partial write)"
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
        groups = manifest["groups"]
    except (ValueError, KeyError, TypeError) as err:
        return False, f"unreadable manifest.json ({err})"
    if manifest.get("format") != FORMAT_VERSION:
        return False, f"format {manifest.get('format')!r}, expected {FORMAT_VERSION}"
    for group in groups:
        if f"{group}.json" not in files:
            return False, f"group '{group}' has no {group}.json in the manifest"
    for fname, meta in files.items():
        fpath = path / fname
        if not fpath.is_file():
            return False, f"missing file {fname}"
        if fpath.stat().st_size != meta["bytes"]:
            return False, f"{fname} has {fpath.stat().st_size} bytes, manifest says {meta['bytes']}"
        if _sha256(fpath) != meta["sha256"]:
            return False, f"{fname} checksum mismatch"
    return True, "ok"


def list_checkpoints(root: str | Path) -> list[Path]:
    """Checkpoint directories (complete or not), newest epoch first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit():
            found.append((int(p.name[len(PREFIX):]), p))
    return [p for _, p in sorted(found, reverse=True)]


def latest_checkpoint(root: str | Path, quiet: bool = False) -> Path | None:
    """The newest checkpoint that verifies; bad ones are skipped with a warning (unless ``quiet``: the other
    ranks of a data-parallel run, which read the same directory as rank 0)."""
    for path in list_checkpoints(root):
        ok, reason = verify_checkpoint(path)
        if ok:
            return path
        if not quiet:
            log.warning("skipping checkpoint %s: %s; falling back to the previous one", path, reason)
    return None


def load_checkpoint(path: str | Path) -> tuple[int, dict[str, object]]:
    """``(epoch, groups)`` of a verified checkpoint; raises ValueError naming the path if it is bad."""
    path = Path(path)
    ok, reason = verify_checkpoint(path)
    if not ok:
        raise ValueError(f"checkpoint {path} is not usable: {reason}")
    manifest = json.loads((path / MANIFEST).read_text())
    groups = {}
    for name in manifest["groups"]:
        tensor_file = path / f"{name}.safetensors"
        tensors = load_file(str(tensor_file)) if tensor_file.is_file() else {}
        groups[name] = unflatten_state(json.loads((path / f"{name}.json").read_text()), tensors)
    return int(manifest["epoch"]), groups


def prune_checkpoints(root: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` complete checkpoints and any stale staging directories."""
    root = Path(root)
    removed = []
    complete = [p for p in list_checkpoints(root) if (p / MANIFEST).is_file()]
    for p in complete[keep:]:
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    for p in root.glob(".tmp-*") if root.is_dir() else []:
        shutil.rmtree(p, ignore_errors=True)
    return removed
