"""The command line's error boundary: bad files, folders and options give one line naming them and exit 2,
before any model loads; a bug keeps its traceback, and --debug shows it for any error."""

from __future__ import annotations

import json

import pytest

from harness import cli
from harness.results import ResultsStore, make_record


def run(capsys, *argv):
    code = cli.main(list(argv))
    err = capsys.readouterr().err
    return code, err


def one_line(err: str) -> str:
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("harness: error: "), err
    return lines[0]


@pytest.mark.parametrize("name, content, expect", [
    ("bad.yaml", b"steps: [1, 2\nlr: 0.1\n", "is not valid YAML"),
    ("bad.yaml", b"steps: 3\nprompts: \xff\xfe\n", "cannot be read as UTF-8 text"),
    ("bad.json", b'{"steps": 3,', "is not valid JSON"),
])
def test_a_bad_config_file_is_named(tmp_path, capsys, name, content, expect):
    path = tmp_path / name
    path.write_bytes(content)
    code, err = run(capsys, "config", "--config", str(path))
    assert code == 2 and str(path) in one_line(err) and expect in err


@pytest.mark.parametrize("out, expect", [
    ("", "--out is empty"),
    ("FILE", "is a file; give a folder"),
    ("/sys/harness-run", "cannot be created or written"),
])
def test_a_bad_run_folder_is_refused_before_training(tmp_path, capsys, monkeypatch, out, expect):
    monkeypatch.chdir(tmp_path)
    if out == "FILE":
        out = str(tmp_path / "a-file")
        (tmp_path / "a-file").write_text("x")
    code, err = run(capsys, "train", "--preset", "smoke", "--set", "steps=1", "--out", out)
    assert code == 2 and expect in one_line(err)
    assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("option, value", [("--max-new-tokens", "0"), ("--max-new-tokens", "-3"),
                                           ("--preset", "../x"), ("--preset", "/abs/path")])
def test_eval_options_are_checked_by_the_parser(capsys, option, value):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["eval", "some-model", option, value])
    assert exit_.value.code == 2 and option in capsys.readouterr().err


def test_report_with_a_mistyped_results_folder_keeps_the_report(tmp_path, capsys):
    out = tmp_path / "report"
    out.mkdir()
    (out / "table2.md").write_text("ours")
    code, err = run(capsys, "report", "--results", str(tmp_path / "resluts"), "--out", str(out))
    assert code == 2 and "no such folder" in one_line(err)
    assert (out / "table2.md").read_text() == "ours" and len(list(out.iterdir())) == 1


@pytest.mark.parametrize("text", ["null", '{"schema": "harness.record/1"}'])
def test_report_names_a_bad_record_file(tmp_path, capsys, text):
    store = ResultsStore(tmp_path / "results")
    store.put(make_record(preset="smoke", run_id="r", label={}, step=1, evaluator="winrate", metrics={"win_rate": 50.0},
                          judge={"name": "j", "model": "m", "version": "1"}, eval_set={"name": "e", "hash": "h", "n": 1}))
    (tmp_path / "results" / "records" / "broken.json").write_text(text)
    code, err = run(capsys, "report", "--results", str(tmp_path / "results"), "--out", str(tmp_path / "report"))
    assert code == 2 and "broken.json" in one_line(err)


def test_an_eval_set_that_is_an_object_is_named(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "set.json"
    path.write_text(json.dumps({"instruction": "hi"}))
    code, err = run(capsys, "eval", "tiny-random-llama", "--eval-set", str(path), "--results", str(tmp_path / "r"),
                    "--judge", "reward-model", "--judge-model", "head:tiny-random-llama")
    assert code == 2 and str(path) in one_line(err)


def test_a_bug_keeps_its_traceback_and_debug_shows_any(monkeypatch, capsys, tmp_path):
    def broken(args):
        raise KeyError("a bug")

    monkeypatch.setattr(cli, "_dispatch", broken)
    with pytest.raises(KeyError):
        cli.main(["presets"])
    monkeypatch.undo()
    with pytest.raises(ValueError, match="--out is empty"):
        cli.main(["train", "--preset", "smoke", "--out", "", "--debug"])


@pytest.mark.parametrize("only, expect", [
    (",", "--only=',': expected comma-separated runs, e.g. kl or kl,full"),
    ("kl,bregman", "--only bregman: not a run of this grid; allowed: full, jensen_shannon, kl, none"),
])
def test_a_bad_run_selection_is_one_line(capsys, only, expect):
    code, err = run(capsys, "grid", "--table", "2", "--preset", "tiny", "--only", only)
    assert code == 2 and expect in one_line(err)
