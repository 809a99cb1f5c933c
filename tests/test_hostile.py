"""Careless and hostile input, by family: each case exits with a status, prints one line naming the option, field
or file (its value and what is allowed), and leaves what was on disk as it was. No traceback, no silent acceptance,
no data loss, no leak.

Families: checkpoints (edited, damaged, replaced); other run-folder files; the report (where it goes, a write that
fails half way); records (ids, duplicates, text that reaches Markdown/CSV/LaTeX, ranges); numbers that cannot be
meant; settings and data files; judges and models that are not what they claim; credentials.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import stat
from pathlib import Path

import pytest

from harness import cli
from harness.results import ResultsStore, make_record


# ---------------------------------------------------------------- helpers

def run(capsys, *argv) -> tuple[int, str]:
    code = cli.main([str(a) for a in argv])
    return code, capsys.readouterr().err


def one_line(err: str) -> str:
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("harness: error: "), err
    assert "Traceback" not in err
    return lines[0]


def refused(capsys, *argv, code: int = 2) -> str:
    """The one error line of a command expected to fail with `code`."""
    got, err = run(capsys, *argv)
    assert got == code, err
    return one_line(err)


def parser_refused(capsys, *argv) -> str:
    """The parser's refusal: exit 2 and one line naming the option, the value and what is allowed."""
    with pytest.raises(SystemExit) as exit_:
        cli.main([str(a) for a in argv])
    assert exit_.value.code == 2
    lines = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("harness") and ": error: argument " in lines[0], lines
    return lines[0]


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Every file under `root` by content and mode: what 'nothing changed' compares (a run folder's empty lock
    file aside: taking the lock creates it)."""
    if not root.exists():
        return {}
    return {p.relative_to(root).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mode)
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, prompt_file):
    """A finished 2-step smoke run with checkpoints at steps 1 (its optimizer state dropped) and 2 (copied by each
    test that damages it)."""
    from harness import presets
    from trainers.config import TrainConfig
    from trainers.trainer import PPOTrainer

    values = presets.preset("smoke")
    values.update(prompts=prompt_file, prompt_split="", query_len=256, steps=2, checkpoint_every=1)
    out = tmp_path_factory.mktemp("run") / "smoke"
    PPOTrainer(TrainConfig(**values), out, log=lambda m: None).train()
    return out


@pytest.fixture
def run_copy(trained, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    return out


def step2(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / "step-000002"


def edit_state(run_dir: Path, **fields) -> None:
    path = step2(run_dir) / "state.json"
    state = json.loads(path.read_text())
    for k, v in fields.items():
        if v is ...:
            state.pop(k)
        else:
            state[k] = v
    path.write_text(json.dumps(state))


# ---------------------------------------------------------------- checkpoints: evaluation verifies what it loads

def test_eval_refuses_a_checkpoint_file_that_does_not_match_its_manifest(run_copy, tmp_path, cache, capsys):
    weights = step2(run_copy) / "policy" / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF
    data[-2] ^= 0xFF
    weights.write_bytes(bytes(data))
    before = snapshot(run_copy)
    line = refused(capsys, "eval", run_copy, "--results", tmp_path / "results", "--preset", "smoke")
    assert f"{weights} does not match the sha256 recorded in" in line
    assert not (tmp_path / "results").exists() and snapshot(run_copy) == before


@pytest.mark.parametrize("fields, message", [
    ({"kl_coef": 5.0}, "does not match its 'state_sha256': a field was edited"),
    ({"kl_coef": ...}, "kl_coef=None must be a finite number >= 0"),
    ({"kl_coef": "0.02"}, "kl_coef='0.02' must be a finite number >= 0"),
    ({"kl_coef": -1}, "kl_coef=-1 must be a finite number >= 0"),
    ({"step": 10**30}, f"step={10**30} must be an integer in [0, 1000000000]"),
    ({"files": ["policy"]}, "'files' must map file names to sha256 digests"),
    ({"state_sha256": ...}, "has no seal ('state_sha256')"),
])
def test_an_edited_state_json_is_refused_by_eval_and_resume(run_copy, tmp_path, cache, capsys, fields, message):
    edit_state(run_copy, **fields)
    before = snapshot(run_copy)
    line = refused(capsys, "eval", run_copy, "--results", tmp_path / "results", "--preset", "smoke")
    assert str(step2(run_copy) / "state.json") in line and message in line
    line = refused(capsys, "train", "--config", run_copy / "config.json", "--set", "steps=3", "--out", run_copy,
                   "--resume")
    assert message in line and str(step2(run_copy) / "state.json") in line
    assert not (tmp_path / "results").exists() and snapshot(run_copy) == before


def test_a_state_json_with_nan_is_named_not_misread(run_copy, tmp_path, cache, capsys):
    path = step2(run_copy) / "state.json"
    path.write_text(path.read_text().replace('"kl_coef": ', '"kl_coef": NaN, "was": '))
    line = refused(capsys, "eval", run_copy, "--results", tmp_path / "results", "--preset", "smoke")
    assert str(path) in line and "NaN is not a number JSON allows" in line


def test_outputs_are_cached_by_the_checkpoints_content(run_copy):
    from evals.generate import resolve_target
    from trainers.runfolder import content_digest, seal_state, verify
    from trainers.runfolder.state import file_manifest

    first = resolve_target(str(run_copy))
    folder = step2(run_copy)
    assert first.digest == content_digest(verify(folder))
    (folder / "scheduler.pt").write_bytes((folder / "scheduler.pt").read_bytes() + b"\0")  # replaced in place
    state = json.loads((folder / "state.json").read_text())
    state["files"] = file_manifest(folder)
    (folder / "state.json").write_text(json.dumps(seal_state(state)))
    second = resolve_target(str(run_copy))
    assert second.checkpoint == first.checkpoint and second.digest != first.digest
    assert second.identity() != first.identity()  # the outputs' cache key holds the identity


def test_an_older_checkpoint_without_its_optimizer_state_is_still_evaluated(run_copy):
    from evals.generate import resolve_target

    older = run_copy / "checkpoints" / "step-000001"
    listed = json.loads((older / "state.json").read_text())["files"]
    assert not (older / "optimizer.pt").exists() and "optimizer.pt" in listed
    target = resolve_target(str(run_copy), step=1)
    assert target.step == 1 and target.checkpoint == str(older) and target.digest
    (older / "rng.pt").write_bytes(b"damaged")
    with pytest.raises(ValueError, match=r"rng\.pt does not match the sha256"):
        resolve_target(str(run_copy), step=1)


def test_every_checkpoint_file_is_group_readable(trained):
    mask = __import__("os").umask(0o022)
    __import__("os").umask(mask)
    if mask & stat.S_IRGRP:
        pytest.skip(f"umask {mask:03o} withholds group read from every file")
    for path in step2(trained).rglob("*"):
        assert path.stat().st_mode & stat.S_IRGRP, path


def test_a_saved_reward_model_is_group_readable(tmp_path):
    import os

    import torch

    from trainers.heads import ScalarHeadModel, save_reward_model

    mask = os.umask(0o022)
    os.umask(mask)
    if mask & stat.S_IRGRP:
        pytest.skip(f"umask {mask:03o} withholds group read from every file")
    model = ScalarHeadModel.__new__(ScalarHeadModel)
    torch.nn.Module.__init__(model)
    model.head, model.score_token = torch.nn.Linear(4, 1), "eos"
    out = save_reward_model(model, None, tmp_path / "rm", backbone_spec="tiny-random-llama")
    for path in [out, *out.rglob("*")]:
        assert path.stat().st_mode & stat.S_IRGRP, path


# ---------------------------------------------------------------- run-folder files other than checkpoints

@pytest.mark.parametrize("line, message", [
    ('{"step": 1}\n{"step": "2"}\n{"step": 3}\n', "line 2: step='2' must be an integer in [1, 1000000000]"),
    ('{"step": 1}\n{"step": 100000000000000000000}\n{"step": 3}\n', "line 2: step=100000000000000000000 must be"),
    ('{"step": 1, "objective/true_kl": "0.1"}\n{"step": 2}\n', "line 1: objective/true_kl='0.1' must be a number"),
    ('[1]\n{"step": 2}\n', "line 1: a record is a JSON object, not list"),
])
def test_a_damaged_metrics_log_is_named_by_line_and_field(tmp_path, line, message):
    from trainers.errors import UserError
    from trainers.runfolder import RunFolder

    path = tmp_path / "metrics.jsonl"
    path.write_text(line)
    with pytest.raises(UserError) as error:
        RunFolder(tmp_path).read_metrics()
    assert str(error.value).startswith(f"{path}, line ") and message in str(error.value)


@pytest.mark.parametrize("facts, message", [
    ({}, "parameters=None must hold the integers >= 0 trainable, total, policy_trainable, policy_total"),
    ({"parameters": {"trainable": 1, "total": 2, "policy_trainable": 5, "policy_total": 2}},
     "must satisfy 0 <= trainable <= total"),
    ({"parameters": {"trainable": 1, "total": 2, "policy_trainable": 1, "policy_total": 2}, "world_size": 0},
     "world_size=0 must be an integer in [1, 100000]"),
])
def test_a_damaged_run_json_is_named_by_field(tmp_path, facts, message):
    from trainers.errors import UserError
    from trainers.runfolder import RunFolder

    path = tmp_path / "run.json"
    path.write_text(json.dumps(facts))
    with pytest.raises(UserError) as error:
        RunFolder(tmp_path).read_facts()
    assert str(error.value).startswith(f"{path}: ") and message in str(error.value)


def test_a_damaged_config_json_is_named_by_eval(run_copy, tmp_path, cache, capsys):
    path = run_copy / "config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, "lr": "fast"}))
    before = snapshot(run_copy)
    line = refused(capsys, "eval", run_copy, "--results", tmp_path / "results")
    assert "lr='fast'" in line and snapshot(run_copy) == before


def test_a_config_json_edited_after_training_is_refused_by_eval(run_copy, tmp_path, cache, capsys):
    path = run_copy / "config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, "kl_coef": 0.5}))  # valid, but not the run the checkpoint belongs to
    before = snapshot(run_copy)
    line = refused(capsys, "eval", run_copy, "--results", tmp_path / "results")
    assert f"{path} (run " in line and "is not the configuration that wrote" in line
    assert "config.json was changed after training" in line
    assert snapshot(run_copy) == before and not (tmp_path / "results").exists()



# ---------------------------------------------------------------- report: whole or not at all, and where it goes

def small_store(root: Path, **fields) -> ResultsStore:
    store = ResultsStore(root)
    values = dict(preset="smoke", run_id="r", label={}, step=1, evaluator="winrate", metrics={"win_rate": 50.0},
                  judge={"name": "j", "model": "m", "version": "1"}, eval_set={"name": "e", "hash": "h", "n": 1})
    store.put(make_record(**{**values, **fields}))
    return store


@pytest.mark.parametrize("out, message", [
    ("", "--out is empty; give the folder to write"),
    (" ", "--out is empty; give the folder to write"),
    (".", "--out '.' is the current folder or one above it"),
    ("..", "--out '..' is the current folder or one above it"),
    ("index.md", "--out 'index.md' is a file; give a folder"),
])
def test_report_refuses_an_empty_or_current_folder_out(tmp_path, capsys, monkeypatch, out, message):
    small_store(tmp_path / "work" / "results")
    monkeypatch.chdir(tmp_path / "work")
    (tmp_path / "work" / "index.md").write_text("mine")
    before = snapshot(tmp_path)
    assert message in refused(capsys, "report", "--results", "results", "--out", out)
    assert snapshot(tmp_path) == before


def test_a_report_that_fails_half_way_leaves_the_old_one_whole(tmp_path, capsys, monkeypatch):
    from harness import report_tables

    small_store(tmp_path / "results")
    out = tmp_path / "report"
    assert run(capsys, "report", "--results", tmp_path / "results", "--out", out)[0] == 0
    before = snapshot(out)

    def full_disk(table, path):
        path.write_text("x" * 100)  # a table cut short, then the disk is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report_tables, "write_csv", full_disk)
    line = refused(capsys, "report", "--results", tmp_path / "results", "--out", out)
    assert f"{out}: cannot be written (No space left on device); nothing in {out} was changed" in line
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report", "results"]  # no temporary folder left


def test_a_failed_write_names_its_file(tmp_path, capsys, monkeypatch):
    from harness import report_tables

    small_store(tmp_path / "results")
    out = tmp_path / "report"

    def denied(table, path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(report_tables, "write_csv", denied)
    line = refused(capsys, "report", "--results", tmp_path / "results", "--out", out)
    assert f"{out / 'table1.csv'}: cannot be written (Permission denied)" in line
    assert not out.exists()


def test_a_full_disk_names_the_file_being_written_and_keeps_the_old_one(tmp_path, monkeypatch):
    import os

    from trainers import io
    from trainers.errors import UserError

    path = tmp_path / "records" / "a.json"
    io.atomic_write_text(path, "old")

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(UserError) as error:
        io.atomic_write_text(path, "new")
    assert str(error.value) == f"{path}: cannot be written (No space left on device); the file was left as it was"
    assert path.read_text() == "old" and sorted(p.name for p in path.parent.iterdir()) == ["a.json"]


# ---------------------------------------------------------------- records: one id one file, text that stays text

def edited_record(store: ResultsStore, name: str | None = None, **fields) -> Path:
    """The store's one record with `fields` changed, written as records/<name>.json (default: its own file)."""
    (rec,) = list(store.records())
    path = store.record_path(rec["record_id"])
    target = path if name is None else path.with_name(f"{name}.json")
    target.write_text(json.dumps({**rec, **fields}))
    return target


