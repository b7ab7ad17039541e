"""Typed recipe loading: YAML -> dataclasses, with `key=value` overrides and strict checking.

Every recipe field is declared with `setting(doc, default)`, so the schema documents itself
(`python -m recipes describe` prints it) and a test checks that no field is undocumented.
Unknown keys, wrong types and missing required values raise `RecipeError` naming the file and the
dotted key - one line, before any work starts.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

_REQUIRED = dataclasses.MISSING


class RecipeError(ValueError):
    """A recipe (or override) that does not match the schema."""


def setting(doc: str, default: Any = _REQUIRED, *, factory: Any = _REQUIRED) -> Any:
    """A documented dataclass field; no default and no factory means the key is required."""
    kwargs: dict[str, Any] = {"metadata": {"doc": doc}}
    if factory is not _REQUIRED:
        kwargs["default_factory"] = factory
    elif default is not _REQUIRED:
        kwargs["default"] = default
    return dataclasses.field(**kwargs)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    """Check `value` against the annotation `tp`; returns the (possibly converted) value."""
    origin, args = get_origin(tp), get_args(tp)

    def fail(expected: str) -> RecipeError:
        return RecipeError(f"{where}: key '{key}' expected {expected}, got {value!r}")

    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arm in args:
            if arm is type(None):
                continue
            try:
                return _coerce(value, arm, key, where)
            except RecipeError as e:
                errors.append(str(e))
        raise fail(" or ".join(_type_name(a) for a in args))
    if origin is Literal:
        if value not in args:
            raise fail("one of " + ", ".join(repr(a) for a in args))
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise fail(f"a mapping ({tp.__name__})")
        return build(tp, value, where, prefix=key)
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise fail("a list")
        item = args[0] if args else Any
        return [_coerce(v, item, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise fail("a mapping")
        kt, vt = args if args else (Any, Any)
        return {_coerce(k, kt, key, where): _coerce(v, vt, f"{key}.{k}", where) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise fail("true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail("an integer")
        return value
    if tp is float:
        # PyYAML (YAML 1.1) reads `1e-3` (no dot) as a string; accept that spelling of a number.
        if isinstance(value, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+", value.strip()):
            return float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise fail("a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise fail("a string")
        return value
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise fail(_type_name(tp))


def build(cls: type, data: dict, where: str, prefix: str = "") -> Any:
    """Construct dataclass `cls` from a mapping, recursively, rejecting unknown keys."""
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    dotted = (prefix + ".") if prefix else ""
    for key in data:
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise RecipeError(f"{where}: unknown key '{dotted}{key}' (known keys here: {known})")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], dotted + name, where)
        elif f.default is _REQUIRED and f.default_factory is _REQUIRED:
            raise RecipeError(f"{where}: missing required key '{dotted}{name}' ({f.metadata.get('doc', '')})")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:  # __post_init__ validation
        raise RecipeError(f"{where}: {dotted.rstrip('.') or cls.__name__}: {e}") from e


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (['a','b','c'], value); the value is parsed as YAML (so 3, 1e-3, true, [1,2])."""
    if "=" not in text:
        raise RecipeError(f"override '{text}': expected key=value (e.g. train.pretrain.lr=3e-4)")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise RecipeError(f"override '{text}': empty key")
    value = yaml.safe_load(raw) if raw.strip() else ""
    return key.split("."), value


def apply_overrides(data: dict, overrides: typing.Iterable[str]) -> dict:
    """Apply dotted overrides to a plain mapping (schema checks happen afterwards in `build`)."""
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise RecipeError(f"override '{text}': '{part}' is not a section")
            node = child
        node[path[-1]] = value
    return data


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise RecipeError(f"{path}{line}: malformed YAML ({getattr(e, 'problem', e)})") from e
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: expected a mapping at the top level")
    return data


def to_dict(obj: Any) -> Any:
    """A resolved recipe (or any section) back to plain data, for manifests and checkpoints."""
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


def describe(cls: type, prefix: str = "") -> list[str]:
    """One line per key: dotted name, type, default, doc."""
    lines = []
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        name = prefix + f.name
        if dataclasses.is_dataclass(tp):
            lines.append(f"{name}:  {f.metadata.get('doc', '')}")
            lines.extend(describe(tp, name + "."))
            continue
        if f.default is not _REQUIRED:
            default = repr(f.default)
        elif f.default_factory is not _REQUIRED:
            default = repr(f.default_factory())
        else:
            default = "REQUIRED"
        lines.append(f"{name} ({_type_name(tp)}, default {default}):  {f.metadata.get('doc', '')}")
    return lines
