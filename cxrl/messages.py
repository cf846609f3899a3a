"""One way to emit messages: the standard ``logging`` tree under ``"cxrl"``.

Every module logs to ``logging.getLogger(__name__)``. A library user sees warnings and errors through
Python's defaults and can route everything as usual; the ``cxrl`` command calls :func:`show_on_stderr`,
which prints INFO and above as ``cxrl: <message>`` (``cxrl: warning: ...`` / ``cxrl: error: ...``). A run
directory keeps its warnings in ``warnings.log`` (:func:`warnings_file`). What a command *returns* — a
results table, the paths it wrote — is its output, printed to stdout, not a message.
"""
from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path

ROOT = "cxrl"
_PREFIX = {logging.WARNING: "warning: ", logging.ERROR: "error: ", logging.CRITICAL: "error: "}


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"cxrl: {_PREFIX.get(record.levelno, '')}{record.getMessage()}"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at each record (pytest and notebooks replace it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def show_on_stderr(level: int = logging.INFO) -> None:
    """Print cxrl's messages of ``level`` and above on stderr (idempotent)."""
    logger = logging.getLogger(ROOT)
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(_Format())
        logger.addHandler(handler)
    logger.setLevel(level)


@contextlib.contextmanager
def warnings_file(path: str | Path):
    """Also append cxrl's warnings and errors to ``path`` while the block runs (a run's warnings.log)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8", delay=True)   # no empty file when nothing is said
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger(ROOT)
    logger.addHandler(handler)
    try:
        yield path
    finally:
        logger.removeHandler(handler)
        handler.close()
