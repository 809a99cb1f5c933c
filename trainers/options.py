"""Options dataclasses of registered components (judges, evaluators, trackers): one field helper and one range check.

A component's options are a frozen, slotted dataclass; each field is declared with `option(...)`, which keeps its
help line and, for numbers, its allowed range in the field's metadata. The command line reads the same metadata
to generate a flag per field (`--PREFIX-FIELD`, e.g. `--judge-timeout` for field `timeout` of a judge), so the
flag, its `--help` line and the check in `__post_init__` cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any


def option(default: Any, help: str, *, low: float | None = None, high: float | None = None,
           low_open: bool = False, metavar: str | None = None, env: str | None = None) -> Any:
    """A dataclass field with its help line and, for a number, its range [low, high] ((low, high] with
    `low_open`); `env`: the environment variable it is read from, for options set there (a tracker's)."""
    meta = {"help": help, "low": low, "high": high, "low_open": low_open, "metavar": metavar, "env": env}
    return dataclasses.field(default=default, metadata=meta)


def allowed_range(meta: dict, kind: type) -> str:
    """The range text of a numeric field, as the command line's refusals write it."""
    low, high = meta["low"], meta["high"]
    if kind is int:
        return f"{low}..{high}"
    return f"{'(' if meta['low_open'] else '['}{low:g}, {high:g}]"


def value_type(cls: type, name: str) -> type:
    """The field's type without `None` (str, int, float or bool)."""
    tp = typing.get_type_hints(cls)[name]
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if args else tp


def check_options(options: Any, prefix: str) -> None:
    """Raise ValueError naming the flag (`--PREFIX-FIELD`), the value and what is allowed, for a value of the
    wrong type or outside its field's range; None is always allowed for an optional field."""
    for f in dataclasses.fields(options):
        value, kind = getattr(options, f.name), value_type(type(options), f.name)
        if value is None:
            continue
        flag = f"--{prefix + '-' if prefix else ''}{f.name.replace('_', '-')}"  # no prefix: a command's own flag
        numeric = kind in (int, float) and not isinstance(value, bool)
        if kind is float and numeric and isinstance(value, int):
            value = float(value)
        if not isinstance(value, kind) or (kind is float and not math.isfinite(value)):
            raise ValueError(f"{flag}={value!r}: {f.metadata.get('help', '')}; expected {kind.__name__}")
        low, high = f.metadata.get("low"), f.metadata.get("high")
        if numeric and low is not None:
            inside = (low < value if f.metadata["low_open"] else low <= value) and value <= high
            if not inside:
                raise ValueError(f"{flag}={value!r}: {f.metadata['help']}; allowed: "
                                 f"{allowed_range(f.metadata, kind)}")
