"""Which run a run directory holds, so that two runs are never mixed in one directory.

A run records itself in ``<dir>/run.json`` when it starts: a run id (uuid), the creation time and the sha256 of
the ``config.yaml`` it wrote; every checkpoint carries the run id too, and each ``--resume`` adds an entry
(time, epoch, config sha256). A directory *holds a run* when it has ``run.json``, ``metrics.jsonl`` or
``checkpoints/``. A new run refuses such a directory when the user named it (``--output`` or
``log.output_dir=...``): ``--resume DIR`` continues it, ``--overwrite`` deletes the files a run writes
(:func:`run_files`, nothing else) and starts over. A directory that comes from a config file's default
(``runs/demo`` in the demo) is not refused but replaced by the next free ``<dir>-2``, ``<dir>-3``, ... so
that ``cxrl train`` works twice in a row.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

RUN_RECORD = "run.json"
RUN_MARKERS = (RUN_RECORD, "metrics.jsonl", "checkpoints")
# what a run writes directly in its directory (besides the anchor cache and the evaluation folder, which are
# configurable and added by run_files); never anything else
RUN_WRITES = (RUN_RECORD, "config.yaml", "metrics.jsonl", "checkpoints", "warnings.log", "reward_curves.png",
              "tensorboard", "final", "final_policy.json", "work")
SAMPLE_GRIDS = "samples_epoch*.png"


def run_markers(path: str | Path) -> list[str]:
    """The markers of a run present in ``path`` (empty: it holds no run)."""
    path = Path(path)
    return [name for name in RUN_MARKERS if (path / name).exists()]


def check_can_create(path: str | Path, flag: str) -> None:
    """A clear error when ``path`` cannot be a directory: it is a file, or one of its parents is."""
    path = Path(path)
    for candidate in (path, *path.parents):
        if candidate.exists() and not candidate.is_dir():
            what = "is a regular file" if candidate == path else f"is under {candidate}, which is a regular file"
            raise NotADirectoryError(f"{flag} {path}: cannot be a run directory: it {what}")


def next_free_run_dir(default: str | Path) -> Path:
    """``default`` if it holds no run, else the first of ``<default>-2``, ``<default>-3``, ... that holds none."""
    default = Path(default)
    candidate, n = default, 1
    while run_markers(candidate):
        n += 1
        candidate = default.with_name(f"{default.name}-{n}")
    return candidate


def refuse_existing_run(path: str | Path, flag: str) -> None:
    markers = run_markers(path)
    if markers:
        raise FileExistsError(f"{flag} {path} already holds a run ({', '.join(markers)}): continue it with "
                              f"--resume {path}, or start over with --overwrite (deletes that run's files)")


def run_files(path: str | Path, anchor_cache: str = "", eval_subdir: str = "eval") -> list[Path]:
    """The files and folders in ``path`` that a run wrote (and ``--overwrite`` deletes), sorted."""
    path = Path(path)
    names = list(RUN_WRITES) + [eval_subdir] if eval_subdir else list(RUN_WRITES)
    found = [path / name for name in names if (path / name).exists()]
    found += sorted(path.glob(SAMPLE_GRIDS))
    if not anchor_cache:   # the default cache lives in the run directory (one file per rank under torchrun)
        found += sorted(path.glob("anchor_cache.json")) + sorted(path.glob("anchor_cache.rank*.json"))
    return sorted(set(found))


def clear_run(path: str | Path, anchor_cache: str = "", eval_subdir: str = "eval") -> list[Path]:
    """Delete what :func:`run_files` lists; returns it. Other files in ``path`` are left alone."""
    removed = run_files(path, anchor_cache, eval_subdir)
    for p in removed:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
    return removed


def config_sha256(config_text: str) -> str:
    return hashlib.sha256(config_text.encode()).hexdigest()


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def new_run_record(config_text: str) -> dict:
    return {"run_id": uuid.uuid4().hex, "created": _now(), "config_sha256": config_sha256(config_text), "resumes": []}


def read_run_record(path: str | Path) -> dict | None:
    """``<path>/run.json`` or None when there is none (a run started by an older cxrl)."""
    file = Path(path) / RUN_RECORD
    if not file.is_file():
        return None
    try:
        record = json.loads(file.read_text())
    except ValueError as err:
        raise ValueError(f"{file} is not valid JSON ({err}); it records which run the directory holds") from err
    if not isinstance(record, dict) or not isinstance(record.get("run_id"), str):
        raise ValueError(f"{file} has no 'run_id'; it records which run the directory holds")
    return record


def note_resume(record: dict, epoch: int, config_text: str) -> dict:
    record.setdefault("resumes", []).append({"at": _now(), "epoch": int(epoch), "config_sha256": config_sha256(config_text)})
    return record


def write_run_files(path: str | Path, record: dict, config_text: str) -> None:
    """``config.yaml`` and ``run.json``, each replaced atomically (a kill leaves the old or the new file)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for name, text in (("config.yaml", config_text), (RUN_RECORD, json.dumps(record, indent=1) + "\n")):
        tmp = path / f".{name}.tmp-{os.getpid()}"
        tmp.write_text(text)
        os.replace(tmp, path / name)
