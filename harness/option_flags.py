"""Command-line flags generated from registered components' options dataclasses (`trainers.options.option`).

`--judge NAME` and one `--judge-FIELD` flag per option field of any judge (`add_judge_arguments`); the flag's type,
range and `--help` line come from the field, a field several judges share gets one flag whose help names each
judge's meaning. `judge_from_args` turns the parsed flags into the chosen judge's options, refusing a flag that
judge does not take. A command's own options dataclass (an evaluator's, `evals.evaluators`) becomes plain
`--FIELD` flags (`add_own_flags`).
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from harness.errors import float_in, int_in
from trainers.options import value_type


def _arg_type(cls: type, f: dataclasses.Field) -> dict[str, Any]:
    kind, meta = value_type(cls, f.name), f.metadata
    if kind is bool:
        return {"action": "store_true", "default": None}
    if kind is int and meta.get("low") is not None:
        return {"type": int_in(meta["low"], meta["high"])}
    if kind is float and meta.get("low") is not None:
        return {"type": float_in(meta["low"], meta["high"], low_open=meta.get("low_open", False))}
    return {"type": kind} if kind in (int, float) else {}


def add_option_flags(group, prefix: str, owners: dict[str, type]) -> list[str]:
    """One `--PREFIX-FIELD` flag per field of the `owners`' ({name: options dataclass}) options, default None
    (the owner's own default applies); returns the field names, in order."""
    found: dict[str, list[tuple[str, type, dataclasses.Field]]] = {}
    for owner, cls in owners.items():
        for f in dataclasses.fields(cls):
            found.setdefault(f.name, []).append((owner, cls, f))
    for name, takers in found.items():
        _, cls, first = takers[0]
        text = "; ".join(f"{owner}: {f.metadata.get('help', '')}" for owner, _, f in takers)
        kwargs = {"default": None, "dest": f"{prefix}_{name}", "help": text, **_arg_type(cls, first)}
        metavars = {f.metadata.get("metavar") for _, _, f in takers}
        kwargs["metavar"] = metavars.pop() if len(metavars) == 1 and None not in metavars else name.upper()
        group.add_argument(f"--{prefix}-{name.replace('_', '-')}", **kwargs)
    return list(found)


def add_own_flags(p: argparse.ArgumentParser, cls: type) -> None:
    """One `--FIELD` flag per field of a command's own options dataclass (an evaluator's), its default the
    field's; `options_from_args` builds the dataclass back, which checks every value again."""
    for f in dataclasses.fields(cls):
        kwargs = {"default": f.default, "dest": f.name, "help": f.metadata.get("help", ""), **_arg_type(cls, f)}
        if f.metadata.get("metavar"):
            kwargs["metavar"] = f.metadata["metavar"]
        p.add_argument(f"--{f.name.replace('_', '-')}", **kwargs)


def options_from_args(args: argparse.Namespace, cls: type) -> Any:
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def add_judge_arguments(p: argparse.ArgumentParser, by_preset: bool = False) -> None:
    """`--judge` and every judge's options as flags, in a group of their own in `--help`. With `by_preset`, an
    unnamed judge is the `--preset`'s grid judge (`default_judge`)."""
    from evals import judges

    names = judges.judge_names()
    listed = ", ".join(f"{n}{' (offline)' if judges.judge_spec(n).offline else ''}" for n in names)
    default = f"the --preset's grid judge, else {judges.DEFAULT}" if by_preset else judges.DEFAULT
    group = p.add_argument_group("judge", "the judge and its options (each flag names the judges that take it; "
                                 "`harness judges` describes them)")
    group.add_argument("--judge", default=None, metavar="NAME", help=f"{listed} (default: {default})")
    add_option_flags(group, judges.PREFIX, {n: judges.judge_spec(n).options for n in names})


def judge_from_args(args: argparse.Namespace) -> tuple[str, Any]:
    """(judge name, its options) from the flags `add_judge_arguments` made; a ValueError names a flag the judge
    does not take, an unknown judge or a value its options refuse."""
    from evals import judges

    fields = {f.name for n in judges.judge_names() for f in dataclasses.fields(judges.judge_spec(n).options)}
    given = {name: getattr(args, f"{judges.PREFIX}_{name}", None) for name in fields}
    name = args.judge or default_judge(getattr(args, "preset", None))
    return name, judges.judge_options(name, **given)


def default_judge(preset: str | None) -> str:
    """The judge of a command that names none: the preset's grid judge (the rubric for `tiny`, the learned judge for
    `miniature`), so `harness eval --preset P` judges as P's grid does; else the offline default."""
    from evals import judges
    from harness.grid import GRIDS

    return GRIDS[preset].judge if preset in GRIDS else judges.DEFAULT


def describe_judges() -> list[str]:
    """`harness judges`: each judge's name, whether it runs offline, what it is and its flags, then the lines its
    module adds (the openai judge's annotator configs)."""
    from evals import judges

    names = judges.judge_names()
    width = max(map(len, names))
    lines = ["judges (--judge NAME):"]
    for name in names:
        spec = judges.judge_spec(name)
        where = "offline" if spec.offline else "server/model"
        lines.append(f"  {name:{width}s}  {where:12s}  {spec.description}"
                     + (" [default]" if name == judges.DEFAULT else ""))
        for f in dataclasses.fields(spec.options):
            flag = f"--{judges.PREFIX}-{f.name.replace('_', '-')}"
            lines.append(f"  {'':{width}s}  {'':12s}    {flag}: {f.metadata.get('help', '')}")
    for name in names:
        if (details := judges.judge_spec(name).details) is not None:
            lines += details()
    return lines
