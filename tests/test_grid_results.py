"""The results schema and store, and the grid definitions (ids, validation, states)."""

from __future__ import annotations

import json

import pytest

from harness import grid as G
from harness.results import RecordError, ResultsStore, make_record, validate


def rec(**kw):
    base = dict(preset="smoke", run_id="kl-lora-s1-abc", label={"regularizer": "kl", "lora": True, "seed": 1},
                step=3, evaluator="winrate", metrics={"win_rate": 55.0, "standard_error": 3.0},
                judge={"name": "simulated", "model": "m", "version": "v"},
                eval_set={"name": "bundled", "hash": "h", "n": 2},
                per_item=[{"id": "a", "preference": 2.0}, {"id": "b", "preference": 1.2}])
    base.update(kw)
    return make_record(**base)


def test_records_validate_and_round_trip(tmp_path):
    store = ResultsStore(tmp_path)
    r = rec()
    assert r["label"] == {"regularizer": "kl", "lora": True, "seed": 1, "baseline": None}
    path = store.put(r)
    assert json.loads(path.read_text()) == r and store.get(r["record_id"]) == r
    assert rec()["record_id"] == r["record_id"]  # found from its content
    assert rec(step=4)["record_id"] != r["record_id"]
    df = store.dataframe()
    assert list(df["win_rate"]) == [55.0] and list(df["regularizer"]) == ["kl"]
    with pytest.raises(RecordError, match="evaluator='speed'"):
        rec(evaluator="speed")
    bad = dict(r, schema="harness.record/0")
    with pytest.raises(RecordError, match="schema"):
        validate(bad)
    (tmp_path / "records" / "broken.json").write_text("{")
    with pytest.raises(RecordError, match="broken.json: not valid JSON"):
        list(store.records())


def test_run_ids_are_stable_and_location_free():
    g1 = G.build_grid(("table2",), "smoke")
    g2 = G.build_grid(("table2",), "smoke", overrides=("threads=1",))
    assert [r.run_id for r in g1.runs] == [r.run_id for r in g2.runs]
    g3 = G.build_grid(("table2",), "smoke", overrides=("lr=0.002",))
    assert not set(r.run_id for r in g1.runs) & set(r.run_id for r in g3.runs)
    regs = {(r.label["regularizer"], r.label["lora"]) for r in g1.runs}
    assert regs == {(reg, True) for reg in G.PAPER_REGULARIZERS} | {("kl", False)}
    assert g1.sft_evaluators == ("winrate",)
    assert all(r.eval_steps == (3, 6) for r in g1.runs)


def test_tables_share_runs_and_pick_their_evaluators():
    g = G.build_grid(("table1", "table2", "table3"), "tiny")
    kl = [r for r in g.runs if r.label["regularizer"] == "kl" and r.label["lora"]][0]
    assert kl.evaluators == ("efficiency", "factuality", "winrate")
    assert g.sft_evaluators == ("factuality", "winrate")
    assert len({r.run_id for r in g.runs}) == len(g.runs) == 4


def test_bad_grid_input_fails_before_anything_runs():
    with pytest.raises(ValueError, match="preset='huge' has no grid"):
        G.build_grid(("table2",), "huge")
    with pytest.raises(ValueError, match="targets=\\['table9'\\]"):
        G.build_grid(("table9",), "smoke")
    with pytest.raises(ValueError, match="lr"):
        G.build_grid(("table2",), "smoke", overrides=("lr=-1",))


def test_run_states(tmp_path):
    g = G.build_grid(("table2",), "smoke")
    run = g.runs[0]
    folder = tmp_path / run.run_id
    assert G.run_state(folder, run) == "missing"
    folder.mkdir()
    (folder / "metrics.jsonl").write_text(json.dumps({"step": 1}) + "\n")
    assert G.run_state(folder, run) == "partial" and G.completed_steps(folder) == 1
    (folder / "FAILED").write_text("boom")
    assert G.run_state(folder, run) == "failed"
    done = folder / "checkpoints" / f"step-{run.last_step:06d}"
    done.mkdir(parents=True)
    (done / "state.json").write_text(json.dumps({"step": run.last_step}))
    assert G.run_state(folder, run) == "done"
