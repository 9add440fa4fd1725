"""One helper turns a config group (a Hydra node, a dict, a checkpoint's stored config) into its frozen dataclass.

Why one helper: every group (data, tokenizer, train, logger ...) used to be read key by key where it was used,
each reader with its own `.get(name, default)` (a second copy of the default) and its own checks, or none.
Now a group's dataclass is the one source of its defaults and checks: `typed_group` rejects unknown keys,
converts each value to its field's type (an error names the option: `train.lr=fast: must be a number`), and
the dataclass' `__post_init__` checks ranges and choices. Nested dataclass fields (`data.augment`) are groups
of their own.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from .config import UserError, check_bool, check_float, check_int

T = TypeVar("T")

__all__ = ["typed_group", "plain"]


def plain(values: Any) -> Any:
    """A Hydra/OmegaConf node as plain dicts and lists (resolved); anything else as it is."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover - omegaconf comes with hydra-core, a dependency
        return values
    if isinstance(values, (DictConfig, ListConfig)):
        return OmegaConf.to_container(values, resolve=True)
    return values


def typed_group(cls: type[T], values: Mapping[str, Any] | None, prefix: str,
                error: type[Exception] = UserError) -> T:
    """``values`` as a ``cls`` (a dataclass): unknown keys and values of the wrong type are an error naming
    ``prefix.key``; keys left out take the dataclass' defaults (a required one left out is an error too).
    A flat group, whose options are top-level (generate's and evaluate's ``seed=1``), has the prefix ``":NAME"``:
    its options are named as they are written and the unknown ones as "unknown NAME option(s)".

    ``error``: the exception raised (a `UserError`, one line for the user, by default; a stored config read
    from a checkpoint raises ValueError, which its loader reports as a damaged file)."""
    try:
        return _typed_group(cls, values, prefix)
    except UserError as exc:
        if error is UserError:
            raise
        raise error(str(exc)) from None


def _typed_group(cls: type[T], values: Mapping[str, Any] | None, prefix: str) -> T:
    values = plain(values)
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        raise UserError(f"{prefix}: expected a group of options, got {values!r}")
    known = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    flat = prefix.startswith(":")
    option = (lambda key: str(key)) if flat else (lambda key: f"{prefix}.{key}")
    unknown = sorted(set(values) - set(known))
    if unknown:
        what = f"unknown {prefix[1:]} option(s): " if flat else "unknown option(s) "
        raise UserError(f"{what}{', '.join(option(k) for k in unknown)} (known: {', '.join(sorted(known))})")
    hints = typing.get_type_hints(cls)
    typed = {name: _coerce(option(name), hints[name], value) for name, value in values.items()}
    missing = [name for name, f in known.items() if name not in typed
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise UserError(f"missing option(s) {', '.join(option(k) for k in missing)}")
    return cls(**typed)


def _coerce(option: str, hint: Any, value: Any) -> Any:
    """``value`` as type ``hint`` (int, float, bool, str, a dataclass, tuple[X, ...], a union with None); a union
    of several other types is passed on for the dataclass to check."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        optional = type(None) in args
        others = [a for a in args if a is not type(None)]
        if value is None:
            if optional:
                return None
            raise UserError(f"{option}: give a value (null is not allowed)")
        return _coerce(option, others[0], value) if len(others) == 1 else value
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return _typed_group(hint, value, option)
    if hint is bool:
        return check_bool(option, value)
    if hint is int:
        return check_int(option, value)
    if hint is float:
        return check_float(option, value)
    if hint is str:
        if isinstance(value, bool):  # a yes/no word where a choice is expected (render=false): the group decides
            return value
        if value is None or isinstance(value, (list, tuple, dict, Mapping)):
            raise UserError(f"{option}={value!r}: expected a single value")
        return str(value)
    if origin is tuple:
        if value is None or isinstance(value, (str, bytes, Mapping)) or not hasattr(value, "__iter__"):
            raise UserError(f"{option}={value!r}: expected a list")
        items = list(value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(f"{option}[{i}]", args[0], item) for i, item in enumerate(items))
        if len(items) != len(args):
            raise UserError(f"{option}={value!r}: expected a list of {len(args)} values")
        return tuple(_coerce(f"{option}[{i}]", a, item) for i, (a, item) in enumerate(zip(args, items)))
    return value
