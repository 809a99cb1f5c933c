"""The evaluator registry: evaluators found by listing `evals/evaluators/`, records validated against the metrics
each declares, and an evaluator module dropped into the package listed, run by `harness eval` and its records
accepted, with no other file edited."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from evals import evaluators
from evals.config import EvalConfig
from harness import results
from harness.cli import build_parser, main
from harness.results import RecordError, ResultsStore, make_record

ROOT = Path(__file__).resolve().parents[1]

BREVITY = textwrap.dedent('''
    """An evaluator for the test: how long the policy's answers are, in characters."""
    from evals.evaluators import EVAL_COMMAND, nonnegative, percent, register_evaluator


    def _run(evaluation, inputs):
        from evals.evaluation import EvalResult
        from evals.generate import generate

        outputs = generate(evaluation.model, evaluation.tokenizer, list(inputs.eval_set.records),
                           evaluation.target.template, evaluation.settings, evaluation.config.decoding,
                           evaluation.config.device)
        metrics = {"mean_chars": sum(map(len, outputs)) / len(outputs),
                   "empty_pct": 100.0 * sum(not o.strip() for o in outputs) / len(outputs)}
        return EvalResult("brevity", evaluation.target.step, metrics, None, inputs.eval_set.identity(), [], {},
                          {"max_new_tokens": evaluation.settings.max_new_tokens}, f"brevity {metrics}")


    register_evaluator("brevity", description="how long the policy's answers are", produced_by=EVAL_COMMAND,
                       metrics=(nonnegative("mean_chars", "mean answer length", "words"),
                                percent("empty_pct", "answers with no text", higher_is_better=False)),
                       run=_run, uses=("eval_set",), config_fields=("max_new_tokens", "limit"))
