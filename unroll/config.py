"""Typed configuration: nested frozen dataclasses, read from TOML/JSON files and ``key=value`` overrides.

A config is a tree of frozen dataclasses. ``override(config, ["smoothness.alpha=10"])`` and
``update(config, {"smoothness": {"alpha": 10}})`` (a parsed file, see ``read_file``) return a new
tree; an unknown key or a value of the wrong type raises ``ConfigError`` naming the key and
listing the valid ones.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
import types
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
    if origin in (typing.Union, types.UnionType):
        if text.strip().lower() == "none":
            return None
        (kind,) = [a for a in typing.get_args(kind) if a is not type(None)]
        return _parse(text, kind, key)
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
        raise ConfigError(f"bad value {text!r} for {key}: expected {_type_name(kind)}") from None
    raise ConfigError(f"{key} cannot be set from the command line")


def _type_name(kind) -> str:
    return getattr(kind, "__name__", str(kind))


def _coerce(value, kind, key: str):
    """Check a value read from a file against the field type ``kind``; lists become tuples."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None or value == "none":
            return None
        (kind,) = [a for a in typing.get_args(kind) if a is not type(None)]
        return _coerce(value, kind, key)
    if origin is tuple:
        args = typing.get_args(kind)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"bad value {value!r} for {key}: expected a list")
        if Ellipsis not in args and len(value) != len(args):
            raise ConfigError(f"bad value {value!r} for {key}: expected a list of {len(args)} items")
        item = args[0]
        return tuple(_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    ok = {bool: lambda v: isinstance(v, bool),
          int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          str: lambda v: isinstance(v, str)}.get(kind)
    if ok is None or not ok(value):
        raise ConfigError(f"bad value {value!r} for {key}: expected {_type_name(kind)}")
    return float(value) if kind is float else value


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
    parsed = _parse(value, _field_types(config)[path[0]], key)
    _check_choice(config, path[0], parsed, key)
    return _rebuild(config, {path[0]: parsed}, key)


def _rebuild(config, changes: dict, prefix: str):
    """``dataclasses.replace`` whose own value checks (``__post_init__``) name the section."""
    try:
        return dataclasses.replace(config, **changes)
    except (InputError, ValueError, TypeError) as e:
        raise ConfigError(f"{prefix.rstrip('.') or type(config).__name__}: {e}") from None


def update(config, mapping: dict, prefix: str = ""):
    """``config`` with the values of the nested ``mapping`` (a parsed TOML/JSON file) applied.

    Sections are nested dicts; values must have the field's type (an int is accepted for a
    float, a list for a tuple). Unknown keys and wrong types raise ``ConfigError`` with the key.
    """
    if not isinstance(mapping, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} is a section: expected a table of its keys, got {mapping!r}")
    fields = {f.name for f in dataclasses.fields(config)}
    types_ = _field_types(config)
    changes = {}
    for name, value in mapping.items():
        key = prefix + name
        if name not in fields:
            valid = ", ".join(prefix + k for k in sorted(fields))
            raise ConfigError(f"unknown config key {key!r}; valid keys here: {valid}")
        current = getattr(config, name)
        if dataclasses.is_dataclass(current):
            changes[name] = update(current, value, key + ".")
            continue
        if isinstance(value, dict):
            raise ConfigError(f"{key} is a value, not a section")
        changes[name] = _coerce(value, types_[name], key)
        _check_choice(config, name, changes[name], key)
    return _rebuild(config, changes, prefix)


def read_file(path: str | os.PathLike) -> dict:
    """The nested dict in a ``.toml`` or ``.json`` config file; ``ConfigError`` names a bad file."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".toml", ".json"):
        raise ConfigError(f"{path}: unknown config file type {ext!r} (use .toml or .json)")
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f) if ext == ".toml" else json.load(f)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid {ext[1:].upper()}: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a table of keys at the top level")
    return data


def _nearby_keys(config, key: str) -> str:
    """The valid keys in the deepest section that ``key`` names correctly (all keys if none)."""
    keys = sorted(flat_keys(config))
    parts = key.split(".")
    for depth in range(len(parts) - 1, 0, -1):
        section = ".".join(parts[:depth]) + "."
        near = [k for k in keys if k.startswith(section)]
        if near:
            return ", ".join(near)
    return ", ".join(keys)


def override(config, assignments: list[str]):
    """Apply ``["a.b=value", ...]`` to ``config`` (a frozen dataclass tree) and return the result."""
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"bad override {assignment!r}: expected key=value")
        try:
            config = _replace(config, key.strip().split("."), value.strip(), key.strip())
        except KeyError:
            raise ConfigError(f"unknown config key {key.strip()!r}; valid keys: {_nearby_keys(config, key.strip())}") from None
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
