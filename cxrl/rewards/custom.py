"""Custom rewards (issue #10): a Python callable or a :class:`RewardModel` subclass named in a config.

Config entry ``callable: "package.module:function"`` or ``"path/to/file.py:function"``. The callable has
the reward signature

    fn(images [B, C, H, W] float in [0, 1] on the device, prompts: list[str], metadata: list[dict])
        -> FloatTensor [B]            (or a tuple (FloatTensor [B], info: dict))

A class (subclass of RewardModel) named the same way is instantiated with the entry's ``kwargs``.
Loading a file executes it — a custom reward is code the user names explicitly, nothing else is run.
Every failure is a :class:`~cxrl.rewards.base.RewardError` (a ValueError) naming the reward: a module, file or
attribute that does not exist, code that raises while importing or scoring (with the file and line), an
output of the wrong type, shape, dtype or device; non-finite values raise too when ``strict=True``, otherwise
the RewardSuite reports them (reward + prompt) and excludes the sample from the update.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Callable

import torch

from cxrl.rewards.base import RewardError, RewardModel, code_location, file_digest, reward_code_error, source_file


class FunctionReward(RewardModel):
    """Wrap a plain reward function; the last ``info`` dict it returned is kept in ``last_info``."""

    def __init__(self, fn: Callable, name: str | None = None, comparative: bool = True, strict: bool = False):
        if not callable(fn):
            raise RewardError(f"custom reward {name!r}: {fn!r} is not callable")
        super().__init__(name or getattr(fn, "__name__", "custom"), comparative)
        self.fn = fn
        self.strict = strict
        self.last_info: dict = {}

    def fingerprint(self) -> str:
        """The function's qualified name and the bytes of the file it is defined in (an edit is a new reward)."""
        fn = self.fn
        where = f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', type(fn).__qualname__)}"
        return hashlib.sha256(f"{where}|{file_digest(source_file(fn))}".encode()).hexdigest()

    def score(self, images, prompts, metadata) -> torch.Tensor:
        try:
            out = self.fn(images, prompts, metadata)
        except RewardError:
            raise
        except Exception as err:   # the user's code: one line naming the reward, file and line (--debug: traceback)
            raise reward_code_error(self.name, err, source_file(self.fn)) from err
        if isinstance(out, tuple):
            if len(out) != 2 or not isinstance(out[1], dict):
                raise RewardError(f"reward '{self.name}' returned a tuple; expected (FloatTensor [B], info dict)")
            out, self.last_info = out
        return out


def _resolve(spec: str):
    if not isinstance(spec, str) or ":" not in spec:
        raise RewardError(f"custom reward: callable must be 'module:function' or 'path/to/file.py:function', got {spec!r}")
    target, attr = spec.rsplit(":", 1)
    if not attr.isidentifier():
        raise RewardError(f"custom reward {spec!r}: {attr!r} is not a Python identifier")
    if target.endswith(".py") or "/" in target or "\\" in target:
        path = Path(target).expanduser()
        if not path.is_file():
            where = "" if path.is_absolute() else f" (relative paths are resolved against the current directory {Path.cwd()})"
            raise FileNotFoundError(f"custom reward {spec!r}: file {path} does not exist{where}")
        mod_name = f"cxrl_custom_reward_{abs(hash(str(path.resolve())))}"
        module_spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[mod_name] = module   # as `import` would: dataclasses, pickling and typing look modules up here
        try:
            module_spec.loader.exec_module(module)
        except Exception as err:
            sys.modules.pop(mod_name, None)
            raise _import_error(spec, err, str(path.resolve())) from err
        except BaseException:
            sys.modules.pop(mod_name, None)
            raise
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as err:
            if err.name != target and not target.startswith(f"{err.name}."):   # the module itself imports something missing
                raise _import_error(spec, err, None) from err
            raise RewardError(f"custom reward {spec!r}: no module named {target!r} on the Python path (sys.path); "
                              "name a module you can import, or a file: path/to/file.py:function") from err
        except Exception as err:
            raise _import_error(spec, err, None) from err
    if not hasattr(module, attr):
        raise RewardError(f"custom reward {spec!r}: {getattr(module, '__file__', None) or target} has no attribute {attr!r}")
    return getattr(module, attr)


def _import_error(spec: str, err: Exception, prefer_file: str | None) -> RewardError:
    return RewardError(f"custom reward {spec!r}: importing it raised {type(err).__name__}: {err} "
                       f"(at {code_location(err, prefer_file)})")


def load_custom_reward(spec: str, name: str | None = None, comparative: bool | None = None, strict: bool = False,
                       kwargs: dict | None = None) -> RewardModel:
    """A RewardModel from a config entry naming a callable or a RewardModel subclass.

    ``comparative`` None keeps the class's default (functions: True, i.e. compared with the anchor)."""
    obj = _resolve(spec)
    label = name or spec.rsplit(":", 1)[1]
    if inspect.isclass(obj):
        if not issubclass(obj, RewardModel):
            raise RewardError(f"custom reward {spec!r}: class {obj.__name__} is not a subclass of cxrl.rewards.RewardModel")
        try:
            model = obj(**(kwargs or {}))
        except Exception as err:
            raise RewardError(f"custom reward {spec!r}: {obj.__name__}(**kwargs) raised {type(err).__name__}: {err} "
                              f"(at {code_location(err, source_file(obj.__init__))})") from err
        model.name = label if name else (model.name if model.name != "reward" else label)
        if comparative is not None:
            model.comparative = bool(comparative)
        return model
    if kwargs:
        raise RewardError(f"custom reward {spec!r}: kwargs are only for RewardModel classes, {label} is a function")
    return FunctionReward(obj, name=label, comparative=True if comparative is None else comparative, strict=strict)
