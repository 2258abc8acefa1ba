"""The one config validator: dataclasses whose fields say what a valid value is.

Every config section (the job config's ``seeds:``, ``engine:``, ``output:`` ...,
``curation:``, an engine's own settings) is a dataclass. Its annotations give the
types, and ``knob(...)`` metadata gives what annotations can't: ranges, choices,
whether the value belongs in the config hash, and how a YAML shorthand is spelt out.
``parse`` builds the dataclass from a raw mapping and raises a ``ConfigError`` naming
the full key path (``engine.sampling.top_p``) on the first problem, so a typo costs a
second on the driver rather than a cluster run; ``hashed`` derives the part of a
config that determines the output from the same metadata.

A section whose keys depend on one of its values (``engine:``, by ``engine.kind``)
names the class that reads it with a ``variant(raw, prefix, source)`` classmethod.

Checks that relate several fields (``turns.min <= turns.max``) stay with their class
as a ``check(self, prefix, source)`` method, which ``parse`` calls once the instance
is built (nested sections first); ``need`` keeps those one-liners.

Supported annotations: ``bool``, ``int`` (not bool), ``float`` (an int is accepted),
``str`` (not empty), ``X | None``, ``tuple[X, ...]``, ``dict[str, X]`` /
``Mapping[str, X]``, ``Any`` and nested dataclasses. ``None`` (an empty YAML value)
means the field's default, except where the annotation allows None.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass
from typing import Any, Union

from m2l_ray.errors import ConfigError

_META = "m2l"


@dataclass(frozen=True)
class Knob:
    """What ``knob`` puts in a field's metadata.

    Ranges and choices apply to the value, or to each element of a list or each
    value of a mapping; ``keys`` are the choices for a mapping's keys. ``convert``
    turns a YAML shorthand into the canonical form before the type check (it may
    raise ValueError with the problem). ``hashed=False`` leaves the field out of
    ``hashed``: where and how fast a job runs, not what it makes.
    """

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    # kept as given, or a function called at each use: a registry's names stay current
    choices: Sequence[Any] | Callable[[], Sequence[Any]] | None = None
    keys: Sequence[str] | None = None
    hashed: bool = True
    convert: Callable[[Any], Any] | None = None


_PLAIN = Knob()


def knob(
    default: Any = MISSING,
    *,
    default_factory: Any = MISSING,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: Sequence[Any] | Callable[[], Sequence[Any]] | None = None,
    keys: Sequence[str] | None = None,
    hashed: bool = True,
    convert: Callable[[Any], Any] | None = None,
) -> Any:
    """A dataclass field with validation metadata (see ``Knob``)."""
    meta = Knob(ge, gt, le, lt, choices, keys, hashed, convert)
    return dataclasses.field(default=default, default_factory=default_factory, metadata={_META: meta})


def knob_of(f: dataclasses.Field) -> Knob:
    return f.metadata.get(_META, _PLAIN)


def need(ok: bool, key: str, problem: str, source: str | None) -> None:
    """For ``check`` methods: raise ConfigError(key, problem) unless ``ok``."""
    if not ok:
        raise ConfigError(key, problem, source)


def _join(prefix: str, key: Any) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


# ---------------------------------------------------------------- parsing


def parse(cls: type, raw: Mapping[str, Any] | None, prefix: str, source: str | None = None) -> Any:
    """Build dataclass ``cls`` from ``raw``; unknown keys and bad values raise ConfigError.

    ``prefix`` is the key path of ``raw`` in the file ("" at the top level).
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(prefix or "(file)", f"must be a mapping, got {type(raw).__name__}", source)
    variant = getattr(cls, "variant", None)
    if variant is not None and (sub := variant(raw, prefix, source)) is not cls:
        return parse(sub, raw, prefix, source)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in raw:
        if key not in fields:
            raise ConfigError(_join(prefix, key), f"unknown key (allowed here: {', '.join(sorted(fields))})",
                              source)
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        path = _join(prefix, name)
        value = raw.get(name)
        if value is None:
            if _optional(hints[name]) and name in raw:
                kwargs[name] = None
            elif f.default is MISSING and f.default_factory is MISSING:
                raise ConfigError(path, "missing: a required key", source)
            elif _is_dataclass_type(hints[name]):  # an empty section: its defaults, checked
                kwargs[name] = parse(hints[name], {}, path, source)
            continue
        kwargs[name] = _value(hints[name], value, path, knob_of(f), source)
    obj = cls(**kwargs)
    check = getattr(obj, "check", None)
    if callable(check):
        check(prefix, source)
    return obj


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _optional(tp: Any) -> bool:
    return _is_union(tp) and type(None) in typing.get_args(tp)


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else repr(v)


