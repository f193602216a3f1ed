"""Typed options of the experiments: frozen dataclasses that the command line turns into flags.

Each experiment module defines ``Options``, a frozen dataclass derived from ``Common``. A field
``max_steps: int = option(30_000, "step budget", positive=True)`` is the keyword ``max_steps`` of
``wnjax.reproduce`` and the flag ``--max-steps`` of ``wnjax reproduce NAME``. The field's
metadata (``option`` writes it, or ``dataclasses.field(metadata=...)``) may hold:

- ``help``: the flag's help text;
- ``choices``: the allowed values;
- ``positive``: the value must be > 0 (an integer: >= 1);
- ``only``: ``(other, value)``, the option acts only while option ``other`` is ``value``
  (``("dynamics", "gd")``: a GD setting); set to anything but its default otherwise, it is an
  error rather than silently ignored.

Field types: ``int``, ``float``, ``str``, ``bool`` (a flag ``--x``, or ``--no-x`` when the default
is true) and ``tuple[int, ...]``, ``tuple[float, ...]``, ``tuple[str, ...]`` (one or more
values), each optionally ``| None``. Constructing an ``Options`` checks and converts every value
(an integral float to ``int``, a list to a tuple) and raises ``InvalidInput`` naming the option.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import types
import typing

import numpy as np

from wnjax._runtime.errors import InvalidInput

_BASES = (bool, int, float, str)


def option(
    default,
    help: str = "",
    *,
    choices=None,
    positive: bool = False,
    only: tuple[str, object] | None = None,
):
    """A dataclass field with ``default`` and the metadata ``help``, ``choices``, ``positive``,
    ``only`` (see the module's docstring)."""
    meta = {"help": help}
    if choices is not None:
        meta["choices"] = tuple(choices)
    if positive:
        meta["positive"] = True
    if only is not None:
        meta["only"] = tuple(only)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class FieldType:
    """The type of an option field.

    - base: ``bool``, ``int``, ``float`` or ``str``;
    - many: a tuple of ``base`` values (``tuple[base, ...]``);
    - optional: ``None`` is allowed.
    """

    base: type
    many: bool = False
    optional: bool = False


def field_type(hint) -> FieldType:
    """The ``FieldType`` of a resolved annotation such as ``int``, ``float | None`` or
    ``tuple[int, ...]``; ``TypeError`` for any other annotation."""
    optional = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(rest) < len(typing.get_args(hint))
        if len(rest) != 1:
            raise TypeError(f"unsupported option type {hint!r}")
        hint = rest[0]
    many = typing.get_origin(hint) is tuple
    if many:
        args = typing.get_args(hint)
        if len(args) != 2 or args[1] is not Ellipsis:
            raise TypeError(f"unsupported option type {hint!r}; use tuple[T, ...]")
        hint = args[0]
    if hint not in _BASES:
        raise TypeError(f"unsupported option type {hint!r}")
    return FieldType(hint, many, optional)


@functools.cache
def field_types(cls) -> dict[str, FieldType]:
    """``name -> FieldType`` of every field of the options dataclass ``cls``."""
    hints = typing.get_type_hints(cls)
    return {f.name: field_type(hints[f.name]) for f in dataclasses.fields(cls)}


def _scalar(name: str, value, base: type, meta) -> object:
    """``value`` converted to ``base`` and checked against ``meta``; ``InvalidInput`` if not."""
    positive = bool(meta.get("positive"))
    if base is bool:
        if not isinstance(value, (bool, np.bool_)):
            raise InvalidInput(f"{name} must be True or False, got {value!r}.")
        value = bool(value)
    elif base is int:
        ok = (
            not isinstance(value, (bool, np.bool_))
            and isinstance(value, numbers.Real)
            and math.isfinite(value)
            and float(value) == int(value)
        )
        if not ok or (positive and int(value) < 1):
            kind = "a positive integer" if positive else "an integer"
            raise InvalidInput(f"{name} must be {kind}, got {value!r}.")
        value = int(value)
    elif base is float:
        ok = (
            not isinstance(value, (bool, np.bool_))
            and isinstance(value, numbers.Real)
            and not math.isnan(value)
        )
        if not ok or (positive and not value > 0):
            kind = "a positive number" if positive else "a number"
            raise InvalidInput(f"{name} must be {kind}, got {value!r}.")
        value = float(value)
    elif not isinstance(value, str):
        raise InvalidInput(f"{name} must be a string, got {value!r}.")
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise InvalidInput(f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}.")
    return value


def convert(name: str, value, kind: FieldType, meta=None) -> object:
    """``value`` of option ``name`` checked and converted to ``kind`` (see ``FieldType``), under
    the field metadata ``meta``; ``InvalidInput`` naming the option otherwise."""
    meta = meta or {}
    if value is None:
        if kind.optional:
            return None
        raise InvalidInput(f"{name} must be given (not None).")
    if not kind.many:
        return _scalar(name, value, kind.base, meta)
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)) or not value:
        raise InvalidInput(
            f"{name} must be a non-empty list of {kind.base.__name__}, got {value!r}."
        )
    return tuple(_scalar(name, v, kind.base, meta) for v in value)


def check_fields(options) -> None:
    """Check and convert every field of the frozen dataclass ``options`` in place; an option
    whose ``only`` condition does not hold must keep its default."""
    kinds = field_types(type(options))
    for f in dataclasses.fields(options):
        value = convert(f.name, getattr(options, f.name), kinds[f.name], f.metadata)
        object.__setattr__(options, f.name, value)
    for f in dataclasses.fields(options):
        if "only" not in f.metadata:
            continue
        other, wanted = f.metadata["only"]
        actual = getattr(options, other)
        if actual != wanted and getattr(options, f.name) != f.default:
            raise InvalidInput(
                f"{f.name} ({flag(f.name)}) acts only with {other}={wanted!r} "
                f"({flag(other)} {wanted}); with {other}={actual!r} it would be ignored. "
                f"Drop {flag(f.name)}, or choose {flag(other)} {wanted}."
            )


@dataclasses.dataclass(frozen=True)
class Common:
    """The options every experiment takes.

    - seeds: number of seeds (vmapped), >= 1;
    - out: output folder; ``None``: ``runs/NAME`` (``reproduce`` resolves it before ``run``);
    - full: the paper's sizes (slow).
    """

    seeds: int = option(5, "number of seeds (vmapped)", positive=True)
    out: str | None = option(None, "output folder (default runs/NAME)")
    full: bool = option(False, "the paper's sizes (slow)")

    def __post_init__(self):
        check_fields(self)


COMMON = tuple(f.name for f in dataclasses.fields(Common))


def option_names(cls) -> list[str]:
    """The option names of the options dataclass ``cls``, the common ones first."""
    return [f.name for f in dataclasses.fields(cls)]


def flag(name: str) -> str:
    """The command-line flag of option ``name``: ``max_steps -> --max-steps``."""
    return "--" + name.replace("_", "-")
