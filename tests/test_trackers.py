"""Experiment trackers against the real tools: one smoke run reports to TensorBoard, a real MLflow tracking server
(started here on 127.0.0.1 with a SQLite backend, stopped after) and W&B in offline mode; it is killed after logging
step 3 but before its checkpoint, resumed to step 4, and `harness eval` evaluates its step-2 checkpoint. Each tracker
must then hold exactly what metrics.jsonl holds, each step once, and the evaluation's record at step 2."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from harness import presets
from harness.cli import main
from harness.results import ResultsStore
from trainers import identity, trackers
from trainers.config import TrainConfig
from trainers.execution import ExecutionConfig
from trainers.errors import UserError
from trainers.runfolder import RunFolder
from trainers.trainer import PPOTrainer

EVAL: dict = {}  # the metrics of the `harness eval` record the fixture makes at step 2


class Killed(Exception):
    """Stands for a SIGKILL between a step's metrics line and its checkpoint."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--default-artifact-root", str(root / "artifacts")],
        stdout=subprocess.DEVNULL, stderr=open(root / "server.log", "w"), start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            try:
                if urllib.request.urlopen(f"{url}/health", timeout=2).status == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the MLflow server did not start: {(root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def run(prompt_file, mlflow_server, tmp_path_factory):
    """The run folder after a crash at step 3, a resume to step 4 and an evaluation at step 2."""
    env = {"MLFLOW_TRACKING_URI": mlflow_server, "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "WANDB_PROJECT": "harness-test", "WANDB_CONSOLE": "off",
           "HARNESS_CACHE": str(tmp_path_factory.mktemp("cache"))}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    out = tmp_path_factory.mktemp("runs") / "run"
    values = dict(presets.preset("smoke"), prompts=prompt_file, prompt_split="", query_len=256, checkpoint_every=2)
    execution = ExecutionConfig(threads=2, report_to=("tensorboard", "mlflow", "wandb"), tracker_group="grid-test")
    quiet = lambda msg: None  # noqa: E731
    try:
        crashing = PPOTrainer(TrainConfig(**dict(values, steps=3)), out, execution=execution, log=quiet)
        save = crashing._save_checkpoint
        crashing._save_checkpoint = lambda: (_ for _ in ()).throw(Killed()) if crashing.step == 3 else save()
        with pytest.raises(Killed):
            crashing.train()
        assert [r["step"] for r in RunFolder(out).read_metrics()] == [1, 2, 3]
        first_try = RunFolder(out).read_metrics()[2]
        PPOTrainer(TrainConfig(**dict(values, steps=4)), out, execution=execution, log=quiet).train(resume=True)
        results, eval_set = out.parent / "results", out.parent / "evalset.json"
        eval_set.write_text(json.dumps([{"instruction": f"Name a colour number {i}.", "input": ""} for i in range(4)]))
        assert main(["eval", str(out), "--step", "2", "--results", str(results), "--eval-set", str(eval_set),
                     "--max-new-tokens", "6", "--preset", "smoke"]) == 0
        (record,) = ResultsStore(results).records()
        EVAL.update(record["metrics"])
        yield out, first_try, crashing.facts["run_id"]
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def _numbers(row: dict) -> dict[str, float]:
    return trackers.numeric(row)


def test_tensorboard_event_files_equal_metrics_jsonl(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _, _ = run
    rows = RunFolder(out).read_metrics()
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {k for k in _numbers(rows[0])} <= tags
    for key in _numbers(rows[0]):
        logged = events.Scalars(key)
        assert [e.step for e in logged] == [1, 2, 3, 4], key  # the killed try's step 3 purged, each step once
        # event files hold float32
        assert [e.value for e in logged] == [float(np.float32(r[key])) for r in rows], key
    logged = trackers.numeric(EVAL)  # every number of the record (lc_win_rate is null on 4 instructions)
    assert {"win_rate", "true_kl", "n"} <= set(logged)
    for name, value in logged.items():
        assert [(e.step, e.value) for e in events.Scalars(f"eval/winrate/{name}")] == [(2, float(np.float32(value)))]
    assert "config/text_summary" in events.Tags()["tensors"]


def test_mlflow_server_holds_each_step_once_with_the_config(run, mlflow_server):
    from mlflow.tracking import MlflowClient

    out, first_try, run_name = run
    rows = RunFolder(out).read_metrics()
    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("grid-test")
    found = client.search_runs([experiment.experiment_id])
    assert len(found) == 1  # the resumed training and the evaluation reopened the same run
    mlrun = found[0]
    assert mlrun.info.run_name == run_name  # the run id of the configuration that started it
    assert mlrun.info.run_id == json.loads((out / "trackers.json").read_text())["mlflow"]["id"]
    for key in _numbers(rows[0]):
        history = sorted(client.get_metric_history(mlrun.info.run_id, key), key=lambda m: m.step)
        assert [m.step for m in history] == [1, 2, 3, 4], key
        # step 3 went to MLflow before the crash and was not sent again
        expected = [rows[0][key], rows[1][key], first_try[key], rows[3][key]]
        assert [m.value for m in history] == pytest.approx(expected, rel=0, abs=0), key
    eval_history = client.get_metric_history(mlrun.info.run_id, "eval/winrate/win_rate")
    assert [(m.step, m.value) for m in eval_history] == [(2, EVAL["win_rate"])]
    params = mlrun.data.params
    assert params["regularizer"] == "kl" and float(params["kl_coef"]) == 0.02 and params["steps"] == "3"
    assert json.loads(params["report_to"]) == ["tensorboard", "mlflow", "wandb"]


def wandb_records(path: Path):
    """The records of a W&B transaction log (`run-ID.wandb`, what `wandb sync` uploads): a LevelDB-style log of
    32 KiB blocks, each record a 7-byte header (crc32, length, type: 1 full, 2 first, 3 middle, 4 last) and a
    protobuf `Record` of W&B's own schema."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block, header = path.read_bytes(), 32768, 7
    assert data[:4] == b":W&B"
    pos, parts = header, b""
    while pos + header <= len(data):
        if block - pos % block < header:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + header])
        chunk, pos = data[pos + header:pos + header + length], pos + header + length
        parts = chunk if kind in (1, 2) else parts + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(parts)
            yield record


def _items(updates) -> dict:
    return {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in updates}


def test_wandb_offline_run_summary_matches(run):
    out, first_try, run_name = run
    rows = RunFolder(out).read_metrics()
    state = json.loads((out / "trackers.json").read_text())["wandb"]
    # a session's folder is named by the second it started; wandb adds -1, -2 to a second session of the same id
    # that starts within the same second
    sessions = sorted((out / "wandb").glob(f"offline-run-*-{state['id']}*/run-{state['id']}.wandb"),
                      key=lambda p: p.stat().st_mtime)
    assert len(sessions) == 3  # the killed training, its resumption, the evaluation: one W&B run id
    logs = [list(wandb_records(p)) for p in sessions]
    started = [r.run for log in logs for r in log if r.WhichOneof("record_type") == "run"]
    assert {(r.run_id, r.run_group, r.project, r.display_name) for r in started} == {
        (state["id"], "grid-test", "harness-test", run_name)}
    config = _items(started[0].config.update)
    assert config["regularizer"] == "kl" and config["kl_coef"] == 0.02
    assert config["report_to"] == ["tensorboard", "mlflow", "wandb"]
    history = [(i, _items(r.history.item)) for i, log in enumerate(logs) for r in log
               if r.WhichOneof("record_type") == "history"]
    steps = [h["_step"] for _, h in history if "objective/scores" in h]
    assert steps == [1, 2, 3, 4]  # step 3 was sent before the crash and not again
    expected = {1: rows[0], 2: rows[1], 3: first_try, 4: rows[3]}
    for _, h in (x for x in history if "objective/scores" in x[1]):
        assert {k: h[k] for k in _numbers(rows[0])} == _numbers(expected[h["_step"]])
    summary = _items([r for r in logs[1] if r.WhichOneof("record_type") == "summary"][-1].summary.update)
    assert {k: summary[k] for k in _numbers(rows[-1])} == _numbers(rows[-1]) and summary["_step"] == 4
    evaluation = [h for i, h in history if i == 2]
    assert len(evaluation) == 1 and evaluation[0]["eval/winrate/win_rate"] == EVAL["win_rate"]
    assert evaluation[0]["eval/ppo_step"] == 2 and evaluation[0]["eval/winrate/n"] == EVAL["n"] == 4


def test_a_missing_tracker_library_is_one_line_naming_its_extra():
    with pytest.raises(UserError) as e:  # trackio is not installed where the tests run
        trackers.check_installed(("tensorboard", "trackio"))
    assert str(e.value).count("\n") == 0 and "pip install 'harness-lora-rlhf[trackio]'" in str(e.value)


@pytest.mark.parametrize("value, message", [
    ("tensorboard,nope", "'nope' is not known; allowed: tensorboard, mlflow, trackio, wandb, or none"),
    ("none,wandb", "'none' cannot be combined with a tracker"),
    ("trackio", "the 'trackio' library is not installed; install its extra: pip install 'harness-lora-rlhf[trackio]'"),
])
def test_the_command_line_refuses_a_bad_report_to_before_any_work(value, message, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "harness", "train", "--preset", "smoke", "--out", str(tmp_path / "r"),
                           "--report-to", value], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).parents[1])
    assert proc.returncode == 2
    assert message in proc.stderr and "--report-to" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()  # refused before the run folder was made


def test_trackers_are_an_execution_setting_outside_the_run_id():
    plain = presets.resolve("smoke")
    tracked = presets.resolve("smoke", None, ["report_to=wandb,mlflow", "tracker_group=g"])
    assert tracked.train == plain.train and tracked.execution.report_to == ("wandb", "mlflow")
    assert identity.run_id(plain.train) == identity.run_id(tracked.train)
    with pytest.raises(ValueError, match="report_to='tensorboard,tensorboard' names a tracker twice"):
        ExecutionConfig(report_to=("tensorboard", "tensorboard"))
    assert presets.resolve("smoke", None, ["report_to=none"]).execution.report_to == ("none",)
    assert presets.resolve("smoke").execution.report_to == presets.resolve("tiny").execution.report_to \
        == ("tensorboard",)


def test_the_trackio_adapter_calls_its_api_in_order(tmp_path, monkeypatch):
    """trackio is not installed here: a stand-in module with its API's signature records what the adapter asks."""
    import importlib.machinery
    import types

    calls = []
    fake = types.ModuleType("trackio")
    fake.__spec__ = importlib.machinery.ModuleSpec("trackio", None)

    def init(project, name=None, group=None, config=None, resume="never"):
        calls.append(("init", project, name, group, resume, config))

    fake.init = init
    fake.log = lambda metrics, step=None: calls.append(("log", step, metrics))
    fake.finish = lambda: calls.append(("finish",))
    monkeypatch.setitem(sys.modules, "trackio", fake)
    monkeypatch.delenv("TRACKIO_PROJECT", raising=False)
    sink = trackers.Trackers(("trackio",), tmp_path, run_name="kl-lora-s1-x", group="tiny-table2",
                             config={"kl_coef": 0.02})
    sink.log_step({"step": 1, "objective/scores": 0.5, "memory/kind": "peak_rss"})
    sink.log_step({"step": 1, "objective/scores": 0.5})  # a step it holds is not sent again
    sink.log_evaluation("winrate", 1, {"win_rate": 50.0, "n": 4})
    sink.close()
    assert calls == [("init", "harness", "kl-lora-s1-x", "tiny-table2", "allow", {"kl_coef": 0.02}),
                     ("log", 1, {"objective/scores": 0.5}),
                     ("log", 1, {"eval/winrate/win_rate": 50.0, "eval/winrate/n": 4.0}), ("finish",)]
    assert json.loads((tmp_path / "trackers.json").read_text())["trackio"]["step"] == 1
