"""Result records under misuse: identity of an evaluation, replacement, strict validation, the report's inputs,
eval sets with repeated ids, and a judge cache that never keeps an unparsable answer."""

from __future__ import annotations

import json
import math

import pytest

from evals.evalsets import EvalSetError, load_eval_set
from evals.judging import AnnotationCache, Judge, Pair, annotate
from harness import report, results
from harness.errors import UserError
from harness.reproduce import existing
from harness.results import RecordError, ResultsStore, make_record

JUDGE = {"name": "simulated", "model": "m", "version": "v1"}
EVAL_SET = {"name": "bundled", "hash": "h", "n": 2}
GREEDY = {"generation": {"temperature": 0.0, "top_p": 1.0, "max_new_tokens": 16, "seed": 0}, "order": "both",
          "limit": None}


@pytest.fixture(autouse=True)
def fixed_identity(monkeypatch):
    monkeypatch.setattr(results, "harness_identity", lambda: {"version": "0.test", "git_commit": "c0ffee1"})


def rec(win_rate=55.0, settings=GREEDY, judge=JUDGE, **kw):
    base = dict(preset="smoke", run_id="run-1", label={"regularizer": "kl", "lora": True, "seed": 1}, step=3,
                evaluator="winrate", metrics={"win_rate": win_rate, "standard_error": 3.0, "n": 2}, judge=judge,
                eval_set=EVAL_SET, per_item=[{"id": "a", "preference": 2.0}, {"id": "b", "preference": 1.2}],
                settings=settings)
    base.update(kw)
    return make_record(**base)


def sampled(temperature):
    return {**GREEDY, "generation": {**GREEDY["generation"], "temperature": temperature}}


def test_the_id_covers_every_setting_that_changes_the_result():
    base = rec()["record_id"]
    assert rec()["record_id"] == base
    assert rec(settings=sampled(0.7))["record_id"] != base
    assert rec(settings={**GREEDY, "order": "random"})["record_id"] != base
    assert rec(settings={**GREEDY, "limit": 10})["record_id"] != base
    assert rec(judge={**JUDGE, "version": "v2"})["record_id"] != base
    assert rec(eval_set={**EVAL_SET, "hash": "other"})["record_id"] != base


def test_a_sampled_eval_never_replaces_the_greedy_record_and_a_differing_one_needs_force(tmp_path):
    store = ResultsStore(tmp_path)
    greedy = rec()
    store.put(greedy)
    store.put(rec(win_rate=70.0, settings=sampled(0.7)))
    assert store.get(greedy["record_id"]) == greedy  # both kept
    store.put(rec())  # the same results again: fine
    with pytest.raises(UserError, match="other results.*--force"):
        store.put(rec(win_rate=60.0))
    store.put(rec(win_rate=60.0), force=True)
    assert store.get(greedy["record_id"])["metrics"]["win_rate"] == 60.0


@pytest.mark.parametrize("change, message", [
    ({"metrics": {"win_rate": math.nan}}, "metrics.win_rate=nan must be a finite number"),
    ({"metrics": {"win_rate": 130.0}}, r"metrics.win_rate=130.0 must be a percentage in \[0, 100\]"),
    ({"metrics": {"standard_error": -1.0}}, "standard_error=-1.0 must be >= 0"),
    ({"preset": "../x"}, "is not a valid preset name"),
    ({"preset": "/tmp/x"}, "is not a valid preset name"),
    ({"step": "3"}, "step='3' must be an integer"),
    ({"judge": "simulated"}, "judge='simulated' must be null or"),
    ({"eval_set": {"name": "b", "hash": "h", "n": "2"}}, "eval_set=.* must be null or"),
    ({"per_item": [{"id": "a", "preference": 2.0}, {"id": "a", "preference": 1.0}]}, r"repeats the id\(s\) \['a'\]"),
    ({"per_item": [{"id": "a", "preference": 3.0}]}, "preference=3.0 must be null or a number in"),
    ({"label": {"regularizer": 1, "lora": True, "seed": 1, "baseline": None}}, "regularizer is null or 1-64 letters"),
    ({"details": None}, "details must be an object"),
])
def test_validate_checks_every_field(change, message):
    with pytest.raises(RecordError, match=message):
        results.validate({**rec(), **change})


@pytest.mark.parametrize("text", ["null", "[1, 2]", '"record"'])
def test_report_names_a_record_file_that_is_not_an_object(tmp_path, text):
    store = ResultsStore(tmp_path / "results")
    store.put(rec())
    bad = tmp_path / "results" / "records" / "0000000000000000.json"
    bad.write_text(text)
    with pytest.raises(RecordError, match="0000000000000000.json: a record is a JSON object"):
        report.render_report(tmp_path / "results", tmp_path / "report", "smoke")


def test_a_record_with_a_path_as_preset_never_writes_outside_the_report(tmp_path):
    store = ResultsStore(tmp_path / "results")
    good = rec()
    store.put(good)
    evil = dict(good, preset="../escaped", record_id="1" * 16)
    (tmp_path / "results" / "records" / f"{'1' * 16}.json").write_text(json.dumps(evil))
    with pytest.raises(RecordError, match="preset='../escaped' is not a valid preset name"):
        report.render_report(tmp_path / "results", tmp_path / "out" / "report", None)
    assert not (tmp_path / "out" / "escaped").exists()


