"""The base generator's training set: phantoms rendered once, kept in memory as uint8.

Each image is a :class:`cxrl.data.PhantomCXR` item — a phantom drawn from the labels of a real IU X-ray
report of the requested split, in a random posture — paired with that report's prompt. Rendering costs
~1–5 ms an image, so tens of thousands are rendered up front and the training loop only indexes
tensors. Prompts are stored once each (many reports share "No acute cardiopulmonary abnormality.") and
images point at them by index, so the text side can be tokenized once per distinct prompt.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm import tqdm

from cxrl.data.iuxray import IUXrayReports
from cxrl.data.phantom.dataset import PhantomCXR


@dataclass
class PhantomTrainingSet:
    images: torch.Tensor         # uint8 [N, 1, H, W]; 0 = black, 255 = white (film brightness)
    prompt_index: torch.Tensor   # long [N], index into ``prompts``
    prompts: list                # distinct prompt strings
    split: str = "train"

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() != 4 or self.images.shape[1] != 1:
            raise ValueError(f"images: expected uint8 [N, 1, H, W], got {self.images.dtype} {list(self.images.shape)}")
        if self.prompt_index.shape != (self.images.shape[0],):
            raise ValueError(f"prompt_index: expected shape [{self.images.shape[0]}], got {list(self.prompt_index.shape)}")
        if not self.prompts:
            raise ValueError("prompts: the training set has no prompts")
        if len(self.prompt_index) and (int(self.prompt_index.min()) < 0 or int(self.prompt_index.max()) >= len(self.prompts)):
            raise ValueError(f"prompt_index: values must lie in [0, {len(self.prompts)})")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def resolution(self) -> int:
        return int(self.images.shape[-1])

    def pixels(self, index: torch.Tensor) -> torch.Tensor:
        """Images ``index`` as float32 in [-1, 1] (the pixel generator's diffusion space)."""
        return self.images[index].float().div_(127.5).sub_(1.0)

    def prompts_of(self, index) -> list:
        return [self.prompts[int(i)] for i in torch.as_tensor(index).reshape(-1)]


def load_reports(split: str, prompt_source: str = "impression"):
    """IU X-ray reports of one split (``cxrl.data.IUXrayReports``; parsed once per process)."""
    return IUXrayReports(split=split, prompt_source=prompt_source)


def render_training_set(reports, num_images: int, resolution: int, seed: int, posture_strength: float,
                        split: str = "train", progress: bool = False) -> PhantomTrainingSet:
    """Render ``num_images`` phantoms cycling over ``reports`` (each report's labels drive its phantom).

    A pure function of its arguments: the phantom world seeds every item from ``(seed, index)``.
    """
    if not isinstance(num_images, int) or isinstance(num_images, bool) or num_images < 1:
        raise ValueError(f"num_images: expected a positive int, got {num_images!r}")
    dataset = PhantomCXR(split=split, resolution=resolution, seed=seed, posture_strength=posture_strength,
                         reports=reports, length=num_images)
    images = torch.empty(num_images, 1, resolution, resolution, dtype=torch.uint8)
    prompt_index = torch.empty(num_images, dtype=torch.long)
    prompt_ids: dict[str, int] = {}
    indices = range(num_images)
    if progress:
        indices = tqdm(indices, desc="render phantoms", unit="img", mininterval=2.0)
    for i in indices:
        item = dataset[i]
        images[i] = item["image"].mul(255.0).round_().clamp_(0, 255).to(torch.uint8)
        prompt_index[i] = prompt_ids.setdefault(item["prompt"], len(prompt_ids))
    return PhantomTrainingSet(images=images, prompt_index=prompt_index, prompts=list(prompt_ids), split=split)


def report_texts(reports) -> list:
    """Full report texts (all sections): the tokenizer's training corpus."""
    return [report.text for report in reports.reports if report.text.strip()]
