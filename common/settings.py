"""`setting()`: a dataclass field with a default and an allowed range, checked at load.

Config dataclasses declare every field with `setting(...)` and a docstring right below
it; `check_field` enforces the range and `field_docs` reads the docstrings back for
`qfleet config show`.
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
import math
import textwrap
from typing import Any, Iterator, Mapping

from qfleet.common.errors import ConfigError


class Kwargs(Mapping):
    """An immutable str -> value mapping for config fields that are passed on as keyword
    arguments (run.env_kwargs): dataclass defaults must not be dicts, and configs stay
    frozen. Values are YAML scalars or lists of them (kept as tuples)."""

    def __init__(self, items: Mapping[str, Any] | None = None):
        self._items = tuple(sorted((items or {}).items()))

    def __getitem__(self, key: str) -> Any:
        for k, v in self._items:
            if k == key:
                return v
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return (k for k, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(self._items)

    def __repr__(self) -> str:
        return repr(dict(self._items))

    def plain(self) -> dict[str, Any]:
        """A plain dict (tuples back to lists), for YAML and JSON."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self._items}


def setting(default: Any, *, ge: float | None = None, gt: float | None = None,
            le: float | None = None, lt: float | None = None,
            choices: tuple | None = None, min_len: int | None = None) -> Any:
    """A dataclass field with its allowed range stored in the field's metadata."""
    rule = {k: v for k, v in dict(ge=ge, gt=gt, le=le, lt=lt, choices=choices,
                                  min_len=min_len).items() if v is not None}
    if isinstance(default, (list, dict)):
        raise TypeError("use a tuple for sequence defaults so configs stay immutable")
    return dataclasses.field(default=default, metadata={"rule": rule})


def describe_rule(rule: dict) -> str:
    """Human text for an allowed range, e.g. '> 0 and <= 1' or 'one of apex, linear'."""
    parts = []
    if "choices" in rule:
        parts.append("one of " + ", ".join(str(c) for c in rule["choices"]))
    for key, sym in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
        if key in rule:
            parts.append(f"{sym} {rule[key]}")
    if "min_len" in rule:
        parts.append(f"at least {rule['min_len']} item(s)")
    return " and ".join(parts) if parts else "any value of the declared type"


def check_field(section: str, field: dataclasses.Field, value: Any) -> None:
    """Raise ConfigError naming the field, the value and the allowed range if out of range."""
    rule = field.metadata.get("rule", {})
    name = f"{section}.{field.name}"

    def fail() -> None:
        raise ConfigError(f"{name} = {value!r} is not allowed; expected {describe_rule(rule)}")

    if value is None:
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{name} = {value!r} is not a finite number")
    if "choices" in rule and value not in rule["choices"]:
        fail()
    if isinstance(value, tuple):
        if len(value) < rule.get("min_len", 0):
            fail()
        items = value
    else:
        items = (value,)
    for item in items:
        if isinstance(item, (int, float)) and not isinstance(item, bool):
            if ("gt" in rule and not item > rule["gt"]) or ("ge" in rule and not item >= rule["ge"]) \
                    or ("lt" in rule and not item < rule["lt"]) or ("le" in rule and not item <= rule["le"]):
                fail()


def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of a dataclass, keyed by field name."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, following in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) \
                and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant) \
                and isinstance(following.value.value, str):
            docs[node.target.id] = " ".join(following.value.value.split())
    return docs