''')

LABEL = {"regularizer": "kl", "lora": True, "seed": 1, "baseline": None}
JUDGE = {"name": "simulated", "model": "m", "version": "1"}
EVAL_SET = {"name": "e", "hash": "h", "n": 2}


@pytest.fixture
def brevity_module(tmp_path, monkeypatch):
    """`brevity.py` dropped into the evaluators package (a folder of the package's search path), found afresh."""
    folder = tmp_path / "more_evaluators"
    folder.mkdir()
    (folder / "brevity.py").write_text(BREVITY)
    evaluators.evaluator_names()  # the package's own evaluators registered before the registry is copied
    monkeypatch.setattr(evaluators, "__path__", [*evaluators.__path__, str(folder)])
    monkeypatch.setattr(evaluators, "_REGISTRY", evaluators._REGISTRY.copy(evaluators.__path__))
    yield
    sys.modules.pop("evals.evaluators.brevity", None)


def _record(evaluator="winrate", metrics=None, **kw):
    values = dict(preset="smoke", run_id="r", label=LABEL, step=1, evaluator=evaluator,
                  metrics={"win_rate": 50.0} if metrics is None else metrics, judge=JUDGE, eval_set=EVAL_SET)
    return make_record(**{**values, **kw})


def test_a_dropped_in_evaluator_is_listed_run_and_its_records_accepted(brevity_module, tmp_path, monkeypatch,
                                                                       capsys):
    assert "brevity" in evaluators.evaluator_names() and "brevity" in evaluators.runnable_names()
    assert main(["evaluators"]) == 0
    out = capsys.readouterr().out
    assert "brevity: how long the policy's answers are" in out and "produced by: harness eval --evaluators brevity" \
        in out
    assert "empty_pct   percent [0, 100], lower is better: answers with no text" in out
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert "brevity" in " ".join(sub.choices["eval"].format_help().split())

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    (tmp_path / "set.json").write_text(json.dumps([{"instruction": f"Name colour {i}.", "input": ""}
                                                   for i in range(3)]))
    assert main(["eval", "tiny-random-llama", "--evaluators", "brevity", "--eval-set", str(tmp_path / "set.json"),
                 "--max-new-tokens", "4", "--results", str(tmp_path / "r"), "--preset", "smoke"]) == 0
    (rec,) = ResultsStore(tmp_path / "r").records()  # read back: validated against brevity's declared metrics
    assert rec["evaluator"] == "brevity" and set(rec["metrics"]) == {"mean_chars", "empty_pct"}
    with pytest.raises(RecordError, match=r"metrics.empty_pct=101.0 must be a percentage in \[0, 100\] "
                                          r"\(evaluator brevity\)"):
        _record("brevity", {"mean_chars": 3.0, "empty_pct": 101.0})
    with pytest.raises(RecordError, match="metrics.win_rate is not a metric of evaluator brevity"):
        _record("brevity", {"win_rate": 50.0})


def test_unknown_evaluators_are_one_line_naming_the_valid_ones(tmp_path, capsys):
    with pytest.raises(ValueError, match="evaluator 'oracle' is not known; valid evaluators: efficiency, factuality, "
                                         "judge_check, proxy_rm, winrate"):
        evaluators.evaluator_spec("oracle")
    with pytest.raises(RecordError, match="evaluator='oracle'; allowed: efficiency, factuality, judge_check"):
        _record("oracle")
    results_dir = ["--results", str(tmp_path / "r")]
    assert main(["eval", "m", *results_dir, "--evaluators", "winrate,oracle"]) == 2
    err = capsys.readouterr().err
    assert "--evaluators oracle: not known; harness eval runs: winrate, factuality" in err
    assert len(err.splitlines()) == 1
    assert main(["eval", "m", *results_dir, "--evaluators", "efficiency"]) == 2
    assert "--evaluators efficiency: its records are made by harness reproduce" in capsys.readouterr().err
    assert main(["eval", "m", *results_dir, "--evaluators", "factuality", "--factuality"]) == 2
    assert "give one" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("evaluator, metrics, message", [
    ("winrate", {"win_rate": 130.0}, r"metrics.win_rate=130.0 must be a percentage in \[0, 100\] "
                                     r"\(evaluator winrate\)"),
    ("winrate", {"true_kl": -0.5}, r"metrics.true_kl=-0.5 must be >= 0 \(evaluator winrate\)"),
    ("factuality", {"factscore": -1.0}, r"metrics.factscore=-1.0 must be a percentage in \[0, 100\] "
                                        r"\(evaluator factuality\)"),
    ("efficiency", {"peak_memory_gib": -2.0}, r"metrics.peak_memory_gib=-2.0 must be >= 0 \(evaluator efficiency\)"),
    ("judge_check", {"spearman": 1.5}, r"metrics.spearman=1.5 must be in \[-1, 1\] \(evaluator judge_check\)"),
    ("proxy_rm", {"gold_agreement": 100.5}, r"metrics.gold_agreement=100.5 must be a percentage in \[0, 100\] "
                                            r"\(evaluator proxy_rm\)"),
    ("factuality", {"win_rate": 50.0}, "metrics.win_rate is not a metric of evaluator factuality"),
])
def test_a_metric_outside_its_declared_range_is_refused_in_one_line(evaluator, metrics, message):
    with pytest.raises(RecordError, match=message) as err:
        _record(evaluator, metrics)
    assert "\n" not in str(err.value)


def test_a_signed_metric_and_null_metrics_are_accepted():
    assert _record("winrate", {"win_rate": None, "proxy_reward": -3.5, "lc_win_rate": None})
    assert _record("judge_check", {"kendall": -0.4, "order_consistency": None})


def test_every_registered_evaluator_declares_what_it_measures_and_what_makes_it():
    config_fields = {f.name for f in dataclasses.fields(EvalConfig)}
    for name in evaluators.evaluator_names():
        spec = evaluators.evaluator_spec(name)
        assert spec.description and "\n" not in spec.description, name
        assert spec.produced_by.startswith("harness "), name
        assert spec.metrics and all(m.help and m.unit for m in spec.metrics), name
        assert set(spec.config_fields) <= config_fields, (name, set(spec.config_fields) - config_fields)
        assert (spec.run is not None) == (spec.produced_by == evaluators.EVAL_COMMAND), name
        if spec.options is not None:
            params = spec.options.__dataclass_params__
            assert params.frozen and "__slots__" in vars(spec.options), name
            assert all(f.metadata.get("help") for f in dataclasses.fields(spec.options)), name
    assert evaluators.runnable_names() == ("winrate", "factuality")


def test_every_committed_record_carries_only_declared_metrics_inside_their_ranges():
    found = list(ResultsStore(ROOT / "results").records())  # each validated on read
    assert {r["evaluator"] for r in found} == set(evaluators.evaluator_names())


def test_judge_check_options_are_its_flags_and_are_checked():
    options = evaluators.evaluator_spec("judge_check").options
    args = build_parser().parse_args(["judge-check", "--annotations", "a.jsonl", "--probe", "3", "--order", "fixed"])
    from harness.option_flags import options_from_args

    assert options_from_args(args, options) == options(probe=3, order="fixed")
    with pytest.raises(ValueError, match="--order='random'; allowed: both, fixed"):
        options(order="random")
    with pytest.raises(ValueError, match=r"--probe=-1: correctness-probe pairs \(0: none\); allowed: 0\.\.1000000"):
        options(probe=-1)


def test_discovering_the_evaluators_and_validating_records_loads_no_torch():
    code = ("import sys; from evals import evaluators; evaluators.evaluator_names(); "
            "from harness.results import ResultsStore; list(ResultsStore('results').records()); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_the_schema_reads_its_evaluators_from_the_registry():
    assert not hasattr(results, "EVALUATORS") and not hasattr(results, "PERCENT_METRICS")
