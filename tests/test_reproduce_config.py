"""`ReproduceConfig`: `harness grid` / `harness reproduce` flags become one frozen, validated configuration in one
place (`harness.cli.reproduce_config`), and `reproduce` reads nothing else."""

import dataclasses
import inspect

import pytest

from harness import grid as G, reproduce
from harness.cli import build_parser, reproduce_config
from harness.reproduce_config import ReproduceConfig
from harness.slurm import SlurmSettings


def _config(*argv: str) -> ReproduceConfig:
    args = build_parser().parse_args(list(argv))
    args.command_line = "harness " + " ".join(argv)
    return reproduce_config(args)


def test_the_command_line_becomes_one_frozen_configuration():
    cfg = _config("reproduce", "--table", "2", "--preset", "smoke", "--seeds", "2,3", "--only", "kl", "--no-report",
                  "--set", "steps=2", "--recompute", "all", "--workers", "2")
    assert cfg.targets == ("table2",) and cfg.seeds == (2, 3) and cfg.only == ("kl",) and cfg.report is None
    assert cfg.overrides == ("steps=2", "tracker_group=smoke-table2") and cfg.recompute == ("all",)
    assert cfg.workers == 2 and cfg.command_line.startswith("harness reproduce")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.workers = 3
    grid = _config("grid", "--all", "--preset", "smoke")
    assert grid.targets == G.TARGETS
    assert grid.overrides == ()  # listing a grid names no tracker group


@pytest.mark.parametrize("argv, message", [
    (("--executor", "bogus"), "--executor='bogus' is not known; allowed: local, ray, slurm"),
    (("--seeds", "1,1"), "--seeds='1,1': seeds must be distinct"),
    (("--only", ","), "--only=',': expected comma-separated runs"),
])
def test_bad_settings_are_refused_when_the_configuration_is_built(argv, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _config("reproduce", "--table", "2", *argv)


def test_slurm_settings_go_with_the_slurm_executor_only():
    with pytest.raises(ValueError, match="SLURM settings go with --executor slurm"):
        ReproduceConfig(targets=("table2",), executor="local", slurm=SlurmSettings())
    assert _config("reproduce", "--table", "2", "--executor", "slurm", "--dry-run").slurm.time_min == 24 * 60


def test_reproduce_takes_the_configuration_not_a_namespace():
    params = inspect.signature(reproduce.reproduce).parameters
    assert params["config"].annotation in (ReproduceConfig, "ReproduceConfig")
    assert "argparse" not in inspect.getsource(reproduce)
