"""Load, override, validate and save `QfleetConfig`.

A config file (YAML or TOML) holds up to four sections: actor, replay, learner, run.
`--set section.field=value` overrides one field; values are parsed like YAML scalars
(`3e-4`, `true`, `[64, 64]`, `null`). Every field is type-checked and range-checked,
and errors name the field, the value and what is allowed.
"""
from __future__ import annotations

import dataclasses
import difflib
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from qfleet.common.config import SECTIONS, QfleetConfig
from qfleet.common.errors import ConfigError
from qfleet.common.settings import Kwargs, check_field


def load_config(source: str | Path | Mapping[str, Any] | None = None, overrides: Iterable[str] = ()) -> QfleetConfig:
    """The default config, updated from `source` (a YAML/TOML file, or a mapping of
    sections {"learner": {"lr": 1e-3}}) and then from `overrides` ("section.field=value")."""
    return QfleetConfig(**load_sections(SECTIONS, source, overrides))


def load_sections(sections: dict[str, type], source: str | Path | Mapping[str, Any] | None = None,
                  overrides: Iterable[str] = ()) -> dict[str, Any]:
    """{section: config dataclass} for another entry point's sections (e.g. the baselines'),
    loaded like `load_config`."""
    raw: dict[str, dict[str, Any]] = {name: {} for name in sections}
    given = {} if source is None else source if isinstance(source, Mapping) else _read_file(Path(source), sections)
    for section, values in given.items():
        if not isinstance(values, Mapping):
            raise ConfigError(f"config section '{section}' must be a mapping of field: value, got {values!r}")
        raw.setdefault(section, {}).update(values)
    for item in overrides:
        section, field, value = _parse_override(item, sections)
        raw[section][field] = value
    return build_sections(raw, sections)


def build_config(raw: dict[str, dict[str, Any]]) -> QfleetConfig:
    """A validated QfleetConfig from {section: {field: value}} (missing fields keep defaults)."""
    return QfleetConfig(**build_sections(raw, SECTIONS))


def build_sections(raw: dict[str, dict[str, Any]], sections: dict[str, type]) -> dict[str, Any]:
    unknown = set(raw) - set(sections)
    if unknown:
        raise ConfigError(f"unknown config section(s) {sorted(unknown)}; the sections are {list(sections)}")
    parts = {}
    for section, cls in sections.items():
        values = raw.get(section) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"config section '{section}' must be a mapping of field: value, got {values!r}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for name, value in values.items():
            if name not in fields:
                raise ConfigError(f"unknown field '{section}.{name}'{_suggest(name, fields)}")
            kwargs[name] = _coerce(f"{section}.{name}", value, hints[name])
            check_field(section, fields[name], kwargs[name])
        parts[section] = cls(**kwargs)
    return parts


def config_to_dict(cfg: QfleetConfig | dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Plain {section: {field: value}} with tuples as lists, ready for YAML or JSON
    (from a QfleetConfig or a {section: config dataclass} dict)."""
    parts = cfg if isinstance(cfg, dict) else {section: getattr(cfg, section) for section in SECTIONS}
    out = {}
    for section, part in parts.items():
        values = dataclasses.asdict(part)
        out[section] = {k: list(v) if isinstance(v, tuple) else v.plain() if isinstance(v, Kwargs) else v
                        for k, v in values.items()}
    return out


def save_config(cfg: QfleetConfig | dict[str, Any], path: str | Path) -> None:
    """Write the resolved config as YAML (loadable again with `--config`)."""
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def _read_file(path: Path, sections: dict[str, type]) -> dict[str, dict[str, Any]]:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist (pass an existing .yaml, .yml or .toml file)")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        else:
            raise ConfigError(f"config file {path} must end in .yaml, .yml or .toml")
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid {path.suffix[1:].upper()}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}")
    unknown = set(data) - set(sections)
    if unknown:
        raise ConfigError(f"config file {path}: unknown section(s) {sorted(unknown)}; "
                          f"the sections are {list(sections)}")
    return data


def _parse_override(item: str, sections: dict[str, type]) -> tuple[str, str, Any]:
    key, sep, text = item.partition("=")
    section, dot, field = key.strip().partition(".")
    if not sep or not dot or not field:
        raise ConfigError(f"--set {item!r}: expected section.field=value, e.g. --set learner.lr=3e-4")
    if section not in sections:
        raise ConfigError(f"--set {item!r}: unknown section '{section}'{_suggest(section, sections)}")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    return section, field, value


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Convert a file/CLI value to the field's declared type, or raise ConfigError."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(name, value, inner[0])
    if origin is tuple:
        item_type = typing.get_args(hint)[0]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} = {value!r} must be a list, e.g. [128, 128]")
        return tuple(_coerce(name, v, item_type) for v in value)
    if hint is Kwargs:
        return _kwargs(name, value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name} = {value!r} must be true or false")
    if hint is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ConfigError(f"{name} = {value!r} must be an integer")
        return int(value)
    if hint is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} = {value!r} must be a number")
        return float(value)
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{name} = {value!r} must be a string")
        return str(value)
    raise ConfigError(f"{name}: unsupported field type {hint!r}")


SCALARS = (str, int, float, bool, type(None))


def _kwargs(name: str, value: Any) -> Kwargs:
    """A mapping of keyword arguments: string keys, YAML scalars or lists of them as values."""
    if value is None or value == "":
        return Kwargs()
    if not isinstance(value, Mapping):
        raise ConfigError(f"{name} = {value!r} must be a mapping, e.g. '{{repeat_action_probability: 0.0}}'")
    out = {}
    for key, item in value.items():
        if not isinstance(key, str) or not key.isidentifier():
            raise ConfigError(f"{name}: key {key!r} is not a keyword argument name")
        if isinstance(item, (list, tuple)) and all(isinstance(x, SCALARS) for x in item):
            item = tuple(item)
        elif not isinstance(item, SCALARS):
            raise ConfigError(f"{name}.{key} = {item!r} must be a number, string, boolean, null or a list of them")
        out[key] = item
    return Kwargs(out)


def _suggest(name: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(options), n=1)
    return f" (did you mean '{close[0]}'?)" if close else f"; known: {', '.join(options)}"