def report_refused(capsys, tmp_path: Path) -> str:
    out = tmp_path / "report"
    out.mkdir(exist_ok=True)
    (out / "table2.md").write_text("the last good report")
    before = snapshot(out)
    line = refused(capsys, "report", "--results", tmp_path / "results", "--out", out)
    assert snapshot(out) == before
    return line


def test_a_record_whose_file_name_is_not_its_id_is_refused(tmp_path, capsys):
    store = small_store(tmp_path / "results")
    (rec,) = list(store.records())
    moved = store.record_path(rec["record_id"]).rename(tmp_path / "results" / "records" / "copy.json")
    line = report_refused(capsys, tmp_path)
    assert f"{moved}: record_id='{rec['record_id']}' does not match the file name" in line


def test_two_records_of_one_id_with_different_results_are_an_error(tmp_path, capsys):
    store = small_store(tmp_path / "results")
    (rec,) = list(store.records())
    twin = edited_record(store, name="0000000000000000", metrics={"win_rate": 90.0})
    line = report_refused(capsys, tmp_path)
    assert f"{twin}: record_id='{rec['record_id']}' does not match the file name" in line


@pytest.mark.parametrize("fields, message", [
    ({"run_id": "r | x |\n| injected | row |"}, "run_id='r | x |\\n| injected | row |' must be a non-empty string"),
    ({"run_id": "$\\frac{1}{0}$"}, "run_id='$\\\\frac{1}{0}$' must be a non-empty string"),
    ({"step": 10**30}, f"step={10**30} must be an integer in [0, 1000000000]"),
    ({"step": True}, "step=True must be an integer in [0, 1000000000]"),
    ({"metrics": {"win_rate": 50.0, "n": 1e300}}, "metrics.n=1e+300 must be a finite number of magnitude <= 1e+15"),
    ({"label": {"regularizer": "kl\n|x|", "lora": True, "seed": 1, "baseline": None}}, "regularizer is null or 1-64"),
    ({"label": {"regularizer": "kl", "lora": True, "seed": 2**70, "baseline": None}}, "seed an integer of at most 64"),
    ({"judge": {"name": "j", "model": "m\r\n", "version": "1"}}, "judge={'name': 'j', 'model': 'm\\r\\n'"),
    ({"eval_set": {"name": "e", "hash": "h", "n": 10**12}}, "n: an integer in [0, 1000000000]"),
])
def test_a_record_field_out_of_range_is_named(tmp_path, capsys, fields, message):
    store = small_store(tmp_path / "results")
    path = edited_record(store, **fields)
    line = report_refused(capsys, tmp_path)
    assert str(path) in line and message in line


