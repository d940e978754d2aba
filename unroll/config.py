"""Typed configuration: nested frozen dataclasses with ``key.sub=value`` overrides.

A config is a tree of frozen dataclasses. ``override(config, ["smoothness.alpha=10"])`` returns
a new tree; an unknown key or a value that does not parse as the field's type raises
``ConfigError`` naming the key and listing the valid ones.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any

from unroll.errors import InputError


class ConfigError(InputError):
    """A configuration key or value is invalid."""


def flat_keys(config) -> dict[str, Any]:
    """All leaf keys of ``config`` as ``{"a.b": value}``."""
    out = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            out.update({f"{field.name}.{k}": v for k, v in flat_keys(value).items()})
        else:
            out[field.name] = value
    return out


def _parse(text: str, kind, key: str):
    """Parse ``text`` as the type ``kind`` of field ``key``."""
    origin = typing.get_origin(kind)
    try:
        if kind is bool:
            lowered = text.strip().lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return lowered in ("true", "1", "yes")
        if kind in (int, float, str):
            return kind(text)
        if origin is tuple:
            (item,) = {a for a in typing.get_args(kind) if a is not Ellipsis}
            return tuple(item(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise ConfigError(f"bad value {text!r} for {key}: expected {getattr(kind, '__name__', kind)}") from None
    raise ConfigError(f"{key} cannot be set from the command line")


def _field_types(config) -> dict[str, Any]:
    return typing.get_type_hints(type(config))


def _check_choice(config, name: str, value, key: str) -> None:
    choices = type(config).__dataclass_fields__[name].metadata.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"bad value {value!r} for {key}: choose one of {', '.join(map(str, choices))}")


def _replace(config, path: list[str], value: str, key: str):
    """Replace the leaf at ``path``; raises KeyError when the path names no leaf."""
    if path[0] not in {f.name for f in dataclasses.fields(config)}:
        raise KeyError(key)
    current = getattr(config, path[0])
    if len(path) > 1:
        if not dataclasses.is_dataclass(current):
            raise KeyError(key)
        return dataclasses.replace(config, **{path[0]: _replace(current, path[1:], value, key)})
    if dataclasses.is_dataclass(current):
        raise ConfigError(f"{key} is a section; set one of its keys: {', '.join(sorted(flat_keys(current)))}")
    parsed = value if not isinstance(value, str) else _parse(value, _field_types(config)[path[0]], key)
    _check_choice(config, path[0], parsed, key)
    return dataclasses.replace(config, **{path[0]: parsed})


def override(config, assignments: list[str]):
    """Apply ``["a.b=value", ...]`` to ``config`` (a frozen dataclass tree) and return the result."""
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"bad override {assignment!r}: expected key=value")
        try:
            config = _replace(config, key.strip().split("."), value.strip(), key.strip())
        except KeyError:
            valid = ", ".join(sorted(flat_keys(config)))
            raise ConfigError(f"unknown config key {key.strip()!r}; valid keys: {valid}") from None
    return config


def to_dict(config) -> dict:
    """The config as plain nested dicts (JSON-serialisable)."""
    return dataclasses.asdict(config)


def to_json(config) -> str:
    """The config as indented JSON."""
    return json.dumps(to_dict(config), indent=2, sort_keys=True)


def choice(default, *choices):
    """A dataclass field restricted to ``choices`` (checked by ``override``)."""
    return dataclasses.field(default=default, metadata={"choices": tuple(choices)})
