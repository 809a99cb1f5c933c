"""Careless and hostile input, by family: each case exits with a status, prints one line naming the option, field
or file (its value and what is allowed), and leaves what was on disk as it was. No traceback, no silent acceptance.
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
    """argparse's refusal (exit 2, usage then one error line)."""
    with pytest.raises(SystemExit) as exit_:
        cli.main([str(a) for a in argv])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


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
    """A finished 2-step smoke run with its checkpoint at step 2 (copied by each test that damages it)."""
    from harness import presets
    from trainers.config import TrainConfig
    from trainers.trainer import PPOTrainer

    values = presets.preset("smoke")
    values.update(prompts=prompt_file, prompt_split="", query_len=256, threads=2, steps=2, checkpoint_every=2)
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
    config = json.loads((run_copy / "config.json").read_text())
    line = refused(capsys, "train", "--config", run_copy / "config.json", "--set", "steps=3", "--out", run_copy,
                   "--resume")
    assert message in line and str(step2(run_copy) / "state.json") in line, config
    assert not (tmp_path / "results").exists() and snapshot(run_copy) == before


def test_a_state_json_with_nan_is_named_not_misread(run_copy, tmp_path, cache, capsys):
    path = step2(run_copy) / "state.json"
    path.write_text(path.read_text().replace('"kl_coef": ', '"kl_coef": NaN, "was": '))
    line = refused(capsys, "eval", run_copy, "--results", tmp_path / "results", "--preset", "smoke")
    assert str(path) in line and "NaN is not a number JSON allows" in line


def test_outputs_are_cached_by_the_checkpoints_content(run_copy):
    from evals.generate import resolve_target
    from trainers import checkpoint

    first = resolve_target(str(run_copy))
    folder = step2(run_copy)
    assert first.digest == checkpoint.content_digest(checkpoint.verify(folder))
    (folder / "scheduler.pt").write_bytes((folder / "scheduler.pt").read_bytes() + b"\0")  # replaced in place
    state = json.loads((folder / "state.json").read_text())
    state["files"] = checkpoint.file_manifest(folder)
    (folder / "state.json").write_text(json.dumps(checkpoint.seal_state(state)))
    second = resolve_target(str(run_copy))
    assert second.checkpoint == first.checkpoint and second.digest != first.digest
    assert second.identity() != first.identity()  # the outputs' cache key holds the identity


def test_every_checkpoint_file_is_group_readable(trained):
    mask = __import__("os").umask(0o022)
    __import__("os").umask(mask)
    if mask & stat.S_IRGRP:
        pytest.skip(f"umask {mask:03o} withholds group read from every file")
    for path in step2(trained).rglob("*"):
        assert path.stat().st_mode & stat.S_IRGRP, path


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
