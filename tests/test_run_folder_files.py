"""The run folder's files have one reader and writer, `trainers.runfolder.RunFolder`: the file names are spelled in
`trainers.runfolder.names` alone, every file survives a write and a read unchanged, and a damaged file is refused
with the same line by every command that reads it (evaluation, runs table, curves, resume)."""

from __future__ import annotations

import ast
import json
import re
import shutil
from pathlib import Path

import pytest

from harness import cli
from trainers.errors import UserError
from trainers.runfolder import RunFolder, read_state, verify, write_state
from trainers.runfolder.names import CONFIG, METRICS

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("trainers", "evals", "harness", "benchmarks")
NAMES_MODULE = "trainers/runfolder/names.py"
RUN_FILES = ("config.json", "run.json", "metrics.jsonl", "state.json", "trackers.json", "grid-config.json",
             "train.log", ".lock", "checkpoints")
# the same name for another kind of folder: a Hugging Face model directory's architecture
OTHER_FOLDERS = {("trainers/specs.py", "config.json")}
AS_PATH = re.compile(r"(^|/)(" + "|".join(map(re.escape, RUN_FILES)) + r")$")


def _docstrings(tree: ast.AST) -> set[int]:
    kinds = (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    return {id(node.body[0].value) for node in ast.walk(tree) if isinstance(node, kinds) and node.body
            and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}


def run_file_names_in_code() -> set[tuple[str, str]]:
    """(module path, name) of every string in code (docstrings aside) that is a run-folder file's name or a path
    ending in one: what building that file's path takes. Messages that mention a name in a sentence are not."""
    found = set()
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            docs = _docstrings(tree)
            for node in ast.walk(tree):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
                    match = AS_PATH.search(node.value.strip())
                    if match:
                        found.add((path.relative_to(ROOT).as_posix(), match.group(2)))
    return found


def test_run_folder_files_are_named_only_by_the_run_folder_type():
    found = run_file_names_in_code()
    assert {name for module, name in found if module == NAMES_MODULE} == set(RUN_FILES)
    assert {(m, n) for m, n in found if m != NAMES_MODULE} <= OTHER_FOLDERS


# ---------------------------------------------------------------- every file, written then read

FACTS = {"run_id": "kl-lora-s0-abc", "device": "cpu", "parameters": {"trainable": 3, "total": 10,
                                                                    "policy_trainable": 2, "policy_total": 5}}


def test_every_file_round_trips(tmp_path):
    run = RunFolder(tmp_path / "run")
    assert not run.has_config() and run.read_metrics() == [] and run.latest_checkpoint() is None
    assert run.run_id() == "run" and run.read_facts_if_any() == {} and run.read_trackers() == {}

    config = {"steps": 3, "regularizer": "kl", "lr": 1e-5}
    run.write_config(config)
    run.write_facts(FACTS)
    assert run.read_config() == config and run.read_facts() == FACTS and run.run_id() == FACTS["run_id"]
    assert RunFolder.find(tmp_path) == [run] and RunFolder(str(run.path)) == run

    rows = [{"step": s, "objective/true_kl": 0.01 * s, "memory/kind": "peak_rss"} for s in (1, 2, 3)]
    for row in rows:
        run.append_metrics(row)
    assert run.read_metrics() == rows and run.completed_steps() == 3 and run.metrics_at(2) == rows[1]
    run.keep_metrics_through(2)
    assert run.read_metrics() == rows[:2] and run.metrics_at(3) is None

    for step in (1, 2):
        folder = run.checkpoint_dir(step)
        folder.mkdir(parents=True)
        (folder / "value.safetensors").write_bytes(b"weights %d" % step)
        written = write_state(folder, {"step": step, "kl_coef": 0.05, "run_id": FACTS["run_id"]})
        assert read_state(folder) == written == verify(folder)
    run.checkpoint_dir(3).mkdir()  # no state.json: not complete, not listed
    assert run.checkpoints() == [run.checkpoint_dir(1), run.checkpoint_dir(2)]
    assert run.latest_checkpoint() == run.checkpoint_dir(2) and run.checkpoint_steps() == [1, 2]
    assert run.is_finished(2) and not run.is_finished(3)
    assert RunFolder.of_checkpoint(run.checkpoint_dir(1)) == run and RunFolder.of_checkpoint(run.path) is None
    assert RunFolder.find(tmp_path) == [run]  # a checkpoint's own config files are not runs

    with run.lock():
        assert run.lock_state() == "held"
        with pytest.raises(UserError, match="is in use by another process"):
            RunFolder(run.path).lock().acquire()
    assert run.lock_state() == "free"

    saved = {"tensorboard": {"name": "kl-lora-s0-abc", "step": 2}}
    run.write_trackers(saved)
    assert run.read_trackers() == saved
    run.forget_trackers()
    assert run.read_trackers() == {}

    grid_config = run.write_grid_config({"steps": 3, "threads": 2})
    assert grid_config == run.grid_config_path and json.loads(grid_config.read_text()) == {"steps": 3, "threads": 2}
    assert not run.failed()
    run.mark_failed("Traceback ...\nValueError: boom\n")
    assert run.failed() and run.failed_path.read_text() == "Traceback ...\nValueError: boom\n"
    run.clear_failed()
    assert not run.failed()


def test_a_metrics_log_cut_short_by_a_kill_loses_only_its_last_step(tmp_path):
    run = RunFolder(tmp_path)
    for step in (1, 2):
        run.append_metrics({"step": step})
    with run.metrics_path.open("a") as f:
        f.write('{"step": 3, "objective/sco')
    assert [r["step"] for r in run.read_metrics()] == [1, 2]
    run.keep_metrics_through(2)  # what a resume does: the torn step is redone
    assert run.metrics_path.read_text() == '{"step": 1}\n{"step": 2}\n'


# ---------------------------------------------------------------- a damaged file: one line, the same everywhere

DAMAGE = {
    "metrics line not JSON": (METRICS, lambda text: text.replace("\n", "\n{oops\n", 1),
                              r"metrics\.jsonl, line 2: not a JSON record"),
    "metrics field not a number": (METRICS, lambda text: text.replace('"objective/true_kl": ', '"objective/true_kl": '
                                                                      '"high", "was": ', 1),
                                   r"metrics\.jsonl, line 1: objective/true_kl='high' must be a number"),
    "config not an object": (CONFIG, lambda text: "[1]\n", r"config\.json must hold a JSON object, not list"),
    "config not JSON": (CONFIG, lambda text: text[:20], r"config\.json cannot be read as JSON"),
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, prompt_file):
    """A finished 2-step smoke run with a checkpoint at each step (copied by each test that damages it)."""
    from harness import presets
    from trainers.config import TrainConfig
    from trainers.trainer import PPOTrainer

    values = presets.preset("smoke")
    values.update(prompts=prompt_file, prompt_split="", query_len=256, steps=2, checkpoint_every=1)
    out = tmp_path_factory.mktemp("run") / "smoke"
    PPOTrainer(TrainConfig(**values), out, log=lambda m: None).train()
    return out


def error_line(capsys, *argv) -> str:
    code = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("harness: error: ")]  # a weight-loading bar aside
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0].removeprefix("harness: error: ")


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_file_is_refused_alike_by_every_reader(trained, tmp_path, monkeypatch, capsys, damage):
    from harness.reproduce import _metrics

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "runs" / "smoke"
    shutil.copytree(trained, run)
    good_config = tmp_path / "config.json"
    shutil.copy(run / CONFIG, good_config)
    name, edit, message = DAMAGE[damage]
    (run / name).write_text(edit((run / name).read_text()))

    lines = {
        "evaluation": error_line(capsys, "eval", run, "--results", tmp_path / "results", "--preset", "smoke"),
        "runs table": error_line(capsys, "runs", "--runs", tmp_path / "runs", "--results", tmp_path / "results"),
        "resume": error_line(capsys, "train", "--config", good_config, "--out", run, "--resume"),
    }
    if name == METRICS:  # the report's training curves, and the grid's count of steps done
        with pytest.raises(UserError) as curves:
            _metrics(run)
        lines["curves"] = str(curves.value)
    assert len(set(lines.values())) == 1, lines
    line = lines["evaluation"]
    assert line.startswith(str(run / name)) and re.search(message, line), line
    assert not (tmp_path / "results").exists()


def test_a_damaged_state_json_is_refused_alike_by_evaluation_and_resume(trained, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    good_config = tmp_path / "config.json"
    shutil.copy(run / CONFIG, good_config)
    state = RunFolder(run).latest_checkpoint() / "state.json"
    state.write_text(state.read_text()[:-30])
    evaluation = error_line(capsys, "eval", run, "--results", tmp_path / "results", "--preset", "smoke")
    resume = error_line(capsys, "train", "--config", good_config, "--set", "steps=3", "--out", run, "--resume")
    assert evaluation == resume and evaluation.startswith(f"{state} cannot be read")
