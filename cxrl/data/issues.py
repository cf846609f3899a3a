"""Bad-data bookkeeping shared by the readers: skipped items are counted and listed, never dropped
silently, and ``strict`` mode turns the first one into an error."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


class DataError(ValueError):
    """A bad data item met in strict mode (or something no mode can skip)."""


@dataclass
class DataIssues:
    """Problems met while indexing or reading a dataset, grouped by kind.

    ``kinds`` used by the readers: ``missing_image``, ``corrupt_image``, ``missing_ids``, ``bad_ids``,
    ``path_escapes_root``, ``empty_report``, ``missing_report``, ``missing_labels``, ``bad_label``.
    """

    source: str
    strict: bool = False
    max_listed: int = 50  # per kind: the summary stays readable on a 377k-image dataset
    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, kind: str, where: str, detail: str = "") -> None:
        message = f"{where}: {detail}" if detail else where
        if self.strict:
            raise DataError(f"{self.source}: {kind}: {message} (strict mode; pass strict=False to skip and count)")
        self.counts[kind] += 1
        listed = self.examples.setdefault(kind, [])
        if len(listed) < self.max_listed:
            listed.append(message)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        if not self.counts:
            return f"{self.source}: no data problems found"
        lines = [f"{self.source}: {self.total} data problem(s)"]
        for kind, count in sorted(self.counts.items()):
            lines.append(f"  {kind}: {count}")
            for message in self.examples.get(kind, []):
                lines.append(f"    - {message}")
            hidden = count - len(self.examples.get(kind, []))
            if hidden > 0:
                lines.append(f"    ... and {hidden} more")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {"source": self.source, "counts": dict(self.counts), "examples": {k: list(v) for k, v in self.examples.items()}}
