"""Typed run configuration: nested dataclasses, YAML files, dotted ``key=value`` overrides.

Every field carries a one-line ``doc`` (written as a comment by :func:`to_yaml`) and, where it
matters, ``choices`` or a ``lo``/``hi`` range. Loading is strict: an unknown key is an error that
names the closest valid key; a wrong type or an out-of-range value is an error naming the field.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml


def opt(default, doc: str, *, choices=None, lo=None, hi=None, lo_open: bool = False):
    """A documented field; mutable defaults (lists/dicts) are copied per instance."""
    meta = {"doc": doc, "choices": choices, "lo": lo, "hi": hi, "lo_open": lo_open}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: copy.deepcopy(d), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ModelConfig:
    path: str = opt("asset:base", "generator: a diffusers-layout directory, 'asset:NAME' (shipped with cxrl) or 'tiny' (random tiny model for tests)")
    tiny_seed: int = opt(0, "seed of the random tiny generator when path is 'tiny'", lo=0)
    dtype: str = opt("float32", "dtype of the frozen weights (the trained ones stay float32)", choices=["float32", "bfloat16", "float16"])
    device: str = opt("auto", "'auto' (CUDA when available, one GPU per rank), 'cpu' or 'cuda'", choices=["auto", "cpu", "cuda"])
    finetune: str = opt("lora", "what is trained in the UNet: LoRA adapters or all weights", choices=["lora", "full"])
    lora_rank: int = opt(4, "LoRA rank (finetune: lora)", lo=1)
    lora_alpha: float = opt(4.0, "LoRA scaling numerator (scale = alpha / rank)", lo=0.0, lo_open=True)
    ace_tokens: int = opt(2, "number of adaptive condition embedding tokens appended to the text context; 0 disables ACE", lo=0)
    gradient_checkpointing: bool = opt(False, "recompute UNet activations in the backward pass to save memory")
    attention: str = opt("auto", "UNet attention backend: 'auto' (per-shape timing on CUDA, SDPA on CPU), 'triton', "
                         "'xformers', 'sdpa', or 'diffusers' (leave the model's own processors)",
                         choices=["auto", "triton", "xformers", "sdpa", "diffusers"])


@dataclass
class SamplingConfig:
    num_steps: int = opt(20, "DDIM steps per rollout", lo=1)
    guidance_scale: float = opt(5.0, "classifier-free guidance scale (1 = no CFG)", lo=0.0)
    eta: float = opt(1.0, "DDIM eta; > 0 makes each step a Gaussian policy", lo=0.0, lo_open=True)
    batch_size: int = opt(4, "images per rollout forward pass on one rank", lo=1)
    samples_per_epoch: int = opt(32, "images sampled per RL epoch, summed over all ranks", lo=1)
    group_size: int = opt(1, "images per prompt in one epoch (the group for group-relative advantages)", lo=1)


REWARD_ENTRY_KEYS = ("name", "weight", "path", "backend", "comparative", "callable", "kwargs", "strict", "dtype")


@dataclass
class RewardsConfig:
    components: list = opt([{"name": "posture"}, {"name": "diagnostic"}, {"name": "consistency"}],
                           "reward entries, each a mapping: name, weight (1), path (null = shipped weights), backend "
                           "(own | xrv | clip), comparative, or callable ('module:fn' / 'file.py:fn') for a custom reward")
    feedback: str = opt("comparative", "'comparative' = RLCF (score minus the frozen anchor's score on the same prompt "
                        "and initial noise); 'direct' = raw scores (the w/o-RLCF ablation)", choices=["comparative", "direct"])
    anchor_cache: str = opt("", "anchor-score cache file (JSON); '' puts it at <output>/anchor_cache.json")
    seed_bank_size: int = opt(4, "initial-noise seeds kept per prompt (the anchor cache hits across epochs)", lo=1)
    overlap: bool = opt(True, "score each rollout chunk on a worker thread (own CUDA stream) while the next chunk is "
                        "sampled; the rewards are identical either way")


@dataclass
class TrainConfig:
    seed: int = opt(0, "global seed; every epoch's randomness is derived from (seed, epoch, rank)", lo=0)
    epochs: int = opt(100, "RL epochs (rollout + update rounds)", lo=1)
    learning_rate: float = opt(3e-4, "AdamW learning rate of the UNet parameters", lo=0.0, lo_open=True)
    ace_learning_rate: float = opt(1e-3, "AdamW learning rate of the ACE tokens", lo=0.0, lo_open=True)
    weight_decay: float = opt(1e-4, "AdamW weight decay", lo=0.0)
    adam_beta1: float = opt(0.9, "AdamW beta1", lo=0.0, hi=1.0)
    adam_beta2: float = opt(0.999, "AdamW beta2", lo=0.0, hi=1.0)
    adam_eps: float = opt(1e-8, "AdamW epsilon", lo=0.0, lo_open=True)
    warmup_steps: int = opt(0, "optimizer steps of linear learning-rate warm-up", lo=0)
    max_grad_norm: float = opt(1.0, "clip the global gradient norm to this; 0 disables clipping", lo=0.0)
    batch_size: int = opt(2, "samples per training minibatch on one rank", lo=1)
    gradient_accumulation: int = opt(1, "sample minibatches accumulated per optimizer step (each already spans its trained timesteps)", lo=1)
    inner_epochs: int = opt(1, "passes of PPO updates over one epoch's stored transitions", lo=1)
    timestep_fraction: float = opt(1.0, "fraction of each trajectory's timesteps that is trained", lo=0.0, hi=1.0, lo_open=True)
    clip_range: float = opt(1e-4, "PPO clip epsilon of the importance ratio", lo=0.0, lo_open=True)
    adv_clip: float = opt(5.0, "advantages are clipped to +-adv_clip", lo=0.0, lo_open=True)
    advantage: str = opt("per_prompt", "advantage normalisation", choices=["per_prompt", "group"])
    advantage_window: int = opt(32, "per_prompt: rewards kept per prompt", lo=1)
    advantage_min_count: int = opt(16, "per_prompt: below this many rewards a prompt uses the batch statistics", lo=1)
    kl_beta: float = opt(0.0, "weight of the KL penalty to the anchor, beta*|mu_theta - mu_anchor|^2/(2 sigma_t^2); 0 disables", lo=0.0)
    ema_decay: float = opt(0.0, "EMA of the trained weights (0 disables; e.g. 0.999)", lo=0.0, hi=1.0)
    mixed_precision: str = opt("auto", "'auto' = bf16 autocast on CUDA, none on CPU; 'no' or 'bf16' force it", choices=["auto", "no", "bf16"])
    deterministic: bool = opt(True, "deterministic algorithms (bitwise-reproducible resume on CPU)")
    max_nonfinite: int = opt(3, "abort after this many consecutive updates with a non-finite loss or gradient", lo=1)
    torch_threads: int = opt(0, "intra-op CPU threads for torch (torch.set_num_threads); 0 leaves torch's default", lo=0)


@dataclass
class DataConfig:
    source: str = opt("phantom", "prompt source: built-in dataset or a text/CSV/JSONL file", choices=["phantom", "iu_xray", "mimic", "file"])
    path: str = opt("", "dataset root (mimic) or prompt file (file: .txt one per line, .csv/.jsonl with a prompt column, optional labels, weight and metadata columns)")
    prompt_column: str = opt("", "file source, .csv/.jsonl: the prompt column ('' = 'prompt', else 'report')")
    weight_column: str = opt("", "file source, .csv/.jsonl: sample prompts in proportion to this column ('' = uniformly)")
    reports_path: str = opt("", "mimic: root of the MIMIC-CXR reports (files/pXX/...); '' writes prompts from the labels")
    split: str = opt("train", "dataset split to draw prompts from", choices=["train", "validate", "test"])
    max_prompts: int = opt(0, "use at most this many distinct prompts (0 = all)", lo=0)


@dataclass
class EvalConfig:
    enabled: bool = opt(False, "after training, sample the base and the tuned generator on held-out phantom-world prompts "
                        "from the same initial noises and score both with the held-out evaluators (never the reward models)")
    split: str = opt("test", "report split of the held-out prompts; must differ from data.split", choices=["train", "validate", "test"])
    num_prompts: int = opt(48, "held-out prompts evaluated (0 = every distinct prompt of eval.split)", lo=0)
    samples_per_prompt: int = opt(4, "samples per prompt (the MS-SSIM protocol uses 4: 6 pairs)", lo=1)
    seed: int = opt(1234, "seed of the prompt choice and the evaluation initial noises (apart from train.seed)", lo=0)
    batch_size: int = opt(16, "images per sampling / scoring batch", lo=1)
    evaluators: str = opt("", "directory with posture/ diagnostic/ consistency/ evaluators ('' = cxrl/assets/evaluators)")
    min_label_prompts: int = opt(3, "a label enters the macro AUROC only with at least this many positive and as many "
                                 "negative held-out prompts (1 = every label with both classes; both are reported)", lo=1)
    bootstrap: int = opt(1000, "bootstrap resamples of the prompts for the tuned-minus-base confidence intervals (0 = none)", lo=0)
    output_subdir: str = opt("eval", "where the evaluation goes, relative to log.output_dir")
    torch_threads: int = opt(0, "intra-op CPU threads for the evaluation (0 = as in training, train.torch_threads); "
                               "it samples with no scorer thread beside it, so it can use more cores than training", lo=0)


@dataclass
class LogConfig:
    output_dir: str = opt("runs/demo", "run directory: checkpoints, metrics.jsonl, plots, resolved config")
    progress: bool = opt(True, "tqdm progress bars")
    tensorboard: str = opt("auto", "'auto' writes TensorBoard events when tensorboard is installed", choices=["auto", "on", "off"])
    sample_every: int = opt(10, "write a sample grid PNG every N epochs (0 disables)", lo=0)
    sample_count: int = opt(8, "images in a sample grid", lo=1)


@dataclass
class CheckpointConfig:
    every: int = opt(1, "write a checkpoint every N epochs (the last epoch always gets one)", lo=1)
    keep: int = opt(3, "complete checkpoints kept on disk (older ones are deleted)", lo=1)


@dataclass
class DistConfig:
    backend: str = opt("auto", "process-group backend under torchrun: 'auto' = nccl on CUDA, gloo on CPU", choices=["auto", "nccl", "gloo"])
    timeout_s: float = opt(600.0, "collective timeout: a stuck rank fails the run instead of hanging it", lo=1.0)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"doc": "generator, fine-tuning mode, ACE"})
    sampling: SamplingConfig = field(default_factory=SamplingConfig, metadata={"doc": "rollouts"})
    rewards: RewardsConfig = field(default_factory=RewardsConfig, metadata={"doc": "reward models and RLCF"})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"doc": "PPO updates and optimizer"})
    data: DataConfig = field(default_factory=DataConfig, metadata={"doc": "prompt source"})
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"doc": "end-of-run evaluation (base vs tuned)"})
    log: LogConfig = field(default_factory=LogConfig, metadata={"doc": "outputs"})
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig, metadata={"doc": "checkpoint and resume"})
    dist: DistConfig = field(default_factory=DistConfig, metadata={"doc": "torchrun data parallelism"})

    def validate(self) -> "Config":
        """Cross-field checks (single fields are checked when they are set)."""
        s, t = self.sampling, self.train
        if s.samples_per_epoch % s.group_size:
            raise ValueError(f"sampling.samples_per_epoch ({s.samples_per_epoch}) must be a multiple of sampling.group_size ({s.group_size})")
        if t.advantage_min_count > t.advantage_window:
            raise ValueError(f"train.advantage_min_count ({t.advantage_min_count}) must be <= train.advantage_window ({t.advantage_window})")
        if t.advantage == "group" and s.group_size < 2:
            raise ValueError("train.advantage 'group' needs sampling.group_size >= 2 (images per prompt per epoch)")
        if self.eval.enabled:
            if self.data.source == "mimic":
                raise ValueError("eval.enabled evaluates on the phantom world's held-out IU X-ray reports with the phantom "
                                 "evaluators; a data.source 'mimic' run needs `cxrl evaluate --data mimic` (set eval.enabled=false)")
            if self.eval.num_prompts == 1:
                raise ValueError("eval.num_prompts must be 0 (every distinct prompt of eval.split) or >= 2")
            if self.data.source in ("phantom", "iu_xray") and self.eval.split == self.data.split:
                raise ValueError(f"eval.split ({self.eval.split!r}) must differ from data.split: the evaluation prompts "
                                 "must be held out from the RL prompts")
        if not self.rewards.components:
            raise ValueError("rewards.components is empty: at least one reward is needed")
        names = []
        for i, entry in enumerate(self.rewards.components):
            where = f"rewards.components[{i}]"
            if not isinstance(entry, dict):
                raise ValueError(f"{where} must be a mapping like {{name: posture, weight: 1.0}}, got {entry!r}")
            unknown = sorted(set(entry) - set(REWARD_ENTRY_KEYS))
            if unknown:
                close = difflib.get_close_matches(unknown[0], REWARD_ENTRY_KEYS, n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise ValueError(f"{where}: unknown key '{unknown[0]}'{hint} (allowed: {', '.join(REWARD_ENTRY_KEYS)})")
            if not isinstance(entry.get("name"), str) or not entry["name"]:
                raise ValueError(f"{where}.name must be a non-empty string")
            weight = entry.get("weight", 1.0)
            if isinstance(weight, bool) or not isinstance(weight, (int, float)):
                raise ValueError(f"{where}.weight must be a number, got {weight!r}")
            names.append(entry["name"])
        if len(set(names)) != len(names):
            raise ValueError(f"rewards.components: reward names must be unique, got {names}")
        return self


# ---------------------------------------------------------------------------------------------
# dict <-> dataclass with validation


def _is_section(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def all_keys(cls=Config, prefix: str = "") -> list[str]:
    """Every dotted key of the configuration, e.g. ``train.learning_rate``."""
    keys = []
    for name, tp in _hints(cls).items():
        keys += all_keys(tp, f"{prefix}{name}.") if _is_section(tp) else [f"{prefix}{name}"]
    return keys


def _unknown_key_error(key: str) -> ValueError:
    close = difflib.get_close_matches(key, all_keys(), n=1, cutoff=0.4)
    if not close:  # a bare leaf name ('learning_rate') still deserves a hint
        leaf = key.rsplit(".", 1)[-1]
        close = [k for k in all_keys() if k.rsplit(".", 1)[-1] == leaf][:1]
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return ValueError(f"unknown config key '{key}'{hint}")


def _check_value(key: str, tp, meta, value):
    """Coerce and validate one leaf value; raises ValueError naming ``key``."""
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads '1e-3' (no dot) as a string; it clearly means the number
            value = float(value)
        except ValueError:
            pass
    base = typing.get_origin(tp) or tp
    if base is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)  # `data.path=2024` parses as an int but means the name
    if base is str and isinstance(value, bool) and {"on", "off"} <= set(meta.get("choices") or ()):
        value = "on" if value else "off"  # YAML 1.1 reads on/off as booleans: `log.tensorboard=off`
    if base is bool and not isinstance(value, bool):
        raise ValueError(f"config field '{key}' must be true/false, got {value!r}")
    if base is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"config field '{key}' must be an integer, got {value!r}")
    if not isinstance(value, base):
        raise ValueError(f"config field '{key}' must be of type {base.__name__}, got {type(value).__name__} {value!r}")
    choices = meta.get("choices")
    if choices and value not in choices:
        raise ValueError(f"config field '{key}' must be one of {choices}, got {value!r}")
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and (value < lo or (meta.get("lo_open") and value == lo)):
        bound = ">" if meta.get("lo_open") else ">="
        raise ValueError(f"config field '{key}' must be {bound} {lo}, got {value!r}")
    if hi is not None and value > hi:
        raise ValueError(f"config field '{key}' must be <= {hi}, got {value!r}")
    return copy.deepcopy(value) if base in (dict, list) else value


def _fill(obj, data: dict, prefix: str = "") -> None:
    if not isinstance(data, dict):
        raise ValueError(f"config section '{prefix.rstrip('.') or '<root>'}' must be a mapping, got {type(data).__name__}")
    hints = _hints(type(obj))
    fields = {f.name: f for f in dataclasses.fields(obj)}
    for name, value in data.items():
        key = f"{prefix}{name}"
        if name not in hints:
            raise _unknown_key_error(key)
        if _is_section(hints[name]):
            _fill(getattr(obj, name), value, key + ".")
        else:
            setattr(obj, name, _check_value(key, hints[name], fields[name].metadata, value))


def from_dict(data: dict | None) -> Config:
    cfg = Config()
    _fill(cfg, data or {})
    return cfg.validate()


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply ``section.field=value`` strings; each value is parsed with ``yaml.safe_load``.

    A mapping-valued field takes one further dotted part (``section.mapping.key=value``); a list
    (``rewards.components``) is replaced whole: ``rewards.components=[{name: posture}]``.
    """
    data = to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override '{item}' is not of the form key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as err:
            raise ValueError(f"override '{key}': value {raw!r} is not valid YAML ({err})") from err
        parts = key.split(".")
        node, cls = data, Config
        for i, part in enumerate(parts):
            hints = _hints(cls) if cls is not None else None
            if hints is not None and part not in hints:
                raise _unknown_key_error(key)
            last = i == len(parts) - 1
            if last:
                node[part] = value
            elif hints is not None and _is_section(hints[part]):
                node, cls = node[part], hints[part]
            elif hints is not None and (typing.get_origin(hints[part]) or hints[part]) is dict:
                node, cls = node[part], None  # free-form mapping: any key below it
                if len(parts) - i != 2:
                    raise ValueError(f"override '{key}': '{'.'.join(parts[:i + 1])}' takes exactly one key below it")
            else:
                raise _unknown_key_error(key)
    return from_dict(data)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """A config from a YAML file (None: the packaged demo config) plus overrides."""
    if path is None:
        text = packaged_config_text("demo.yaml")
        where = "packaged cxrl/configs/demo.yaml"
    else:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file not found: {p}")
        text, where = p.read_text(), str(p)
    data = _read_yaml_with_extends(text, where, Path(path).resolve().parent if path is not None else None, ())
    try:
        cfg = from_dict(data)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from err
    return apply_overrides(cfg, overrides or [])