def test_a_nan_in_a_record_file_is_named(tmp_path, capsys):
    store = small_store(tmp_path / "results")
    path = edited_record(store)
    path.write_text(path.read_text().replace('"win_rate": 50.0', '"win_rate": NaN'))
    line = report_refused(capsys, tmp_path)
    assert f"{path}: not valid JSON (NaN is not a number JSON allows)" in line


@pytest.mark.parametrize("text, message", [
    ("{", "not valid JSON"),
    ("[1]", "must hold a JSON object (a run's manifest), not list"),
    ('{"command": "harness train\\n| x |"}', "must be one line without control characters"),
    ('{"harness": "v1"}', "harness='v1' must be a dict"),
])
def test_a_malformed_run_manifest_is_named(tmp_path, capsys, text, message):
    small_store(tmp_path / "results")
    path = tmp_path / "results" / "runs" / "r" / "manifest.json"
    path.parent.mkdir(parents=True)
    path.write_text(text)
    line = report_refused(capsys, tmp_path)
    assert str(path) in line and message in line


@pytest.mark.parametrize("text, message", [
    ("{}", "must hold a JSON list of objects"),
    ('[{"minutes": "5"}]', "entry 0: minutes='5' must be a finite number >= 0"),
    ('[{"minutes": 5, "command": "x\\ny"}]', "entry 0: command='x\\ny' must be one line of text"),
    ('[{"minutes": 5, "failed": "r"}]', "entry 0: failed='r' must be a list of run ids"),
])
def test_a_malformed_reproduction_file_is_named(tmp_path, capsys, text, message):
    small_store(tmp_path / "results")
    path = tmp_path / "results" / "reproductions" / "smoke.json"
    path.parent.mkdir(parents=True)
    path.write_text(text)
    line = report_refused(capsys, tmp_path)
    assert str(path) in line and message in line


