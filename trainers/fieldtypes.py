"""Type checks of a frozen configuration's fields against their annotations, shared by the configurations of a run
(`trainers.config.TrainConfig`, `trainers.execution.ExecutionConfig`): Literal choices, optionals, ints that are
not bools, tuples of strings. One refusal line names the field, the value and what is allowed."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal


def field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def field_help(cls: type) -> dict[str, str]:
    """Each field's help text (its `metadata["help"]`), which becomes the command line's --help."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


def check_types(obj: Any) -> None:
    """Raise ValueError at the first field of `obj` whose value does not fit its annotation."""
    for name, tp in field_types(type(obj)).items():
        value = getattr(obj, name)
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin is Literal:
            ok = value in args
        elif origin in (typing.Union, types.UnionType):
            ok = any(_is_instance(value, a) for a in args)
        else:
            ok = _is_instance(value, tp)
        if not ok:
            raise ValueError(f"{name}={value!r} is invalid: expected {_allowed(tp)}")


def _allowed(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _is_instance(value: Any, tp: Any) -> bool:
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if typing.get_origin(tp) is tuple:
        return isinstance(value, tuple) and all(isinstance(v, str) for v in value)
    return isinstance(value, tp)