def test_report_refuses_a_missing_or_foreign_results_folder(tmp_path):
    with pytest.raises(UserError, match="no such folder"):
        report.check_results_root(tmp_path / "resluts")
    (tmp_path / "empty" / "records").mkdir(parents=True)
    with pytest.raises(UserError, match="holds no evaluation records of ours"):
        report.check_results_root(tmp_path / "empty")
    ResultsStore(tmp_path / "ok").put(rec())
    report.check_results_root(tmp_path / "ok")


def test_reproduce_counts_only_records_of_the_grids_own_evaluation(tmp_path):
    store = ResultsStore(tmp_path)
    store.put(rec(settings=sampled(0.7)))
    store.put(rec(judge={**JUDGE, "version": "old"}, step=4))
    store.put(rec(step=5))
    wanted = {"winrate": {"judge": JUDGE, "eval_set": EVAL_SET, "settings": GREEDY}}
    assert existing(store, "smoke", wanted) == {("run-1", 5, "winrate")}
    assert existing(store, "smoke") == {("run-1", 3, "winrate"), ("run-1", 4, "winrate"), ("run-1", 5, "winrate")}


def test_eval_sets_with_repeated_ids_or_the_wrong_shape_are_refused(tmp_path):
    path = tmp_path / "set.json"
    path.write_text(json.dumps([{"id": "x", "instruction": f"Say {i}."} for i in range(3)]))
    with pytest.raises(EvalSetError, match=r"the id\(s\) \['x'\] occur more than once"):
        load_eval_set(str(path))
    path.write_text(json.dumps({"instruction": "Say hi.", "input": ""}))
    with pytest.raises(EvalSetError, match="key 'instruction' does not hold a list of records"):
        load_eval_set(str(path))
    path.write_text('"just text"')
    with pytest.raises(EvalSetError, match="holds a str; expected a list"):
        load_eval_set(str(path))
    path.write_bytes(b"\xff\xfe[]")
    with pytest.raises(EvalSetError, match="cannot be read as UTF-8"):
        load_eval_set(str(path))


class FlakyJudge(Judge):
    """Unparsable on its first answer to each pair, then prefers output_2."""

    name, model, version = "flaky", "f", "1"

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.calls = 0

    def _prefer(self, pairs):
        self.calls += len(pairs)
        out = []
        for p in pairs:
            out.append(None if p.id not in self.seen else 2.0)
            self.seen.add(p.id)
        return out


def test_an_unparsable_answer_is_never_cached_and_the_cache_can_be_refreshed(tmp_path):
    pairs = [Pair("q", "", "a", "b", "p1")]
    judge = FlakyJudge()
    assert annotate(judge, pairs, order="fixed", cache=AnnotationCache(tmp_path / "c.sqlite")) == [None]
    assert annotate(judge, pairs, order="fixed", cache=AnnotationCache(tmp_path / "c.sqlite")) == [2.0]
    assert judge.calls == 2  # the None was asked again, not read back
    annotate(judge, pairs, order="fixed", cache=AnnotationCache(tmp_path / "c.sqlite"))
    assert judge.calls == 2  # a parsed answer is cached
    annotate(judge, pairs, order="fixed", cache=AnnotationCache(tmp_path / "c.sqlite", refresh=True))
    assert judge.calls == 3


def test_eval_at_another_temperature_keeps_the_greedy_record_and_reruns_need_force(smoke, tmp_path, monkeypatch,
                                                                                  capsys):
    from harness.cli import main
    from trainers.trainer import PPOTrainer

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    PPOTrainer(smoke(steps=1, checkpoint_every=1), run, log=lambda m: None).train()
    eval_set = tmp_path / "set.json"
    eval_set.write_text(json.dumps([{"instruction": f"Name a colour number {i}."} for i in range(3)]))
    store = ResultsStore(tmp_path / "results")

    def evaluate(*extra):
        return main(["eval", str(run), "--results", str(store.root), "--eval-set", str(eval_set), "--max-new-tokens",
                     "4", "--preset", "smoke", *extra])

    assert evaluate() == 0 and evaluate("--temperature", "0.7") == 0
    by_temp = {r["settings"]["generation"]["temperature"]: r for r in store.records()}
    assert set(by_temp) == {0.0, 0.7}
    greedy = by_temp[0.0]
    path = store.record_path(greedy["record_id"])
    path.write_text(json.dumps({**greedy, "metrics": {**greedy["metrics"], "win_rate": 99.0}}))
    capsys.readouterr()
    assert evaluate() == 2
    assert f"{path} holds a record of the same evaluation with other results" in capsys.readouterr().err
    assert evaluate("--force") == 0
    assert store.get(greedy["record_id"])["metrics"]["win_rate"] == greedy["metrics"]["win_rate"]


def test_record_fields_known_before_an_evaluation_are_checked_as_the_record_will_be():
    from harness.results import check_record_fields

    label = {"regularizer": "kl", "lora": True, "seed": 1, "baseline": None}
    check_record_fields(preset="tiny", run_id="abc", label=label, step=3, evaluator="winrate")
    with pytest.raises(RecordError, match="run_id='' must be a non-empty string"):
        check_record_fields(preset="tiny", run_id="", label=label, step=3, evaluator="winrate")
    with pytest.raises(RecordError, match="seed an integer"):
        check_record_fields(preset="tiny", run_id="abc", label={**label, "seed": "1"}, step=3, evaluator="winrate")
