"""cxrl's one typed configuration: nested dataclasses, YAML files, dotted ``key=value`` overrides.

Every command reads this one :class:`Config` (``cxrl train`` its RL sections, ``cxrl evaluate`` ``eval`` and
``sampling``, ``cxrl pretrain`` ``pretrain``, ``cxrl train-reward`` ``reward_training``) through
:func:`load_config`, and every component receives its section. Each field carries a one-line ``doc``
(written as a comment by :func:`to_yaml`) and, where it matters, ``choices`` or a range (see
:mod:`cxrl.config.schema`). A config file may start with ``extends: FILE`` (relative to the file, or
``packaged:NAME`` for a config shipped in ``cxrl/configs``); its keys are merged over the parent's.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from cxrl.config import schema
from cxrl.config.sections import (DATA_SOURCES, EVAL_SOURCES, GROUP_ADVANTAGES, REWARD_ENTRY_KEYS, SPLITS, CheckpointConfig, DataConfig,
                                  DistConfig, EvalConfig, LogConfig, ModelConfig, MonitorConfig, PretrainConfig,
                                  RewardsConfig, RewardTrainingConfig, SamplingConfig, TrainConfig)

__all__ = [
    "Config", "CheckpointConfig", "DataConfig", "DistConfig", "EvalConfig", "LogConfig", "ModelConfig", "MonitorConfig", "PretrainConfig",
    "RewardTrainingConfig", "RewardsConfig", "SamplingConfig", "TrainConfig", "DATA_SOURCES", "EVAL_SOURCES",
    "EVALUATOR_KINDS", "REWARD_ENTRY_KEYS", "SPLITS", "all_keys", "apply_overrides", "from_dict", "load_config",
    "packaged_config_text", "phantom_evaluators_refused", "section_from_dict", "to_dict", "to_yaml", "validate_section",
]


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"doc": "generator, fine-tuning mode, ACE"})
    sampling: SamplingConfig = field(default_factory=SamplingConfig, metadata={"doc": "rollouts and evaluation samples"})
    rewards: RewardsConfig = field(default_factory=RewardsConfig, metadata={"doc": "reward models and RLCF"})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"doc": "PPO updates and optimizer"})
    data: DataConfig = field(default_factory=DataConfig, metadata={"doc": "prompt source"})
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"doc": "held-out evaluation (base vs tuned)"})
    monitor: MonitorConfig = field(default_factory=MonitorConfig, metadata={"doc": "reward-hacking monitor during training"})
    log: LogConfig = field(default_factory=LogConfig, metadata={"doc": "outputs"})
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig, metadata={"doc": "checkpoint and resume"})
    dist: DistConfig = field(default_factory=DistConfig, metadata={"doc": "torchrun data parallelism"})
    pretrain: PretrainConfig = field(default_factory=PretrainConfig, metadata={"doc": "cxrl pretrain: the demo base generator"})
    reward_training: RewardTrainingConfig = field(default_factory=RewardTrainingConfig,
                                                  metadata={"doc": "cxrl train-reward: the project's own reward models"})

    def validate(self) -> "Config":
        """Cross-field checks (single fields are checked when they are set)."""
        s, t = self.sampling, self.train
        if s.samples_per_epoch % s.group_size:
            raise ValueError(f"sampling.samples_per_epoch ({s.samples_per_epoch}) must be a multiple of sampling.group_size ({s.group_size})")
        if t.advantage_min_count > t.advantage_window:
            raise ValueError(f"train.advantage_min_count ({t.advantage_min_count}) must be <= train.advantage_window ({t.advantage_window})")
        if t.advantage in GROUP_ADVANTAGES and s.group_size < 2:
            raise ValueError(f"train.advantage {t.advantage!r} needs sampling.group_size >= 2 (images per prompt per epoch)")
        if t.ema_decay >= 1.0:
            raise ValueError(f"train.ema_decay must be < 1 (0 = no EMA; at 1 the policy would stay the generator it "
                             f"started from), got {t.ema_decay}")
        if self.eval.enabled:
            _validate_evaluation(self.eval, self.data)
        if self.monitor.every and self.data.source in ("phantom", "iuxray") and self.monitor.split == self.data.split:
            raise ValueError(f"monitor.split ({self.monitor.split!r}) must differ from data.split: the probe prompts "
                             "must be held out from the RL prompts")
        _validate_reward_entries(self.rewards.components)
        _validate_findings("data.exclude_findings", self.data.exclude_findings)
        if self.train.rollout_workers > 1 and self.rewards.overlap:
            raise ValueError(f"train.rollout_workers={self.train.rollout_workers} with rewards.overlap: the scoring thread "
                             "takes the rollout chunks in order, one at a time; turn one of them off (rollout_workers=0 "
                             "or rewards.overlap=false)")
        for section in (self.pretrain, self.reward_training):
            _SECTION_CHECKS[type(section)](section)
        return self


EVALUATOR_KINDS = ("posture", "diagnostic", "consistency")


def phantom_evaluators_refused(kind: str, where: str) -> ValueError:
    """The one-line error for a MIMIC evaluation that would be judged by the phantom world's evaluators."""
    return ValueError(
        f"eval.source 'mimic': the {kind} evaluator would be the phantom world's ({where}), trained on renders, not "
        f"MIMIC-CXR; train MIMIC evaluators on the other half of the reports (`cxrl train-reward {kind} --data mimic "
        f"--mimic-root ROOT --reports-root REPORTS --report-subset evaluator --out DIR/{kind}` for each of "
        f"{', '.join(EVALUATOR_KINDS)}) and set eval.evaluators=DIR (cxrl evaluate --evaluators DIR)")


