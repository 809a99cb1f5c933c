"""Experiment trackers by name: each module of this package registers one tracker (`register_tracker`): the library
it needs, its adapter class and its frozen options dataclass, whose fields are read from the environment.

The modules are found by listing this package (`pkgutil`), so a new tracker is one new module here (plus its test):
`report_to` and `--report-to` accept it and their help lists it. A module imports its library only when its adapter
is built (a run that does not report to it never loads it).

Every adapter opens (or reopens) one tracker run, logs scalars at a PPO step (`log`, and `log_eval` for
evaluations), logs the resolved configuration as hyper-parameters when the run is new, and closes (`close`).
`state()` is what reopens the same tracker run later (a resumed training, an evaluation): kept by
`trainers.trackers` in the run folder's `trackers.json`. The constructor takes (run_dir, run_name, group, config,
state, purge_step, options).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Any

from trainers.options import check_options
from trainers.registry import Registry

PREFIX = "tracker"
NONE = "none"  # `report_to` naming no tracker
DEFAULT_GROUP = "harness"  # the group of runs logged together when `tracker_group` is empty


@dataclass(frozen=True, slots=True)
class TrackerSpec:
    name: str
    library: str  # the module it imports; the pyproject extra of the tracker's name installs it
    description: str  # one line
    options: type  # a frozen dataclass; a field's `env` metadata names the variable it is read from
    backend: type  # the adapter (see the module docstring)


_REGISTRY: Registry[TrackerSpec] = Registry(__name__, __path__, "tracker", first="tensorboard")


def register_tracker(name: str, *, library: str, description: str, options: type, backend: type) -> TrackerSpec:
    """Called by a module of this package at import: adds the tracker `name`."""
    if not dataclasses.is_dataclass(options):
        raise TypeError(f"tracker {name!r}: options must be a dataclass, not {options!r}")
    return _REGISTRY.add(name, TrackerSpec(name, library, description, options, backend), backend.__module__)


def tracker_names() -> tuple[str, ...]:
    """Every registered tracker, tensorboard (the default) first, then by name."""
    return _REGISTRY.names()


def names_errors(names: tuple[str, ...]) -> list[str]:
    """What is wrong with a `report_to` value (no library is looked at)."""
    unknown = [n for n in names if n not in tracker_names() and n != NONE]
    if unknown:
        return [f"report_to={','.join(names)!r}: {', '.join(map(repr, unknown))} is not known; allowed: "
                f"{', '.join(tracker_names())}, or {NONE} (several at once, comma-separated)"]
    if NONE in names and len(names) > 1:
        return [f"report_to={','.join(names)!r}: {NONE!r} cannot be combined with a tracker"]
    if len(set(names)) != len(names):
        return [f"report_to={','.join(names)!r} names a tracker twice"]
    return []


def tracker_spec(name: str) -> TrackerSpec:
    return _REGISTRY.get(name)


def options_from_env(name: str, environ: dict[str, str] | None = None) -> Any:
    """The options of tracker `name`: each field from its environment variable when set, else its default."""
    environ = os.environ if environ is None else environ
    cls = tracker_spec(name).options
    given = {f.name: environ[f.metadata["env"]] for f in dataclasses.fields(cls)
             if f.metadata.get("env") and environ.get(f.metadata["env"])}
    options = cls(**given)
    check_options(options, PREFIX)
    return options


def flat_params(config: dict[str, Any]) -> dict[str, str | int | float | bool]:
    """Hyper-parameters as the trackers take them: scalars kept, lists and None written as text."""
    return {k: v if isinstance(v, (str, int, float, bool)) else json.dumps(v) for k, v in sorted(config.items())}
