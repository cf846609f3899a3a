"""The trained part of the generator: UNet parameters (LoRA adapters or all weights), the ACE tokens and,
with ``model.train_text_encoder``, the text encoder, plus the frozen anchor they are compared with (a copy of
the UNet for full fine-tuning; the same UNet with its adapters disabled for LoRA; a copy of the text encoder
when that is trained)."""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field

import torch


@dataclass
class Policy:
    gen: object
    ace: torch.nn.Module | None
    unet_params: list
    ace_params: list
    anchor_unet: torch.nn.Module | None   # a frozen copy for full fine-tuning; None = LoRA disabled
    text_params: list = field(default_factory=list)              # the text encoder's, when it is trained
    anchor_text_encoder: torch.nn.Module | None = None           # its frozen copy (None: the encoder is not trained)

    @property
    def params(self) -> list:
        return self.unet_params + self.ace_params + self.text_params

    @property
    def trains_text_encoder(self) -> bool:
        return self.anchor_text_encoder is not None

    def named_trainable(self) -> dict[str, torch.Tensor]:
        """Every trained tensor by a stable name (what a checkpoint stores)."""
        out = {f"unet.{n}": p for n, p in self.gen.unet.named_parameters() if p.requires_grad}
        if self.ace is not None:
            out.update({f"ace.{n}": p for n, p in self.ace.named_parameters()})
        if self.trains_text_encoder:
            out.update({f"text_encoder.{n}": p for n, p in self.gen.text_encoder.named_parameters()})
        return out

    def anchor_generator(self):
        """The generator with the anchor's UNet (for LoRA: the policy's, to be used under :meth:`lora_disabled`)
        and, when the text encoder is trained, the anchor's frozen copy of it."""
        if not self.trains_text_encoder:
            return dataclasses.replace(self.gen, unet=self.anchor_unet) if self.anchor_unet is not None else self.gen
        return dataclasses.replace(self.gen, unet=self.anchor_unet if self.anchor_unet is not None else self.gen.unet,
                                   text_encoder=self.anchor_text_encoder)

    @contextlib.contextmanager
    def lora_disabled(self):
        """While the block runs, the policy's UNet computes the anchor (LoRA adapters off); a no-op for full
        fine-tuning, whose anchor is a separate UNet."""
        unet = self.gen.unet
        if self.anchor_unet is not None or not hasattr(unet, "disable_adapters"):
            yield
            return
        unet.disable_adapters()
        try:
            yield
        finally:
            unet.enable_adapters()
