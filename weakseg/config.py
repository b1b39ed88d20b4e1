"""Frozen config dataclasses from text: ``key=value`` overrides and JSON dicts (nested dataclasses, tuples)."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Sequence
from typing import Any

from weakseg.errors import ConfigError


def apply_overrides(cfg: Any, overrides: Sequence[str]) -> Any:
    """``cfg`` with ``key=value`` entries applied (values parsed by the field's type; JSON for tuples).

    ``("epochs=2", "lr=0.01", "lr_milestones=[5, 10]", "jitter.hue=0")``; an unknown key lists the valid ones.
    """
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} is not KEY=VALUE")
        cfg = _set(cfg, key.strip().split("."), text.strip(), item)
    return cfg


def _set(cfg: Any, path: list[str], text: str, item: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    if path[0] not in fields:
        raise ConfigError(f"{item!r}: {type(cfg).__name__} has no option {path[0]!r}; valid: {', '.join(fields)}")
    hints = typing.get_type_hints(type(cfg))
    current = getattr(cfg, path[0])
    if len(path) > 1:
        if not dataclasses.is_dataclass(current):
            raise ConfigError(f"{item!r}: {path[0]!r} has no sub-options")
        value = _set(current, path[1:], text, item)
    else:
        value = _parse(hints[path[0]], text, item)
    return dataclasses.replace(cfg, **{path[0]: value})


def _parse(tp: Any, text: str, item: str) -> Any:
    try:
        origin = typing.get_origin(tp)
        if origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if text.lower() in ("none", "null"):
                return None
            return _parse(args[0], text, item)
        if tp is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return text.lower() in ("true", "1", "yes")
        if tp in (int, float, str):
            return tp(text)
        if origin is tuple and typing.get_args(tp) == (str, Ellipsis) and not text.startswith("["):
            return tuple(t.strip() for t in text.split(",") if t.strip())  # a,b,c
        if origin is tuple or dataclasses.is_dataclass(tp):
            return _coerce(tp, json.loads(text))
        return tp(text)
    except (ValueError, TypeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{item!r}: cannot read the value as {tp} ({e})") from None


def _coerce(tp: Any, value: Any) -> Any:
    """JSON value → ``tp`` (tuples, nested tuples and dataclasses rebuilt from lists / dicts)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value is None else _coerce(args[0], value)
    if dataclasses.is_dataclass(tp):
        return config_from_dict(tp, value)
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v) for v in value)
        return tuple(_coerce(a, v) for a, v in zip(args, value, strict=True))
    if tp is float:
        return float(value)
    return value


def config_from_dict(cls: type, d: dict[str, Any]) -> Any:
    """A config dataclass from its JSON dict; missing keys take their defaults, unknown keys are an error."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"{cls.__name__} has no options {unknown}; valid: {', '.join(sorted(names))}")
    return cls(**{k: _coerce(hints[k], v) for k, v in d.items()})
