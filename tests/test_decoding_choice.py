"""The baseline "SFT at its best decoding": candidates judged on the validation instructions, the best one chosen,
then evaluated on the evaluation instructions, by `harness reproduce` end to end at the smoke preset."""

from __future__ import annotations

import dataclasses

import pytest

from evals.config import EvalConfig
from harness import decoding_choice as D
from harness import grid as G
from harness.eval_request import BUNDLED, BUNDLED_VALIDATION, expected_identity
from harness.results import ResultsStore, make_record


def _record(req, run_id, win_rate):
    want = expected_identity(req)["winrate"]
    return make_record(preset=req.preset, run_id=run_id, label=req.label or {"baseline": "sft"}, step=0,
                       evaluator="winrate", metrics={"win_rate": win_rate, "n": 66}, **want)


def test_the_best_validation_win_rate_is_chosen_and_a_tie_goes_to_the_first_candidate():
    cfg = EvalConfig(judge="longer", limit=5, max_new_tokens=8)
    reqs = D.validation_requests(cfg, "smollm2-135m-instruct", BUNDLED_VALIDATION, "tiny", (0.0, 0.7, 1.0))
    assert [r.config.temperature for r in reqs] == [0.0, 0.7, 1.0] and {r.config.samples for r in reqs} == {1}
    assert {r.eval_set for r in reqs} == {BUNDLED_VALIDATION}
    sft = "sft:smollm2-135m-instruct"
    records = [_record(reqs[0], sft, 40.0), _record(reqs[1], sft, 46.0)]
    assert D.choose(records, reqs, sft) is None  # temperature 1 not judged yet
    records.append(_record(reqs[2], sft, 44.0))
    assert D.choose(records, reqs, sft) == (0.7, {0.0: 40.0, 0.7: 46.0, 1.0: 44.0})
    tie = [_record(reqs[0], sft, 46.0), *records[1:]]
    assert D.choose(tie, reqs, sft)[0] == 0.0
    # a record of another run, eval set or decoding never stands in for a candidate
    other = [_record(reqs[0], "sft:other", 90.0), records[1], records[2]]
    assert D.choose(other, reqs, sft) is None
    best = D.best_request(cfg, "smollm2-135m-instruct", BUNDLED, "tiny", 0.7)
    assert best.run_id == "sft-best:smollm2-135m-instruct" and best.label["baseline"] == "sft-best"
    assert best.eval_set == BUNDLED and best.config.temperature == 0.7
    assert D.find([*records, _record(best, best.run_id, 41.0)], best, best.run_id)["metrics"]["win_rate"] == 41.0


def test_a_grid_refuses_repeated_or_negative_candidate_temperatures():
    for bad in ((0.0, 0.0), (-1.0,)):
        with pytest.raises(ValueError, match="sft_decodings"):
            dataclasses.replace(G.GRIDS["smoke"], sft_decodings=bad)


def test_reproduce_chooses_the_sft_decoding_on_validation_and_reports_the_row(tmp_path, monkeypatch):
    from harness.cli import main

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    spec = dataclasses.replace(G.GRIDS["smoke"], sft_decodings=(0.0, 1.0), eval_limit=6, judge="longer")
    monkeypatch.setitem(G.GRIDS, "smoke", spec)
    results, runs, report = tmp_path / "results", tmp_path / "runs", tmp_path / "report"
    args = ["reproduce", "--table", "2", "--preset", "smoke", "--only", "kl", "--set", "steps=2",
            "--set", "checkpoint_every=2", "--runs", str(runs), "--results", str(results), "--report", str(report)]
    assert main(args) == 0
    ours = [r for r in ResultsStore(results).records() if r["source"] == "harness"]
    validation = [r for r in ours if r["eval_set"]["name"].endswith(":val")]
    assert sorted(r["details"]["generation"]["temperature"] for r in validation) == [0.0, 1.0]
    rates = {r["details"]["generation"]["temperature"]: r["metrics"]["win_rate"] for r in validation}
    chosen = max(rates, key=lambda t: (rates[t], -t))  # the best, greedy first on a tie
    best = [r for r in ours if r["label"]["baseline"] == "sft-best"]
    assert len(best) == 1 and best[0]["details"]["generation"]["temperature"] == chosen
    assert best[0]["eval_set"]["name"].endswith(":eval[:6]") and best[0]["run_id"].startswith("sft-best:")
    table2 = (report / "table2.md").read_text()
    assert "| SFT, best decoding |" in table2 and "the best of its validation win rates" in table2
    summary = (report / "summary.md").read_text()
    assert "PPO helps beyond decoding: A = LoRA kl, B = SFT at its best decoding" in summary
    # a second reproduce finds every record, the choice included, and evaluates nothing again
    before = sorted(p.name for p in (results / "records").iterdir())
    assert main(args) == 0
    assert sorted(p.name for p in (results / "records").iterdir()) == before
    assert len(ResultsStore(results).reproductions("smoke")) == 1  # the second did no work, so left no entry
    # the same run evaluated on the validation instructions: a row of the validation table, never of Table 2
    table2_before = (report / "table2.md").read_text()
    assert main([*args, "--validation"]) == 0
    assert (report / "table2.md").read_text() == table2_before
    validation = (report / "validation.md").read_text()
    assert "| LoRA kl |" in validation and "| SFT, greedy |" in validation and "| SFT, temperature 1 |" in validation


def test_a_validation_grid_trains_the_same_runs_and_evaluates_them_on_the_validation_instructions(tmp_path):
    from harness.reproduce import cell_request, eval_plan

    main_grid = G.build_grid(("table2",), "tiny", only=("kl",))
    val_grid = G.build_grid(("table2",), "tiny", only=("kl",), validation=True)
    assert [r.run_id for r in val_grid.runs] == [r.run_id for r in main_grid.runs]  # trained once, evaluated twice
    assert val_grid.rebuilt().validation and not val_grid.spec.sft_decodings
    requests = [cell_request(val_grid, tmp_path, rid, run, step, ev) for rid, run, step, ev in eval_plan(val_grid)]
    assert {r.eval_set for r in requests} == {BUNDLED_VALIDATION} and {r.config.limit for r in requests} == {None}
    with pytest.raises(ValueError, match="--validation: win-rate targets only"):
        G.build_grid(("table2", "table3"), "tiny", validation=True)


def test_the_paper_grid_validates_on_alpacafarms_validation_split_which_the_report_keeps_apart():
    from harness.report_data import is_validation

    spec = G.build_grid(("table2",), "paper", only=("kl",), validation=True).spec
    assert spec.eval_set == "hf:tatsu-lab/alpaca_farm:alpaca_instructions:val"
    assert is_validation({"name": spec.eval_set}) and not is_validation({"name": G.GRIDS["paper"].eval_set})