def _validate_evaluation(e: EvalConfig, d: DataConfig) -> None:
    """An end-of-run evaluation (``eval.enabled``) that can run: held-out prompts, and for MIMIC its root and
    MIMIC-trained evaluators (checked here so that a run fails before training, not after)."""
    if e.num_prompts == 1:
        raise ValueError("eval.num_prompts must be 0 (every distinct prompt of eval.split) or >= 2")
    iu_reports = ("phantom", "iuxray")   # the phantom world renders the IU X-ray reports: one prompt set
    same_reports = (d.source in iu_reports and e.source in iu_reports) or d.source == e.source == "mimic"
    if same_reports and e.split == d.split:
        raise ValueError(f"eval.split ({e.split!r}) must differ from data.split: the evaluation prompts "
                         "must be held out from the RL prompts")
    if d.source == "mimic" and e.source != "mimic":
        raise ValueError(f"data.source 'mimic' with eval.source {e.source!r}: a MIMIC run is evaluated on MIMIC's held-out "
                         "reports by MIMIC-trained evaluators (eval.source=mimic, eval.evaluators=DIR), or not at the end "
                         "of the run (eval.enabled=false; later `cxrl evaluate --data mimic`)")
    if e.source == "mimic":
        if not d.path:
            raise ValueError("eval.source 'mimic' reads the MIMIC-CXR-JPG root from data.path, which is empty")
        missing = [kind for kind in EVALUATOR_KINDS if kind not in e.evaluator_paths]
        if missing and not e.evaluators:
            raise phantom_evaluators_refused(missing[0], "cxrl/assets/evaluators, the default of an empty eval.evaluators")


def _validate_reward_entries(components: list) -> None:
    if not components:
        raise ValueError("rewards.components is empty: at least one reward is needed")
    names = []
    for i, entry in enumerate(components):
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
        path = entry.get("path")
        if isinstance(path, list):
            if len(path) < 2 or not all(p is None or (isinstance(p, str) and p) for p in path):
                raise ValueError(f"{where}.path: a list names the directories of an ensemble (2 or more; null = the "
                                 f"shipped weights), got {path!r}")
            if entry.get("callable") or entry.get("backend", "own") != "own":
                raise ValueError(f"{where}.path: ensembles are of the project's own reward models (backend own, "
                                 "no callable)")
        elif path is not None and not (isinstance(path, str) and path):
            raise ValueError(f"{where}.path must be a directory (string), a list of them (an ensemble) or null, "
                             f"got {path!r}")
        names.append(entry["name"])
    if len(set(names)) != len(names):
        raise ValueError(f"rewards.components: reward names must be unique, got {names}")


