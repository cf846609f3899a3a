"""``PhantomCXR``: phantoms paired with real IU X-ray reports, so that prompt, labels and image agree."""
from __future__ import annotations

import numpy as np
import torch

from cxrl.data.iuxray import IUXrayReports
from cxrl.data.phantom.posture import sample_posture
from cxrl.data.phantom.render import render_phantom


class PhantomCXR(torch.utils.data.Dataset):
    """Item ``i`` pairs report ``i % len(reports)`` with a phantom rendered from that report's labels.

    ``length``: number of items (default: one per report; larger values cycle the reports with fresh
    seeds, for training on tens of thousands of images). ``posture_strength`` 0 renders every phantom
    in the canonical pose. Everything is a pure function of (seed, index): two datasets built alike
    return identical items.

    """
    def __init__(self, split: str = "train", resolution: int = 64, seed: int = 0, posture_strength: float = 0.5,
                 reports=None, length: int | None = None, prompt_source: str = "impression"):
        if reports is None:
            reports = IUXrayReports(split=split, prompt_source=prompt_source)
        if len(reports) == 0:
            raise ValueError(f"PhantomCXR: the '{split}' report split is empty")
        if length is not None and length < 1:
            raise ValueError(f"length: must be positive, got {length}")
        sample_posture(np.random.default_rng(0), posture_strength)  # validates the strength now
        self.reports, self.split = reports, split
        self.resolution, self.seed, self.posture_strength = int(resolution), int(seed), float(posture_strength)
        self.length = int(length) if length is not None else len(reports)

    def __len__(self) -> int:
        return self.length

    def item_seed(self, index: int) -> int:
        return (self.seed * 1_000_003 + index) & 0x7FFFFFFF

    def prompt_entry(self, index: int) -> dict:
        """``{"prompt", "labels"}`` of item ``index`` without rendering it."""
        report_index = index % len(self.reports)
        return {"prompt": self.reports.prompts[report_index], "labels": self.reports.label_tensor(report_index)}

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(f"PhantomCXR index {index} out of range [0, {self.length})")
        report_index = index % len(self.reports)
        report_id = self.reports.reports[report_index].id
        labels = self.reports.label_tensor(report_index)
        seed = self.item_seed(index)
        psi = sample_posture(np.random.default_rng([seed, 7]), self.posture_strength)
        image, _ = render_phantom(labels, posture=psi, seed=seed, resolution=self.resolution)
        return {"id": f"phantom-{self.split}-{index}-iu{report_id}", "prompt": self.reports.prompts[report_index],
                "labels": labels, "image": torch.from_numpy(image).unsqueeze(0), "posture": torch.from_numpy(psi),
                "report": self.reports.reports[report_index].text}
