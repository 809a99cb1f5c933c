"""The tracker registry: trackers found by listing `trainers/tracker_backends/`, each with frozen options read from
the environment, and a tracker module dropped into the package accepted by `report_to` and listed by
`--report-to` with no other file edited."""

import dataclasses
import sys
import textwrap

import pytest

from trainers import tracker_backends as tb
from trainers import trackers

MEMORY = textwrap.dedent('''
    """A tracker for the test: keeps what it is sent in a list."""
    from dataclasses import dataclass

    from trainers.options import option
    from trainers.tracker_backends import register_tracker

    SENT = []


    @dataclass(frozen=True, slots=True)
    class MemoryOptions:
        label: str = option("mem", "a label for the values", env="HARNESS_TEST_MEMORY_LABEL")


    class Memory:
        name = "memory"

        def __init__(self, run_dir, run_name, group, config, state, purge_step, options):
            self.label = options.label

        def log(self, metrics, step):
            SENT.append((self.label, step, metrics))

        log_eval = log

        def state(self):
            return {}

        def close(self, finished):
            pass


    register_tracker("memory", library="json", description="values kept in memory", options=MemoryOptions,
                     backend=Memory)
''')


@pytest.fixture
def memory_module(tmp_path, monkeypatch):
    folder = tmp_path / "more_trackers"
    folder.mkdir()
    (folder / "memory.py").write_text(MEMORY)
    tb.tracker_names()  # the package's own trackers registered before the registry is copied
    monkeypatch.setattr(tb, "__path__", [*tb.__path__, str(folder)])
    monkeypatch.setattr(tb, "_REGISTRY", tb._REGISTRY.copy(tb.__path__))
    yield
    sys.modules.pop("trainers.tracker_backends.memory", None)


def test_the_shipped_trackers_are_registered_with_frozen_documented_options():
    assert tb.tracker_names() == ("tensorboard", "mlflow", "trackio", "wandb")
    for name in tb.tracker_names():
        spec = tb.tracker_spec(name)
        assert spec.options.__dataclass_params__.frozen and "__slots__" in vars(spec.options)
        assert all(f.metadata.get("help") for f in dataclasses.fields(spec.options))
    with pytest.raises(ValueError, match="tracker 'nope' is not known; valid trackers: tensorboard, mlflow"):
        tb.tracker_spec("nope")


def test_options_are_read_from_the_environment():
    assert tb.options_from_env("wandb", {}).project == "harness"
    assert tb.options_from_env("wandb", {"WANDB_PROJECT": "p"}).project == "p"
    assert tb.options_from_env("mlflow", {"MLFLOW_TRACKING_URI": "file:///x"}).tracking_uri == "file:///x"
    with pytest.raises(dataclasses.FrozenInstanceError):
        tb.options_from_env("trackio", {}).project = "q"


def test_a_dropped_in_tracker_is_accepted_listed_and_logged_to(memory_module, tmp_path, monkeypatch):
    from harness.cli import build_parser

    assert trackers.names_errors(("memory",)) == []
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert "memory" in " ".join(sub.choices["train"].format_help().split())
    monkeypatch.setenv("HARNESS_TEST_MEMORY_LABEL", "run-a")
    t = trackers.Trackers(("memory",), tmp_path, run_name="r")
    t.log_step({"step": 1, "objective/scores": 0.5})
    t.close()
    assert sys.modules["trainers.tracker_backends.memory"].SENT == [("run-a", 1, {"objective/scores": 0.5})]
