"""The machinery behind :mod:`cxrl.config`: documented dataclass fields, strict dict <-> dataclass
conversion, dotted ``key=value`` overrides and commented YAML. Nothing here knows a section by name.

A field is declared with :func:`opt` (default, one-line ``doc``, optional ``choices``, ``lo``/``hi``
range and ``renamed`` old values). Loading is strict: an unknown key names the closest valid key, a
wrong type or an out-of-range value names the field, and a value that an older cxrl accepted under
another name says what to rename it to.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import typing
from dataclasses import field
from typing import Any

import yaml


def opt(default, doc: str, *, choices=None, lo=None, hi=None, lo_open: bool = False, renamed: dict | None = None):
    """A documented field; mutable defaults (lists/dicts) are copied per instance. ``renamed`` maps
    values an older cxrl accepted to their current spelling (loading them is an error that says so)."""
    meta = {"doc": doc, "choices": choices, "lo": lo, "hi": hi, "lo_open": lo_open, "renamed": renamed or {}}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: copy.deepcopy(d), metadata=meta)
    return field(default=default, metadata=meta)


def is_section(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def all_keys(cls, prefix: str = "") -> list[str]:
    """Every dotted key below the dataclass ``cls``, e.g. ``train.learning_rate``."""
    keys = []
    for name, tp in hints(cls).items():
        keys += all_keys(tp, f"{prefix}{name}.") if is_section(tp) else [f"{prefix}{name}"]
    return keys


def unknown_key_error(key: str, root) -> ValueError:
    keys = all_keys(root)
    leaf = key.rsplit(".", 1)[-1]
    same_leaf = [k for k in keys if k.rsplit(".", 1)[-1] == leaf]
    if "." not in key and same_leaf:  # a bare field name ('steps' from before sections existed): every section's
        close = same_leaf
    else:
        close = difflib.get_close_matches(key, keys, n=1, cutoff=0.4) or same_leaf[:1]
    hint = f"; did you mean {' or '.join(repr(k) for k in close)}?" if close else ""
    return ValueError(f"unknown config key '{key}'{hint}")


def check_value(key: str, tp, meta, value):
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
    if base is str and isinstance(value, bool):  # YAML 1.1 reads on/off, yes/no as booleans: `log.tensorboard=off`
        spelled = [word for word in (("on", "yes") if value else ("off", "no")) if word in (meta.get("choices") or ())]
        value = spelled[0] if len(spelled) == 1 else value   # `train.mixed_precision=no`
    if base is list and isinstance(value, tuple):
        value = list(value)
    if base is bool and not isinstance(value, bool):
        raise ValueError(f"config field '{key}' must be true/false, got {value!r}")
    if base is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"config field '{key}' must be an integer, got {value!r}")
    if not isinstance(value, base):
        raise ValueError(f"config field '{key}' must be of type {base.__name__}, got {type(value).__name__} {value!r}")
    if base is float and not math.isfinite(value):
        raise ValueError(f"config field '{key}' must be a finite number, got {value!r}")
    renamed = meta.get("renamed") or {}
    if isinstance(value, str) and value in renamed:
        raise ValueError(f"config field '{key}': {value!r} was renamed {renamed[value]!r}; write {key}: {renamed[value]}")
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


def fill(obj, data: dict, root, prefix: str = "") -> None:
    """Set ``obj``'s fields from the mapping ``data`` (recursing into sections), strictly."""
    if not isinstance(data, dict):
        raise ValueError(f"config section '{prefix.rstrip('.') or '<root>'}' must be a mapping, got {type(data).__name__}")
    types = hints(type(obj))
    fields = {f.name: f for f in dataclasses.fields(obj)}
    for name, value in data.items():
        key = f"{prefix}{name}"
        if name not in types:
            raise unknown_key_error(key, root)
        if is_section(types[name]):
            fill(getattr(obj, name), value, root, key + ".")
        else:
            setattr(obj, name, check_value(key, types[name], fields[name].metadata, value))


def section_from_dict(cls, data: dict | None, prefix: str = ""):
    """One section (any documented dataclass) from a mapping, e.g. a model's saved provenance."""
    obj = cls()
    fill(obj, data or {}, cls, prefix)
    return obj


def parse_override(item: str) -> tuple[str, Any]:
    """``key=value`` -> (key, value parsed as YAML); an empty value is the empty string."""
    if "=" not in item:
        raise ValueError(f"override '{item}' is not of the form key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ValueError(f"override '{key}': value {raw!r} is not valid YAML ({err})") from err
    return key, value


def apply_overrides_to_dict(data: dict, root, overrides: list[str]) -> dict:
    """``data`` (a ``dataclasses.asdict`` of ``root``) with ``section.field=value`` strings applied.

    A mapping-valued field takes one further dotted part (``section.mapping.key=value``); a list is
    replaced whole: ``rewards.components=[{name: posture}]``."""
    for item in overrides:
        key, value = parse_override(item)
        parts = key.split(".")
        node, cls = data, root
        for i, part in enumerate(parts):
            types = hints(cls) if cls is not None else None
            if types is not None and part not in types:
                raise unknown_key_error(key, root)
            if i == len(parts) - 1:
                node[part] = value
            elif types is not None and is_section(types[part]):
                node, cls = node[part], types[part]
            elif types is not None and (typing.get_origin(types[part]) or types[part]) is dict:
                node, cls = node[part], None  # free-form mapping: any key below it
                if len(parts) - i != 2:
                    raise ValueError(f"override '{key}': '{'.'.join(parts[:i + 1])}' takes exactly one key below it")
            else:
                raise unknown_key_error(key, root)
    return data


def yaml_value(value) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    if text.endswith("\n...") or text.endswith("..."):
        text = text.replace("\n...", "").removesuffix("...").strip()
    return text


def to_yaml(cfg, header: str) -> str:
    """YAML with the field docs as comments (what a run writes as its resolved config)."""
    lines = [header]
    for sec in dataclasses.fields(cfg):
        lines.append(f"{sec.name}:  # {sec.metadata.get('doc', '')}")
        section = getattr(cfg, sec.name)
        for f in dataclasses.fields(section):
            lines.append(f"  {f.name}: {yaml_value(getattr(section, f.name))}  # {f.metadata['doc']}")
    return "\n".join(lines) + "\n"