def _validate_findings(key: str, names) -> None:
    """A list of distinct CheXpert label names (a misspelt one would silently exclude nothing)."""
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"config field '{key}' must be a list of CheXpert label names, got {names!r}")
    if not names:
        return
    from cxrl.data.labels import CHEXPERT_LABELS   # (imports torch: only when there is something to check)
    for name in names:
        if name not in CHEXPERT_LABELS:
            close = difflib.get_close_matches(name, CHEXPERT_LABELS, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ValueError(f"{key}: {name!r} is not a CheXpert label{hint} (labels: {', '.join(CHEXPERT_LABELS)})")
    if len(set(names)) != len(names):
        raise ValueError(f"{key}: labels must be distinct, got {names}")


def _positive_ints(key: str, values, min_len: int) -> None:
    if len(values) < min_len or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
        raise ValueError(f"config field '{key}' must be a list of >= {min_len} positive integers, got {values!r}")


def _validate_pretrain(p: PretrainConfig) -> None:
    _positive_ints("pretrain.block_out_channels", p.block_out_channels, min_len=2)
    if p.warmup_steps >= p.steps:
        raise ValueError(f"config field 'pretrain.warmup_steps' must be < pretrain.steps ({p.steps}), got {p.warmup_steps}")
    if p.cond_dropout >= 1.0:
        raise ValueError(f"config field 'pretrain.cond_dropout' must be < 1, got {p.cond_dropout}")
    if p.ema_decay >= 1.0:
        raise ValueError(f"config field 'pretrain.ema_decay' must be < 1 (0 = no EMA), got {p.ema_decay}")


def all_keys(cls=Config, prefix: str = "") -> list[str]:
    """Every dotted key of the configuration, e.g. ``train.learning_rate``."""
    return schema.all_keys(cls, prefix)


def from_dict(data: dict | None) -> Config:
    cfg = Config()
    schema.fill(cfg, data or {}, Config)
    return cfg.validate()


def section_from_dict(cls, data: dict | None, prefix: str = ""):
    """One section from a mapping (e.g. ``section_from_dict(PretrainConfig, provenance["config"])``)."""
    section = schema.section_from_dict(cls, data, prefix)
    _SECTION_CHECKS.get(cls, lambda s: None)(section)
    return section


_SECTION_CHECKS = {PretrainConfig: _validate_pretrain,
                   RewardTrainingConfig: lambda r: _positive_ints("reward_training.widths", r.widths, min_len=1)}


def validate_section(section, name: str):
    """Check every field of a section built in code (``PretrainConfig(steps=...)``) as loading would;
    returns the section. ``name`` is its key in :class:`Config` (for the messages)."""
    schema.fill(section, dataclasses.asdict(section), type(section), f"{name}.")
    _SECTION_CHECKS.get(type(section), lambda s: None)(section)
    return section


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply ``section.field=value`` strings (values parsed as YAML) and re-validate; see
    :func:`cxrl.config.schema.apply_overrides_to_dict`."""
    return from_dict(schema.apply_overrides_to_dict(to_dict(cfg), Config, overrides))


PACKAGED_PREFIX = "packaged:"
EXTENDS_KEY = "extends"


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """A config from a YAML file (None: the packaged demo config; ``packaged:NAME`` any config shipped in
    ``cxrl/configs``) plus overrides."""
    if path is None or str(path).startswith(PACKAGED_PREFIX):
        name = "demo.yaml" if path is None else str(path)[len(PACKAGED_PREFIX):]
        text, where, directory = packaged_config_text(name), f"packaged cxrl/configs/{name}", None
    else:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file not found: {p}")
        text, where, directory = p.read_text(), str(p), p.resolve().parent
    data = _read_yaml_with_extends(text, where, directory, ())
    try:
        cfg = from_dict(data)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from err
    return apply_overrides(cfg, overrides or [])


def _deep_merge(base: dict, override: dict) -> dict:
    """``override`` on top of ``base``: mappings merge key by key, anything else (lists too) is replaced."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _read_yaml_with_extends(text: str, where: str, directory: Path | None, chain: tuple) -> dict:
    """Parse a config file; a top-level ``extends: FILE`` is loaded first and this file's keys are merged over it
    (small override files such as configs/ablations/*.yaml)."""
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"config {where} is not valid YAML: {err}") from err
    if not isinstance(data, dict) or EXTENDS_KEY not in data:
        return data
    parent = data.pop(EXTENDS_KEY)
    if not isinstance(parent, str) or not parent:
        raise ValueError(f"config {where}: '{EXTENDS_KEY}' must name a YAML file, got {parent!r}")
    if parent.startswith(PACKAGED_PREFIX):
        parent_text, parent_where, parent_dir = packaged_config_text(parent[len(PACKAGED_PREFIX):]), parent, None
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
    ref = resources.files("cxrl").joinpath("configs", *name.split("/"))
    if not ref.is_file():
        raise FileNotFoundError(f"packaged config cxrl/configs/{name} is missing; reinstall cxrl (`pip install -e .`)")
    return ref.read_text()


def to_yaml(cfg: Config) -> str:
    """YAML with the field docs as comments (what a run writes as its resolved config)."""
    return schema.to_yaml(cfg, "# cxrl configuration (resolved); every field is documented in cxrl/config/sections.py")
