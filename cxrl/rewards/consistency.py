"""Multimodal consistency reward s_cons: cosine similarity of image and report embeddings of a dual encoder.

Backends
- :class:`DualEncoder`: the project's own small dual encoder (ConvEncoder image side; a tiny transformer
  over the token ids of the *generator's* CLIP-format tokenizer on the text side), trained contrastively
  with symmetric InfoNCE (``cxrl train-reward consistency``). Saved as model.safetensors + config.json
  with the tokenizer in ``tokenizer/`` beside them.
- :class:`CLIPDirEncoder`: any CLIP-style model saved by transformers in a local directory
  (``CLIPModel`` + tokenizer + optional preprocessor_config.json), e.g. a CXR-CLIP conversion. Images are
  preprocessed in torch on the device: gray -> 3 channels, resize to the vision tower's size, normalise
  with the processor's mean/std (CLIP's defaults when the directory has no preprocessor config).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoTokenizer, CLIPModel

from cxrl.rewards.base import RewardModel, prepare_cxr, to_grayscale
from cxrl.rewards.nets import ConvEncoder, load_state_strict, read_model_dir, save_model_dir

CLIP_DEFAULT_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_DEFAULT_STD = (0.26862954, 0.26130258, 0.27577711)
TOKENIZER_DIR = "tokenizer"


def load_tokenizer(tokenizer_or_dir):
    """A transformers tokenizer object as is, or one loaded from a local directory (no hub access)."""
    if not isinstance(tokenizer_or_dir, (str, Path)):
        if not callable(tokenizer_or_dir):
            raise TypeError(f"consistency tokenizer: expected a transformers tokenizer or a directory, got {type(tokenizer_or_dir).__name__}")
        return tokenizer_or_dir
    path = Path(tokenizer_or_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"consistency tokenizer: directory {path} does not exist (a CLIP-format tokenizer saved "
                                f"with save_pretrained, e.g. the generator's tokenizer/ folder)")
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


class TextEncoder(nn.Module):
    """Token ids -> embedding: token + position embeddings, a small pre-norm transformer, masked mean pool."""

    def __init__(self, vocab_size: int, max_length: int = 77, width: int = 96, layers: int = 2, heads: int = 4):
        super().__init__()
        self.token = nn.Embedding(vocab_size, width)
        self.position = nn.Parameter(torch.randn(max_length, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, heads, dim_feedforward=2 * width, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.max_length = max_length

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.token(ids) + self.position[: ids.shape[1]]
        h = self.transformer(h, src_key_padding_mask=~mask.bool())
        h = self.norm(h)
        m = mask.to(h.dtype).unsqueeze(-1)
        return (h * m).sum(1) / m.sum(1).clamp(min=1)


class DualEncoder(nn.Module):
    """Own image-report dual encoder; ``embed_*`` return L2-normalised embeddings."""

    def __init__(self, vocab_size: int, max_length: int = 77, embed_dim: int = 64, widths=(16, 32, 64, 128),
                 image_feature_dim: int = 128, text_width: int = 96, text_layers: int = 2, text_heads: int = 4,
                 resolution: int = 64):
        super().__init__()
        self.image_encoder = ConvEncoder(widths, image_feature_dim)
        self.image_proj = nn.Linear(image_feature_dim, embed_dim)
        self.text_encoder = TextEncoder(vocab_size, max_length, text_width, text_layers, text_heads)
        self.text_proj = nn.Linear(text_width, embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.resolution = resolution
        self.max_length = max_length
        self.arch = {"vocab_size": vocab_size, "max_length": max_length, "embed_dim": embed_dim, "widths": list(widths),
                     "image_feature_dim": image_feature_dim, "text_width": text_width, "text_layers": text_layers,
                     "text_heads": text_heads, "resolution": resolution}
        self.tokenizer = None  # set by attach_tokenizer; not a module, not saved in the state dict

    def attach_tokenizer(self, tokenizer) -> "DualEncoder":
        tok = load_tokenizer(tokenizer)
        if len(tok) > self.arch["vocab_size"]:
            raise ValueError(f"consistency: tokenizer has {len(tok)} tokens but the text encoder's vocab_size is {self.arch['vocab_size']}")
        self.tokenizer = tok
        return self

    def tokenize(self, prompts: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
        if self.tokenizer is None:
            raise RuntimeError("consistency DualEncoder: no tokenizer attached (attach_tokenizer(tokenizer_or_dir))")
        # pad to the longest prompt only: padding is masked out, so the result equals max_length padding
        enc = self.tokenizer(list(prompts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return enc["input_ids"].to(device), enc["attention_mask"].to(device)

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_proj(self.image_encoder(x)).float(), dim=-1)

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_proj(self.text_encoder(ids, mask)).float(), dim=-1)

    def embed_images(self, images: torch.Tensor, name: str, dtype) -> torch.Tensor:
        x = prepare_cxr(images, self.resolution, name, dtype).to(self.logit_scale.device)
        return self.encode_image(x)

    def embed_texts(self, prompts: list[str]) -> torch.Tensor:
        return self.encode_text(*self.tokenize(prompts, self.logit_scale.device))


def info_nce_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor,
                  same_text: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE. ``same_text`` [B, B] marks pairs whose reports are identical: they are not
    negatives of each other (many phantom reports repeat "no acute cardiopulmonary process")."""
    logits = logit_scale.exp().clamp(max=100) * image_emb @ text_emb.t()
    if same_text is not None:
        eye = torch.eye(len(logits), dtype=torch.bool, device=logits.device)
        logits = logits.masked_fill(same_text & ~eye, float("-inf"))
    target = torch.arange(len(logits), device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


class CLIPDirEncoder(nn.Module):
    """A transformers ``CLIPModel`` from a local directory, with torch-side preprocessing."""

    def __init__(self, path, tokenizer=None):
        super().__init__()
        root = Path(path)
        if not (root / "config.json").is_file():
            raise FileNotFoundError(f"consistency CLIP backend: {root / 'config.json'} not found; expected a CLIP-style model "
                                    f"saved with transformers' save_pretrained (config.json + weights + tokenizer files)")
        self.model = CLIPModel.from_pretrained(str(root), local_files_only=True).eval()
        tok_source = tokenizer if tokenizer is not None else (root / TOKENIZER_DIR if (root / TOKENIZER_DIR).is_dir() else root)
        self.tokenizer = load_tokenizer(tok_source)
        mean, std = CLIP_DEFAULT_MEAN, CLIP_DEFAULT_STD
        pre = root / "preprocessor_config.json"
        if pre.is_file():
            cfg = json.loads(pre.read_text())
            mean, std = cfg.get("image_mean", mean), cfg.get("image_std", std)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.resolution = int(self.model.config.vision_config.image_size)
        self.channels = int(self.model.config.vision_config.num_channels)
        self.max_length = int(self.model.config.text_config.max_position_embeddings)

    @staticmethod
    def _pooled(out) -> torch.Tensor:
        # transformers < 5 returns the projected tensor; 5.x returns an output whose pooler_output is projected
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def embed_images(self, images: torch.Tensor, name: str, dtype) -> torch.Tensor:
        x = to_grayscale(images, name).clamp(0, 1).to(dtype)
        x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bicubic", align_corners=False,
                          antialias=max(x.shape[-2:]) > self.resolution).clamp(0, 1)
        x = x.expand(-1, self.channels, -1, -1)
        x = ((x - self.mean[:, : self.channels].to(x)) / self.std[:, : self.channels].to(x)).to(self.mean.device)
        return F.normalize(self._pooled(self.model.get_image_features(pixel_values=x)).float(), dim=-1)

    def embed_texts(self, prompts: list[str]) -> torch.Tensor:
        enc = self.tokenizer(list(prompts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        out = self.model.get_text_features(input_ids=enc["input_ids"].to(self.mean.device),
                                           attention_mask=enc["attention_mask"].to(self.mean.device))
        return F.normalize(self._pooled(out).float(), dim=-1)


class ConsistencyReward(RewardModel):
    """s_cons = cos(image embedding, report embedding). Comparative by default."""

    name = "consistency"
    comparative = True

    def __init__(self, encoder: nn.Module, name: str | None = None, comparative: bool | None = None,
                 dtype: torch.dtype = torch.float32):
        super().__init__(name, comparative)
        self.encoder = encoder.eval().requires_grad_(False)
        self.dtype = dtype
        self.encoder.to(dtype)

    def to(self, device, dtype: torch.dtype | None = None) -> "ConsistencyReward":
        if dtype is not None:
            self.dtype = dtype
            self.encoder.to(dtype)
        return super().to(device)

    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.encoder.embed_images(images.to(self.device), self.name, self.dtype)

    def text_embeddings(self, prompts: list[str]) -> torch.Tensor:
        with torch.no_grad():
            return self.encoder.embed_texts(list(prompts))

    def similarity_matrix(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """[N_images, N_prompts] cosine similarities (for retrieval metrics)."""
        return self.image_embeddings(images) @ self.text_embeddings(prompts).t()

    def score(self, images, prompts, metadata) -> torch.Tensor:
        sim = (self.image_embeddings(images) * self.text_embeddings(prompts)).sum(dim=1)
        return sim.to(images.device)

    def save(self, out_dir, extra: dict | None = None) -> Path:
        if not isinstance(self.encoder, DualEncoder):
            raise ValueError(f"reward '{self.name}': only the own DualEncoder backend is saved by cxrl")
        out = save_model_dir(self.encoder, {"kind": "consistency", "arch": self.encoder.arch, **(extra or {})}, out_dir)
        self.encoder.tokenizer.save_pretrained(str(out / TOKENIZER_DIR))
        return out

    @classmethod
    def load(cls, path, tokenizer=None, **kwargs) -> "ConsistencyReward":
        """Own dual encoder from ``path`` (its saved tokenizer unless ``tokenizer`` is given)."""
        config, state = read_model_dir(path, "consistency")
        net = DualEncoder(**config["arch"])
        load_state_strict(net, state, path)
        tok = tokenizer if tokenizer is not None else Path(path) / TOKENIZER_DIR
        return cls(net.attach_tokenizer(tok), **kwargs)

    @classmethod
    def from_clip_dir(cls, path, tokenizer=None, **kwargs) -> "ConsistencyReward":
        return cls(CLIPDirEncoder(path, tokenizer), **kwargs)