def is_int(v: Any) -> bool:
    """An int that is not a bool (YAML's true is an int to Python)."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    """A finite int or float, not a bool."""
    return (is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _value(tp: Any, value: Any, path: str, meta: Knob, source: str | None) -> Any:
    """``value`` checked against annotation ``tp`` and ``meta``; the canonical form."""
    if meta.convert is not None:
        try:
            value = meta.convert(value)
        except ValueError as e:
            raise ConfigError(path, str(e), source) from None
        meta = dataclasses.replace(meta, convert=None)
    if value is None:
        if _optional(tp):
            return None
        raise ConfigError(path, "must not be null", source)
    if _is_union(tp):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(inner) != 1:  # pragma: no cover - a config annotation we don't support
            raise TypeError(f"{path}: unsupported annotation {tp}")
        tp = inner[0]
    if tp is Any:
        return value
    if _is_dataclass_type(tp):
        return parse(tp, value, path, source)
    origin = typing.get_origin(tp)
    if origin is tuple:
        return _sequence(typing.get_args(tp)[0], value, path, meta, source)
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        args = typing.get_args(tp)
        return _mapping(args[1] if args else Any, value, path, meta, source)
    return _scalar(tp, value, path, meta, source)


def _describe(tp: Any) -> str:
    names = {str: "strings", int: "integers", float: "numbers", bool: "true/false values"}
    return names.get(tp, "mappings")


def _sequence(item: Any, value: Any, path: str, meta: Knob, source: str | None) -> tuple:
    if isinstance(value, (str, Mapping)) or not isinstance(value, Sequence):
        raise ConfigError(path, f"must be a list of {_describe(item)}, got {_fmt(value)}", source)
    return tuple(_value(item, x, f"{path}[{i}]", meta, source) for i, x in enumerate(value))


def _mapping(item: Any, value: Any, path: str, meta: Knob, source: str | None) -> dict:
    if not isinstance(value, Mapping):
        raise ConfigError(path, f"must be a mapping, got {type(value).__name__}", source)
    out: dict[str, Any] = {}
    for k, v in value.items():
        kp = f"{path}.{k}"
        if not isinstance(k, str) or not k:
            raise ConfigError(kp, "keys must be non-empty strings", source)
        if meta.keys is not None and k not in meta.keys:
            raise ConfigError(kp, f"{k!r} is not one of {', '.join(meta.keys)}", source)
        out[k] = v if item is Any else _value(item, v, kp, meta, source)
    return out


def _scalar(tp: Any, value: Any, path: str, meta: Knob, source: str | None) -> Any:
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, f"must be true or false, got {_fmt(value)}", source)
    elif tp is int:
        if not is_int(value):
            raise ConfigError(path, f"must be int, got {_fmt(value)}", source)
    elif tp is float:
        if not is_number(value):
            raise ConfigError(path, f"must be a number, got {_fmt(value)}", source)
        value = float(value)
    elif tp is str:
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(path, f"must be a non-empty string, got {_fmt(value)}", source)
    else:  # pragma: no cover - a config annotation we don't support
        raise TypeError(f"{path}: unsupported annotation {tp}")
    _in_range(value, path, meta, source)
    return value


def _in_range(value: Any, path: str, meta: Knob, source: str | None) -> None:
    choices = meta.choices() if callable(meta.choices) else meta.choices
    if choices is not None and value not in choices:
        allowed = ", ".join(str(c) for c in choices if c is not None)
        raise ConfigError(path, f"{_fmt(value)} is not one of {allowed}", source)
    lo, hi = meta.ge if meta.ge is not None else meta.gt, meta.le if meta.le is not None else meta.lt
    if lo is None and hi is None:
        return
    ok = ((meta.ge is None or value >= meta.ge) and (meta.gt is None or value > meta.gt)
          and (meta.le is None or value <= meta.le) and (meta.lt is None or value < meta.lt))
    if ok:
        return
    if hi is None:
        want = f">= {lo:g}" if meta.ge is not None else f"> {lo:g}"
    elif lo is None:
        want = f"<= {hi:g}" if meta.le is not None else f"< {hi:g}"
    elif meta.ge is not None and meta.le is not None:
        want = f"between {lo:g} and {hi:g}"
    else:
        want = f"in {'[' if meta.ge is not None else '('}{lo:g}, {hi:g}{']' if meta.le is not None else ')'}"
    raise ConfigError(path, f"must be {want}, got {_fmt(value)}", source)


# ---------------------------------------------------------------- output


def plain(value: Any) -> Any:
    """A dataclass (or value) as plain JSON/YAML data: dicts, lists, scalars."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def hashed(value: Any) -> Any:
    """``plain(value)`` without the fields whose knob says ``hashed=False``, at any depth."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: hashed(getattr(value, f.name)) for f in dataclasses.fields(value) if knob_of(f).hashed}
    if isinstance(value, Mapping):
        return {str(k): hashed(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [hashed(v) for v in value]
    return value
