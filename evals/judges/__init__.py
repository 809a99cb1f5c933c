"""Judges by name: each module of this package registers one judge (`register_judge`) with its frozen options
dataclass, and `make_judge(name, options)` builds it, validated before any work starts.

The modules are found by listing this package (`pkgutil`), so a new judge is one new module here (plus its test):
it appears in `harness judges`, its options become `--judge-OPTION` flags with their `--help` lines, and
`--judge NAME` accepts it. A module registers without importing a model library (`harness report` and `harness
grid` load no torch); the judge itself is imported when it is built.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from evals.judging import Judge
from trainers.options import check_options
from trainers.registry import Registry

DEFAULT = "learned"  # the offline default of `harness judge-check`, and of `harness eval` outside a preset's grid
PREFIX = "judge"  # option `timeout` is the flag --judge-timeout


@dataclass(frozen=True, slots=True)
class JudgeSpec:
    name: str
    description: str  # one line for `harness judges`
    options: type  # a frozen dataclass; its fields are the judge's options (`trainers.options.option`)
    build: Callable[..., Judge]  # build(options, device=..., seed=...) -> Judge
    offline: bool  # needs no server and no model of our own to be named
    # identity(options) without building the judge (no model loads), when it can be known so; None: built and asked
    identity: Callable[[Any], dict[str, str]] | None = None
    cheap: bool = False  # its answers cost less to recompute than to look up in the annotation cache
    details: Callable[[], list[str]] | None = None  # more lines for `harness judges` (e.g. the configs it reads)


_REGISTRY: Registry[JudgeSpec] = Registry(__name__, __path__, "judge", first=DEFAULT)


def register_judge(name: str, *, description: str, options: type, build: Callable[..., Judge], offline: bool,
                   identity: Callable[[Any], dict[str, str]] | None = None, cheap: bool = False,
                   details: Callable[[], list[str]] | None = None) -> JudgeSpec:
    """Called by a module of this package at import: adds the judge `name` (one name, one module)."""
    if not dataclasses.is_dataclass(options):
        raise TypeError(f"judge {name!r}: options must be a dataclass, not {options!r}")
    return _REGISTRY.add(name, JudgeSpec(name, description, options, build, offline, identity, cheap, details),
                         build.__module__)


def judge_names() -> tuple[str, ...]:
    """Every registered judge: the default first, then by name."""
    return _REGISTRY.names()


def judge_spec(name: str) -> JudgeSpec:
    return _REGISTRY.get(name, f"judge={name!r}")


def judges_with_option(field: str) -> list[str]:
    return [n for n in judge_names() if field in {f.name for f in dataclasses.fields(judge_spec(n).options)}]


def judge_options(name: str, **given: Any) -> Any:
    """The options of judge `name`: its defaults with `given` set (None: left at its default). A setting the judge
    does not take is refused with the flags named and the judges that take them."""
    cls = judge_spec(name).options
    own = {f.name for f in dataclasses.fields(cls)}
    foreign = [k for k, v in given.items() if v is not None and k not in own]
    if foreign:
        flags = ", ".join(f"--{PREFIX}-{k.replace('_', '-')}" for k in foreign)
        takers = sorted({j for k in foreign for j in judges_with_option(k)})
        raise ValueError(f"{flags} set for judge={name!r}; these options apply to --judge "
                         f"{', '.join(takers) or '(no judge)'} only")
    return cls(**{k: v for k, v in given.items() if v is not None})


def checked_options(name: str, options: Any | None) -> Any:
    """`options` when they are judge `name`'s (checked again: a dataclass built elsewhere), else its defaults."""
    spec = judge_spec(name)
    if options is None:
        return judge_options(name)
    if not isinstance(options, spec.options):
        raise ValueError(f"judge={name!r} takes {spec.options.__name__} options, not {type(options).__name__}")
    check_options(options, PREFIX)
    return options


def options_from_dict(name: str, values: dict | None) -> Any:
    """The options `dataclasses.asdict` wrote (e.g. in an evaluation job's file)."""
    return judge_options(name, **(values or {}))


def make_judge(name: str, options: Any | None = None, *, device: str = "cpu", seed: int = 0) -> Judge:
    """A judge instance; `device` and `seed` reach the judges that load a model (the reward-model judge)."""
    return judge_spec(name).build(checked_options(name, options), device=device, seed=seed)


def judge_identity(name: str, options: Any | None = None, *, device: str = "cpu", seed: int = 0) -> dict[str, str]:
    """What `make_judge(name, options).identity()` reports: known without building the judge where its module says
    how (no torch, so a grid names its records without a model); otherwise built and asked (the OpenAI judge asks
    its server which model answers)."""
    spec, options = judge_spec(name), checked_options(name, options)
    if spec.identity is not None:
        return spec.identity(options)
    judge = spec.build(options, device=device, seed=seed)
    try:
        return judge.identity()
    finally:
        judge.close()
