"""Run outputs: JSONL metrics, TensorBoard (when installed), progress bars, reward curves.

Only rank 0 writes; other ranks get a logger whose methods do nothing. Messages (info, warnings) go
through :mod:`cxrl.messages`; sample grids through :func:`cxrl.eval.grids.save_grid`.
"""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import torch
from matplotlib.figure import Figure  # no pyplot: a file is drawn without touching the user's backend
from tqdm.auto import tqdm

log = logging.getLogger(__name__)


def _tensorboard_writer(log_dir: Path, mode: str):
    if mode == "off":
        return None
    try:  # optional: the [tensorboard] extra
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        if mode == "on":
            raise RuntimeError(f"log.tensorboard is 'on' but tensorboard is not installed ({err}); "
                               "`pip install tensorboard` or set log.tensorboard=auto") from err
        return None
    return SummaryWriter(log_dir=str(log_dir))


class MetricsLogger:
    """Appends one JSON object per epoch to ``metrics.jsonl``; mirrors scalars to TensorBoard."""

    def __init__(self, output_dir: str | Path, enabled: bool = True, tensorboard: str = "auto", progress: bool = True):
        self.enabled = enabled
        self.progress_enabled = progress and enabled
        self.dir = Path(output_dir)
        self.path = self.dir / "metrics.jsonl"
        self._tb = None
        if enabled:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._tb = _tensorboard_writer(self.dir / "tensorboard", tensorboard)

    def truncate_after(self, epoch: int) -> None:
        """On resume, keep the records of epochs ``<= epoch`` only (the later ones are re-run; ``-1`` keeps none).
        A line that is not a JSON record — the torn last line of a run killed mid-write — is dropped with a
        warning, so the file is whole again. The file is replaced atomically."""
        if not self.enabled or not self.path.is_file():
            return
        kept = []
        for n, line in enumerate(self.path.read_text(errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            record_epoch = _epoch_of(line)
            if record_epoch is None:
                log.warning("%s:%d is not a complete JSON record (a write cut short?); dropped", self.path, n)
            elif record_epoch <= epoch:
                kept.append(line)
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, self.path)

    def log_probe(self, epochs_trained: int, metrics: dict) -> None:
        """A monitor probe as its own record: ``epoch`` is the last epoch trained before it (-1 for the baseline)."""
        if metrics:
            self.log(epochs_trained - 1, metrics, step=epochs_trained)

    def log(self, epoch: int, metrics: dict, step: int | None = None) -> None:
        if not self.enabled:
            return
        record = {"epoch": epoch, **{k: _plain(v) for k, v in metrics.items()}}
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "epoch":
                    self._tb.add_scalar(k, v, epoch if step is None else step)
            self._tb.flush()

    def progress(self, total: int, desc: str):
        return tqdm(total=total, desc=desc, disable=not self.progress_enabled, leave=False, dynamic_ncols=True)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _epoch_of(line: str) -> int | None:
    """The epoch of one metrics line, or None when the line is not a record with an integer epoch."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    epoch = record.get("epoch") if isinstance(record, dict) else None
    return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None


def _plain(v):
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu()
        return v.item() if v.numel() == 1 else v.tolist()
    return v


def read_metrics(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"metrics file not found: {path}")
    records = []
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except ValueError as err:
                raise ValueError(f"{path}:{n}: not a JSON record ({err})") from err
    return records


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over the last ``window`` points (fewer at the start)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_reward_curves(metrics_path: str | Path, out_png: str | Path, smoothing: int = 5) -> Path:
    """One panel per reward component (``reward/<name>/mean``) and the combined reward against epochs trained: the
    raw per-epoch means faintly, their ``smoothing``-epoch moving average on top, and — where the reward-hacking
    monitor ran — the reward model's score of the probe images on the same axis (``probe/<name>/reward``) and the
    held-out evaluator's score of them on a second axis (``probe/<name>``)."""
    records = read_metrics(metrics_path)
    keys = sorted({k for r in records for k in r if k.startswith("reward/") and k.endswith("/mean")})
    if not keys:
        raise ValueError(f"{metrics_path} has no 'reward/*/mean' metrics to plot")
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig = Figure(figsize=(4.5 * cols, 3.2 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, key in zip(axes.flat, keys):
        name = key.removeprefix("reward/").removesuffix("/mean")
        pts = [(r["epoch"] + 1, r[key]) for r in records if isinstance(r.get(key), (int, float))]
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        ax.plot(xs, ys, color="tab:blue", alpha=0.3, marker=".", linewidth=0.8, label="per epoch")
        ax.plot(xs, moving_average(ys, smoothing), color="tab:blue", linewidth=2, label=f"{smoothing}-epoch mean")
        on_probe = [(r["probe/epochs_trained"], r[f"probe/{name}/reward"]) for r in records if f"probe/{name}/reward" in r]
        if on_probe:
            ax.plot([p[0] for p in on_probe], [p[1] for p in on_probe], color="tab:blue", linestyle="--", marker="s",
                    label="reward model, probe")
        probe = [(r["probe/epochs_trained"], r[f"probe/{name}"]) for r in records if f"probe/{name}" in r]
        if probe:
            twin = ax.twinx()
            twin.plot([p[0] for p in probe], [p[1] for p in probe], color="tab:orange", marker="o",
                      label="held-out probe")
            twin.set_ylabel("held-out probe", color="tab:orange")
        ax.set_title(f"{name} (training reward)")
        ax.set_xlabel("epochs trained")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=100)
    return out_png