def test_text_is_escaped_for_each_format():
    from harness.report_data import csv_text, md_code, md_text
    from harness.report_tables import tex_escape

    assert md_text("a | b\n| c |") == "a \\| b \\| c \\|"
    assert md_code("x`y\nz") == "`x'y z`"
    assert csv_text("=HYPERLINK(\"http://x\")") == "'=HYPERLINK(\"http://x\")" and csv_text("-0.5") == "-0.5"
    assert csv_text("a\r\nb") == "a b"
    assert tex_escape("50% & $x$\n\\end{document}") == r"50\% \& \$x\$ \textbackslash{}end\{document\}"


# ---------------------------------------------------------------- numbers that cannot be meant: refused before work

@pytest.mark.parametrize("argv, message", [
    (["plan", "--gpus", "-1"], "argument --gpus: -1 is out of range; allowed: 0..1024"),
    (["plan", "--gpu-memory", "0"], "argument --gpu-memory: 0 is out of range; allowed: (0, 1e+06]"),
    (["plan", "--gpu-memory", "inf"], "argument --gpu-memory: inf is out of range"),
    (["plan", "--query-tokens", "-5"], "argument --query-tokens: -5 is out of range; allowed: 1..1000000"),
    (["prepare", "--limit", "-1"], "argument --limit: -1 is out of range; allowed: 1..1000000000"),
    (["prepare", "--limit", "0"], "argument --limit: 0 is out of range"),
    (["prepare", "--samples", "1"], "argument --samples: 1 is out of range; allowed: 2..10000"),
    (["prepare", "--epochs", "nan"], "argument --epochs: nan is out of range; allowed: (0, 1e+06]"),
    (["prepare", "--l2", "-1"], "argument --l2: -1 is out of range; allowed: [0, 1e+12]"),
    (["models", "recover", "--raw", "a", "--diff", "b", "--out", "c", "--expected-sum", "nan"],
     "argument --expected-sum: nan must be a finite number"),
    (["eval", "m", "--step", "-1"], "argument --step: -1 is out of range; allowed: 0..1000000000"),
    (["eval", "m", "--temperature", "-0.5"], "argument --temperature: -0.5 is out of range; allowed: [0, 100]"),
    (["eval", "m", "--top-p", "0"], "argument --top-p: 0 is out of range; allowed: (0, 1]"),
    (["eval", "m", "--batch-size", "0"], "argument --batch-size: 0 is out of range; allowed: 1..1000000"),
    (["eval", "m", "--limit", "x"], "argument --limit: 'x' is not an integer; allowed: 1..1000000000"),
    (["eval", "m", "--judge-timeout", "-1"], "argument --judge-timeout: -1 is out of range; allowed: (0, 86400]"),
    (["eval", "m", "--judge-max-retries", "-1"], "argument --judge-max-retries: -1 is out of range; allowed: 0..100"),
    (["eval", "m", "--judge-max-tokens", "0"], "argument --judge-max-tokens: 0 is out of range"),
    (["eval", "m", "--judge-max-unparsed", "1.5"],
     "argument --judge-max-unparsed: 1.5 is out of range; allowed: [0, 1]"),
    (["eval", "m", "--seed", "-1"], "argument --seed: -1 is out of range"),
    (["eval", "m", "--samples", "0"], "argument --samples: 0 is out of range; allowed: 1..10000"),
    (["eval", "m", "--factuality-limit", "0"], "argument --factuality-limit: 0 is out of range"),
    (["reproduce", "--table", "2", "--workers", "0"], "argument --workers: 0 is out of range; allowed: 1..1024"),
    (["reproduce", "--table", "2", "--retries", "-1"], "argument --retries: -1 is out of range; allowed: 0..100"),
])
def test_a_numeric_option_out_of_range_is_refused_by_the_parser(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    assert message in parser_refused(capsys, *argv)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv, message", [
    (["grid", "--table", "2", "--seeds", ""], "--seeds='': expected comma-separated integers"),
    (["grid", "--table", "2", "--seeds", "1,,2"], "--seeds='1,,2': expected comma-separated integers"),
    (["grid", "--table", "2", "--seeds", "1,1"], "--seeds='1,1': seeds must be distinct integers in 0..4294967295"),
    (["grid", "--table", "2", "--seeds", "-3"], "--seeds='-3': seeds must be distinct integers"),
    (["config", "--set", "threads=100000"], "threads=100000 must be <= 1024"),
    (["config", "--set", "steps=10000000000"], "steps=10000000000 must be <= 1000000000"),
    (["config", "--set", "rollout_batch_size=100000000"], "rollout_batch_size=100000000 must be <= 1000000"),
    (["eval", "m", "--run-id", "a|b\nc"], "--run-id 'a|b\\nc' must be a non-empty string of at most 300"),
    (["eval", "m", "--run-id", ""], "--run-id '' must be a non-empty string"),
    (["reproduce", "--table", "2", "--runs", ""], "--runs is empty; give the folder to write"),
    (["reproduce", "--table", "2", "--report", "."], "--report '.' is the current folder or one above it"),
    (["reproduce", "--table", "2", "--results", " "], "--results is empty"),
    (["train", "--out", "."], "--out '.' is the current folder or one above it"),
    (["models", "recover", "--raw", "a", "--diff", "b", "--out", ""], "--out is empty"),
    (["eval", "m", "--results", ""], "--results is empty"),
    (["eval", "m", "--results", "."], "--results '.' is the current folder or one above it"),
    (["prepare", "--results", ""], "--results is empty"),
    (["report", "--results", ""], "--results is empty; give the results store"),
])
def test_a_bad_value_is_refused_before_any_work(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    assert message in refused(capsys, *argv)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- settings and data files

@pytest.mark.parametrize("name, text, message", [
    ("dup.yaml", "steps: 3\nlr: 0.1\nsteps: 5\n", "duplicate key 'steps': each key may appear once"),
    ("dup.json", '{"steps": 3, "steps": 5}', "duplicate key(s) ['steps']: each key may appear once"),
    ("nan.json", '{"lr": NaN}', "NaN is not a number JSON allows"),
    ("tag.yaml", "steps: !!python/object/apply:os.system ['true']\n", "is not valid YAML"),
])
def test_a_settings_file_with_duplicate_keys_or_tags_is_refused(tmp_path, capsys, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    line = refused(capsys, "config", "--config", path)
    assert str(path) in line and message in line


@pytest.mark.parametrize("name, text, message", [
    ("p.json", "not json", "prompts='{path}' is not valid JSON (Expecting value: line 1 column 1 (char 0))"),
    ("p.jsonl", '{"instruction": "a"}\n\n{"instruction": "b"\n', "prompts='{path}', line 3: not valid JSON"),
    ("p.json", '{"instruction": "a"}', "prompts='{path}' is an object whose values are not all lists"),
    ("p.json", "3", "prompts='{path}' holds a int; expected a list of records"),
    ("missing.json", None, "prompts='{path}': no such file"),
])
def test_a_bad_prompts_file_is_named_with_its_line(tmp_path, capsys, name, text, message):
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    line = refused(capsys, "train", "--preset", "smoke", "--set", f"prompts={path}", "--set", "steps=1",
                   "--out", tmp_path / "run")
    assert message.format(path=path) in line


@pytest.mark.parametrize("text, message", [
    ('{"instruction": "a"}\n{"instruction": "b", "id": 1}\n{"instruction": \n', "line 3: not valid JSON"),
    ('[{"instruction": "a", "id": {"x": 1}}]', "record 0 field 'id' is {'x': 1}; expected a string of 1-1000"),
    ('[{"instruction": "a", "id": true}]', "record 0 field 'id' is True; expected a string"),
    ('[{"instruction": "a", "id": ""}]', "record 0 field 'id' is ''; expected a string"),
    ('[{"instruction": "a"}, {"instruction": "b", "id": "0"}]', "the id(s) ['0'] occur more than once"),
    ('{"instruction": "a", "instruction": "b"}', "duplicate key(s) ['instruction']"),
])
def test_a_bad_eval_set_is_named_with_its_line_or_record(tmp_path, capsys, cache, text, message):
    path = tmp_path / ("set.jsonl" if text.startswith('{"instruction": "a"}\n') else "set.json")
    path.write_text(text)
    before = snapshot(tmp_path)
    line = refused(capsys, "eval", "tiny-random-llama", "--eval-set", path, "--results", tmp_path / "results")
    assert f"eval set {str(path)!r}" in line and message in line
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------- a judge or model that is not what it claims

class BodyServer:
    """Answers every request with status 200 and `body` (not necessarily JSON)."""

    def __init__(self, body: bytes) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("body", [b"<html>502 Bad Gateway</html>", b'{"choices": [{"message": '])
def test_a_judge_answering_something_other_than_json_is_named(tmp_path, cache, capsys, monkeypatch, body):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    server = BodyServer(body)
    try:
        line = refused(capsys, "eval", "tiny-random-llama", "--judge", "openai", "--judge-model", "m",
                       "--judge-base-url", server.url, "--judge-max-retries", "0", "--results", tmp_path / "results",
                       code=3)
    finally:
        server.close()
    assert f"judge 'm' at {server.url} answered with a body that is not JSON" in line
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("argv, message", [
    (["--judge", "reward-model", "--judge-model", "/no/such/reward-model"],
     "--judge-model='/no/such/reward-model': no such model directory"),
    (["--proxy-reward", "/no/such/reward-model"], "--proxy-reward='/no/such/reward-model': no such model directory"),
])
def test_a_reward_model_path_that_does_not_exist_is_named(tmp_path, cache, capsys, argv, message):
    line = refused(capsys, "eval", "tiny-random-llama", *argv, "--results", tmp_path / "results")
    assert message in line and not (tmp_path / "results").exists()


def test_a_model_folder_with_a_truncated_weight_file_is_named(tmp_path, cache, capsys):
    import torch

    from trainers.models import load_causal_lm, load_tokenizer

    folder = tmp_path / "model"
    load_causal_lm("tiny-random-llama", torch.float32).save_pretrained(folder)
    load_tokenizer("tiny-random-llama").save_pretrained(folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    before = snapshot(folder)
    capsys.readouterr()
    code, err = run(capsys, "eval", folder, "--results", tmp_path / "results", "--limit", "1")
    line = err.strip().splitlines()[-1]  # after the offline judge's own loading bar
    assert code == 2 and "Traceback" not in err
    assert line == (f"harness: error: {folder}: a weight file cannot be loaded (Error while deserializing header: "
                    "invalid header length); it is damaged or holds objects other than tensors")
    assert snapshot(folder) == before and not (tmp_path / "results").exists()


# ---------------------------------------------------------------- credentials: never printed, never stored

class EchoingServer:
    """An OpenAI-compatible endpoint that refuses every request and echoes its path and headers in the error, as a
    careless proxy does; it keeps what it received."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def _echo(self):
                received.append((self.path, dict(self.headers)))
                body = json.dumps({"error": {"message": f"bad request {self.path} headers={dict(self.headers)}",
                                             "type": "invalid_request_error"}}).encode()
                self.send_response(400)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _echo

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.port = self.server.server_address[1]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def echoing(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-KEY-0123456789")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    server = EchoingServer()
    yield server
    server.close()


SECRETS = ("s3cret-pw", "judge-user", "QUERY-SECRET", "sk-test-KEY-0123456789")


def test_credentials_in_the_url_never_reach_the_output_in_any_encoding(echoing, tmp_path, cache, capsys):
    import base64

    url = f"http://judge-user:s3cret-pw@127.0.0.1:{echoing.port}/v1?api-key=QUERY-SECRET"
    code = cli.main(["eval", "tiny-random-llama", "--judge", "openai", "--judge-model", "m", "--judge-base-url", url,
                     "--judge-max-retries", "0", "--results", str(tmp_path / "results")])
    out = capsys.readouterr()
    assert code == 3, out.err
    line = one_line(out.err)
    assert f"127.0.0.1:{echoing.port}" in line and "400" in line
    basic = base64.b64encode(b"judge-user:s3cret-pw").decode()
    assert any(basic in str(headers) for _, headers in echoing.received)  # the server did see (and echo) them
    for secret in (*SECRETS, basic):
        assert secret not in out.out + out.err
    assert not (tmp_path / "results").exists()


def test_a_query_in_the_base_url_is_sent_as_the_query_not_inside_the_path(echoing, tmp_path, cache, capsys):
    url = f"http://127.0.0.1:{echoing.port}/v1?api-key=QUERY-SECRET"
    cli.main(["eval", "tiny-random-llama", "--judge", "openai", "--judge-model", "m", "--judge-base-url", url,
              "--judge-max-retries", "0", "--results", str(tmp_path / "results")])
    capsys.readouterr()
    assert echoing.received and all(path.split("?")[0].startswith("/v1/") and path.endswith("?api-key=QUERY-SECRET")
                                    for path, _ in echoing.received), echoing.received


def test_a_command_line_is_stored_without_url_credentials():
    from harness.errors import redact_urls

    text = redact_urls("harness eval RUN --judge-base-url https://u:s3cret-pw@h.example/v1?api-key=QUERY-SECRET&x=1")
    assert text == "harness eval RUN --judge-base-url https://h.example/v1?api-key=***&x=***"


@pytest.mark.parametrize("url, message", [
    ("file:///etc/passwd", "--judge-base-url 'file:///etc/passwd': scheme 'file' is not http(s); no host"),
    ("http://127.0.0.1:99999/v1", "--judge-base-url 'http://127.0.0.1:99999/v1': the port is not in 1..65535"),
    ("http://judge-user:s3cret-pw@127.0.0.1:9/v1#x", "--judge-base-url 'http://127.0.0.1:9/v1': it has a #fragment"),
    ("http://127.0.0.1:9/v 1", "it contains spaces"),
])
def test_a_base_url_that_cannot_be_a_judge_is_refused_without_its_credentials(tmp_path, cache, capsys, url,
                                                                                 message):
    line = refused(capsys, "eval", "tiny-random-llama", "--judge", "openai", "--judge-model", "m",
                   "--judge-base-url", url, "--results", tmp_path / "results")
    assert message in line and "s3cret-pw" not in line and "judge-user" not in line