EXTENDS_KEY = "extends"


def _deep_merge(base: dict, override: dict) -> dict:
    """``override`` on top of ``base``: mappings merge key by key, anything else (lists too) is replaced."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _read_yaml_with_extends(text: str, where: str, directory: Path | None, chain: tuple) -> dict:
    """Parse a config file; a top-level ``extends: FILE`` (relative to the file, or ``packaged:NAME`` for a config
    shipped in cxrl/configs) is loaded first and this file's keys are merged over it (small override files such
    as configs/ablations/*.yaml)."""
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"config {where} is not valid YAML: {err}") from err
    if not isinstance(data, dict) or EXTENDS_KEY not in data:
        return data
    parent = data.pop(EXTENDS_KEY)
    if not isinstance(parent, str) or not parent:
        raise ValueError(f"config {where}: '{EXTENDS_KEY}' must name a YAML file, got {parent!r}")
    if parent.startswith("packaged:"):
        parent_text, parent_where, parent_dir = packaged_config_text(parent[len("packaged:"):]), parent, None
    else:
        parent_path = Path(parent) if Path(parent).is_absolute() or directory is None else directory / parent
        if not parent_path.is_file():
            raise FileNotFoundError(f"config {where}: '{EXTENDS_KEY}: {parent}' not found (looked for {parent_path})")
        parent_text, parent_where, parent_dir = parent_path.read_text(), str(parent_path), parent_path.resolve().parent
    if parent_where in chain or parent_where == where:
        raise ValueError(f"config {where}: '{EXTENDS_KEY}' cycle through {parent_where}")
    base = _read_yaml_with_extends(parent_text, parent_where, parent_dir, chain + (where,))
    if not isinstance(base, dict):
        raise ValueError(f"config {parent_where} (extended by {where}) must be a mapping")
    return _deep_merge(base, data)


def packaged_config_text(name: str) -> str:
    ref = resources.files("cxrl").joinpath("configs", name)
    if not ref.is_file():
        raise FileNotFoundError(f"packaged config cxrl/configs/{name} is missing; reinstall cxrl (`pip install -e .`)")
    return ref.read_text()


def to_yaml(cfg: Config) -> str:
    """YAML with the field docs as comments (what a run writes as its resolved config)."""
    lines = ["# cxrl run configuration (resolved); every field is documented in cxrl/config.py"]
    for sec in dataclasses.fields(cfg):
        lines.append(f"{sec.name}:  # {sec.metadata.get('doc', '')}")
        section = getattr(cfg, sec.name)
        for f in dataclasses.fields(section):
            value = yaml.safe_dump(getattr(section, f.name), default_flow_style=True, width=10**6).strip()
            if value.endswith("\n...") or value.endswith("..."):
                value = value.replace("\n...", "").removesuffix("...").strip()
            lines.append(f"  {f.name}: {value}  # {f.metadata['doc']}")
    return "\n".join(lines) + "\n"
