"""Typed run configs: plain dataclasses loaded from YAML, with dotted command-line overrides.

One YAML describes one run (Meta's vjepa2 habit). A YAML may start from other YAML files with
``_base_: other.yaml`` (or a list of them), resolved relative to the including file and merged
depth-first, so presets stay short: ``configs/pretrain/vitl-cooldown.yaml`` only says what differs
from ``vitl.yaml``.

Every value is checked against the dataclass field's type; an unknown key or a wrong type raises
:class:`ConfigError` naming the dotted key and the file (or "override") it came from.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from core.errors import UserError

T = TypeVar("T")

BASE_KEY = "_base_"
# The presets package (configs/) is installed beside core/; found by location, not imported, so the
# ground's config loader depends on no other package.
PRESET_ROOT = Path(__file__).resolve().parents[1] / "configs"


class ConfigError(UserError, ValueError):
    """A config file or override that does not fit the typed schema."""


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_config_tree(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML file and every ``_base_`` it names, merged (later files win)."""
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"{path}: _base_ cycle through {' -> '.join(map(str, _seen))}")
    data = _read_yaml(path)
    bases = data.pop(BASE_KEY, [])
    bases = [bases] if isinstance(bases, str) else bases
    merged: dict[str, Any] = {}
    for base in bases:
        merged = _deep_merge(merged, read_config_tree(path.parent / base, (*_seen, path)))
    return _deep_merge(merged, data)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides; the value is parsed as YAML (``4``, ``true``, ``[1,2]``)."""
    data = _deep_merge({}, data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. trainer.num_workers=4")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else ""
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {key!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return data


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str, origin_name: str) -> Any:
    """Check/convert ``value`` to type ``tp``; raise ConfigError naming ``key``."""

    def fail(why: str) -> ConfigError:
        return ConfigError(f"{origin_name}: key '{key}': {why}")

    if tp is Any:
        return value
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key, origin_name)
            except ConfigError as exc:
                errors.append(str(exc))
        raise fail(f"expected {_type_name(tp)}, got {value!r}")
    if origin is typing.Literal:
        if value not in get_args(tp):
            raise fail(f"expected one of {list(get_args(tp))}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise fail(f"expected a mapping for {tp.__name__}, got {type(value).__name__}")
        return _build(tp, value, key, origin_name)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise fail(f"expected a list, got {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise fail(f"expected {len(args)} items, got {len(value)}")
            return tuple(
                _convert(v, a, f"{key}.{i}", origin_name) for i, (v, a) in enumerate(zip(value, args))
            )
        item_tp = args[0] if args else Any
        items = [_convert(v, item_tp, f"{key}.{i}", origin_name) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise fail(f"expected a mapping, got {value!r}")
        _, val_tp = get_args(tp) or (str, Any)
        return {str(k): _convert(v, val_tp, f"{key}.{k}", origin_name) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise fail(f"expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail(f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail(f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise fail(f"expected a string, got {value!r}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise fail(f"expected {_type_name(tp)}, got {value!r}")
    return value


def _with_default_entries(fld: dataclasses.Field, value: Any) -> Any:
    """A mapping given for a dict field with default entries updates those entries, not replaces them.

    So ``data.sources: {ssv2: {manifest: x}}`` keeps ssv2's default weight and the other four sources.
    """
    if not isinstance(value, dict) or fld.default_factory is dataclasses.MISSING:
        return value
    default = fld.default_factory()
    if not isinstance(default, dict):
        return value
    plain = {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in default.items()}
    return _deep_merge(plain, value)


def _build(cls: type[T], data: dict[str, Any], prefix: str, origin_name: str) -> T:
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            dotted = f"{prefix}.{key}" if prefix else key
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{origin_name}: unknown key '{dotted}' (known here: {known})")
    kwargs = {}
    for name, value in data.items():
        dotted = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _convert(_with_default_entries(fields[name], value), hints[name], dotted, origin_name)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{origin_name}: {prefix or cls.__name__}: {exc}") from exc


def from_dict(cls: type[T], data: dict[str, Any], origin_name: str = "config") -> T:
    """Build a typed config from plain data (already merged)."""
    return _build(cls, data, "", origin_name)


def find_config(spec: str | Path) -> Path:
    """A ``--config`` value as a file: an existing path as given, else a preset ``<stage>/<name>`` of the
    installed ``configs/`` (``pretrain/tiny`` -> ``configs/pretrain/tiny.yaml``), so a preset works from
    any directory. Neither: a :class:`ConfigError` that says how to list the presets."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    preset = PRESET_ROOT / (str(spec).removesuffix(".yaml") + ".yaml")
    if preset.is_file():
        return preset
    raise ConfigError(f"{spec}: no such config file, and no preset of that name in {PRESET_ROOT} "
                      "(`vjepa2-ray presets` lists them)")


def load_config(cls: type[T], path: str | Path | None, overrides: list[str] | None = None) -> T:
    """Load ``cls`` from a YAML file (with ``_base_`` includes) plus dotted overrides."""
    data = read_config_tree(path) if path else {}
    origin_name = str(path) if path else "defaults"
    if overrides:
        data = apply_overrides(data, overrides)
        origin_name = f"{origin_name} (+ overrides)"
    return from_dict(cls, data, origin_name)


def to_dict(cfg: Any) -> dict[str, Any]:
    """The resolved config as plain data (for MLflow params, checkpoints and logs)."""
    return dataclasses.asdict(cfg)


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists are kept as values."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            flat.update(flatten(value, dotted))
        else:
            flat[dotted] = value
    return flat
