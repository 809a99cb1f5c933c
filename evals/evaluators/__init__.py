"""Evaluators by name: each module of this package registers one evaluator (`register_evaluator`): what its
records measure, the metrics they carry (unit, direction, allowed range), the command that makes them, its
settings, and, for the evaluators `harness eval` runs, how to run it on a loaded policy.

The modules are found by listing this package (`pkgutil`), so a new evaluator is one new module here (plus its
test): it appears in `harness evaluators`, results records of its name validate against its declared metrics, and
when it declares `run`, `harness eval --evaluators NAME` runs it. A module registers without importing a model
library (`harness report` and `harness grid` validate records and load no torch); what it runs is imported when it
runs.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from trainers.registry import Registry

DEFAULT = "winrate"  # what `harness eval` runs when no evaluator is named
EVAL_COMMAND = "harness eval"
Unit = Literal["percent", "count", "ratio", "score", "nats", "words", "seconds", "GiB", "tokens/s"]


@dataclass(frozen=True, slots=True)
class Metric:
    """One number of a record's `metrics`: None is always allowed (not measured), any other value must be finite
    and inside [low, high]."""

    name: str
    help: str  # one line for `harness evaluators`
    unit: Unit
    low: float | None = None  # None: unbounded
    high: float | None = None
    higher_is_better: bool | None = None  # None: neither (a count, a size, a share that describes)

    def range_text(self) -> str:
        """[low, high], >= low or `unbounded`, as `harness evaluators` lists it."""
        if self.low is not None and self.high is None:
            return f">= {self.low:g}"
        if self.low is None and self.high is None:
            return "unbounded"
        low = "-inf" if self.low is None else f"{self.low:g}"
        return f"[{low}, {'inf' if self.high is None else f'{self.high:g}'}]"

    def allowed(self) -> str:
        """The range as a refusal writes it."""
        if self.unit == "percent" and (self.low, self.high) == (0, 100):
            return "a percentage in [0, 100]"
        text = self.range_text()
        return "any finite number" if text == "unbounded" else text if text.startswith(">=") else f"in {text}"

    def problem(self, value: float, evaluator: str) -> str | None:
        """None when `value` (a finite number) is inside the range, else one line naming everything."""
        if (self.low is None or value >= self.low) and (self.high is None or value <= self.high):
            return None
        return f"metrics.{self.name}={value!r} must be {self.allowed()} (evaluator {evaluator})"


def percent(name: str, help: str, higher_is_better: bool | None = True) -> Metric:
    return Metric(name, help, "percent", 0, 100, higher_is_better)


def nonnegative(name: str, help: str, unit: Unit = "count", higher_is_better: bool | None = None) -> Metric:
    return Metric(name, help, unit, 0, None, higher_is_better)


def signed(name: str, help: str, unit: Unit = "score", higher_is_better: bool | None = None,
           low: float | None = None, high: float | None = None) -> Metric:
    return Metric(name, help, unit, low, high, higher_is_better)


@dataclass(frozen=True, slots=True)
class EvalInputs:
    """What `harness eval` opens before any model loads, handed to an evaluator's `run`: the eval set and judge
    when the evaluator `uses` them (None otherwise), and where shared reference outputs are cached."""

    eval_set: Any = None  # evals.evalsets.EvalSet
    judge: Any = None  # evals.judging.Judge
    references_dir: Any = None  # a Path


@dataclass(frozen=True, slots=True)
class EvaluatorSpec:
    name: str
    description: str  # one line for `harness evaluators`
    produced_by: str  # the command that makes its records, e.g. "harness eval" or "harness prepare"
    metrics: tuple[Metric, ...]
    options: type | None = None  # a frozen dataclass of the evaluator's own options (`trainers.options.option`)
    # the `evals.config.EvalConfig` fields it reads (their values that change a result are in its records' ids)
    config_fields: tuple[str, ...] = ()
    # `harness eval` only: run(evaluation: evals.evaluation.PolicyEvaluation, inputs: EvalInputs) -> EvalResult
    run: Callable[[Any, EvalInputs], Any] | None = None
    uses: tuple[Literal["eval_set", "judge"], ...] = ()  # what `run` needs opened (checked before a model loads)
    check: Callable[[Any], None] | None = None  # check(EvalConfig): raise before any work when it cannot run

    def metric(self, name: str) -> Metric | None:
        return next((m for m in self.metrics if m.name == name), None)


# by name alone: no evaluator is a default of every command
_REGISTRY: Registry[EvaluatorSpec] = Registry(__name__, __path__, "evaluator")


def register_evaluator(name: str, *, description: str, produced_by: str, metrics: tuple[Metric, ...] | list[Metric],
                       options: type | None = None, config_fields: tuple[str, ...] = (),
                       run: Callable[[Any, EvalInputs], Any] | None = None, uses: tuple[str, ...] = (),
                       check: Callable[[Any], None] | None = None) -> EvaluatorSpec:
    """Called by a module of this package at import: adds the evaluator `name` (one name, one module)."""
    if options is not None and not dataclasses.is_dataclass(options):
        raise TypeError(f"evaluator {name!r}: options must be a dataclass, not {options!r}")
    names = [m.name for m in metrics]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"evaluator {name!r} declares the metric(s) {twice} twice")
    if run is not None and produced_by != EVAL_COMMAND:
        raise ValueError(f"evaluator {name!r}: `run` is how {EVAL_COMMAND} runs it; produced_by must say so")
    unknown = set(uses) - {"eval_set", "judge"}
    if unknown:
        raise ValueError(f"evaluator {name!r}: uses {sorted(unknown)}; allowed: eval_set, judge")
    spec = EvaluatorSpec(name, description, produced_by, tuple(metrics), options, tuple(config_fields), run,
                         tuple(uses), check)
    return _REGISTRY.add(name, spec, sys._getframe(1).f_globals.get("__name__", "?"))  # the registering module


def evaluator_names() -> tuple[str, ...]:
    """Every registered evaluator, by name."""
    return _REGISTRY.names()


def evaluator_spec(name: str) -> EvaluatorSpec:
    return _REGISTRY.get(name)


def runnable_names() -> tuple[str, ...]:
    """The evaluators `harness eval` runs: the default first, then by name."""
    return tuple(sorted((n for n in evaluator_names() if evaluator_spec(n).run is not None),
                        key=lambda n: (n != DEFAULT, n)))


def check_runnable(names: tuple[str, ...] | list[str], flag: str = "--evaluators") -> tuple[str, ...]:
    """`names` when each is an evaluator `harness eval` runs (in the order given, repeats dropped), else one line
    naming the first that is not, and the valid ones."""
    valid = runnable_names()
    if not names:
        raise ValueError(f"{flag}: name at least one evaluator; valid: {', '.join(valid)}")
    for name in names:
        if name not in valid:
            known = name in _REGISTRY.specs()
            why = f"its records are made by {evaluator_spec(name).produced_by}" if known else "not known"
            raise ValueError(f"{flag} {name}: {why}; {EVAL_COMMAND} runs: {', '.join(valid)}")
    return tuple(dict.fromkeys(names))


def metric_problems(evaluator: str, metrics: dict[str, Any]) -> list[str]:
    """Every metric of a record of `evaluator` that is not one of its declared metrics or lies outside its range,
    each on one line naming the evaluator, metric, value and what is allowed; values must already be finite."""
    spec = evaluator_spec(evaluator)
    found = []
    for key, value in metrics.items():
        metric = spec.metric(key)
        if metric is None:
            found.append(f"metrics.{key:.60} is not a metric of evaluator {evaluator} (`harness evaluators` lists "
                         "its metrics)")
        elif value is not None and isinstance(value, (int, float)) and math.isfinite(value):
            if (problem := metric.problem(value, evaluator)) is not None:
                found.append(problem)
    return found


def describe() -> list[str]:
    """`harness evaluators`: each evaluator's name, what it measures, what makes it, its settings and metrics."""
    lines = ["evaluators (a results record's `evaluator`):"]
    for name in evaluator_names():
        spec = evaluator_spec(name)
        lines.append(f"  {name}: {spec.description}")
        made = spec.produced_by + (f" --evaluators {name}" if spec.run is not None else "")
        lines.append(f"    produced by: {made}")
        if spec.config_fields:
            lines.append(f"    settings (EvalConfig): {', '.join(spec.config_fields)}")
        if spec.options is not None and dataclasses.fields(spec.options):
            lines.append("    options:")
            lines += [f"      --{f.name.replace('_', '-')}: {f.metadata.get('help', '')}"
                      for f in dataclasses.fields(spec.options)]
        width = max(len(m.name) for m in spec.metrics)
        lines.append("    metrics (unit, range, direction):")
        for m in spec.metrics:
            direction = {True: ", higher is better", False: ", lower is better", None: ""}[m.higher_is_better]
            lines.append(f"      {m.name:{width}s}  {m.unit} {m.range_text()}{direction}: {m.help}")
    return lines
