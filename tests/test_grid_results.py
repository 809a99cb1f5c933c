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


def test_only_keeps_the_named_runs_with_the_same_ids_and_the_sft_evaluations():
    whole = G.build_grid(("table2",), "tiny", seeds=(1, 2))
    kl = G.build_grid(("table2",), "tiny", seeds=(1, 2), only=("kl",))
    assert [r.label["seed"] for r in kl.runs] == [1, 2]
    assert all(r.label["regularizer"] == "kl" and r.label["lora"] for r in kl.runs)
    assert {r.run_id for r in kl.runs} < {r.run_id for r in whole.runs}  # the same runs, not new ones
    assert kl.sft_evaluators == ("winrate",) and kl.rebuilt().runs == kl.runs
    full = G.build_grid(("table2",), "tiny", only=("full", "none"))
    assert sorted((r.label["regularizer"], r.label["lora"]) for r in full.runs) == [("kl", False), ("none", True)]
    with pytest.raises(ValueError, match="--only bregman: not a run of this grid; allowed: full, jensen_shannon, "
                                         "kl, none"):
        G.build_grid(("table2",), "tiny", only=("bregman",))


def test_a_grid_with_several_answers_per_instruction_asks_for_them_in_its_win_rate_records_only():
    import dataclasses

    from harness import reproduce

    g = G.build_grid(("table2", "table3"), "tiny")
    several = dataclasses.replace(g, spec=dataclasses.replace(g.spec, eval_samples=3))
    assert reproduce.eval_config(several, "winrate").samples == 3
    assert reproduce.eval_config(several, "factuality").samples == 1  # greedy bios: one answer each
    wanted = reproduce.grid_identity(several)
    assert wanted["winrate"]["settings"]["samples"] == 3
    assert "samples" not in reproduce.grid_identity(g)["winrate"]["settings"]
    with pytest.raises(ValueError, match="eval_samples=2 needs .* eval_temperature > 0"):
        dataclasses.replace(g.spec, eval_samples=2, eval_temperature=0.0)


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


def test_each_evaluation_job_of_a_grid_carries_the_identity_the_grid_looks_for(tmp_path):
    """The requests handed to workers and the identity `harness grid` matches records by come from one place."""
    from evals.judges import judge_identity
    from harness.eval_job import read_job, write_job
    from harness.eval_request import open_eval_set
    from harness.reproduce import cell_request, eval_plan, grid_identity

    g = G.build_grid(("table2", "table3"), "smoke")
    wanted = grid_identity(g)
    cells = [cell for cell in eval_plan(g) if cell[3] != "efficiency"]
    assert {ev for *_, ev in cells} == {"winrate", "factuality"}
    for rid, run, step, ev in cells:
        request = cell_request(g, tmp_path / "runs", rid, run, step, ev)
        path = write_job(tmp_path / "jobs" / f"{len(list(tmp_path.glob('jobs/*')))}.json", request, tmp_path / "r")
        assert read_job(str(path)) == (request, str(tmp_path / "r"))  # what the worker runs is what was planned
        cfg = request.config
        assert request.run_id == rid and request.evaluators == (ev,) and cfg.allow_empty == (run is not None)
        if ev == "winrate":
            assert cfg.winrate_settings(cfg.generation()) == wanted["winrate"]["settings"]
            assert open_eval_set(request.eval_set, cfg.limit).identity() == wanted["winrate"]["eval_set"]
            assert judge_identity(cfg.judge, cfg.judge_options) == wanted["winrate"]["judge"]
        else:
            assert cfg.factuality_settings(cfg.generation()) == wanted["factuality"]["settings"]


def test_the_tiny_grid_samples_its_win_rate_answers_and_decodes_its_bios_greedily(tmp_path):
    from harness.reproduce import cell_request, eval_plan, grid_identity

    g = G.build_grid(("table2", "table3"), "tiny")
    temperatures = {ev: cell_request(g, tmp_path, rid, run, step, ev).config.temperature
                    for rid, run, step, ev in eval_plan(g) if ev != "efficiency"}
    assert temperatures == {"winrate": g.spec.eval_temperature, "factuality": 0.0} and g.spec.eval_temperature > 0
    wanted = grid_identity(g)
    assert wanted["factuality"]["settings"]["generation"]["temperature"] == 0.0
    assert wanted["winrate"]["settings"]["generation"]["temperature"] == g.spec.eval_temperature


def test_an_evaluation_job_file_names_what_does_not_fit(tmp_path):
    from harness.eval_job import read_job, write_job
    from harness.eval_request import EvalRequest

    path = write_job(tmp_path / "job.json", EvalRequest(target="tiny-random-llama", preset="smoke"), tmp_path)
    job = json.loads(path.read_text())
    job["request"]["config"]["tempreature"] = 0.7
    path.write_text(json.dumps(job))
    with pytest.raises(ValueError, match="config.tempreature"):
        read_job(path)


def test_set_overrides_the_full_fine_tunes_own_settings_too():
    """`--set lr=...` with `--only full` sweeps the full fine-tune's rate; the preset's own full settings stay the
    default."""
    default = G.build_grid(("table2",), "tiny", only=("full",)).runs[0].config
    assert default.lr == G.GRIDS["tiny"].full_overrides["lr"]
    swept = G.build_grid(("table2",), "tiny", only=("full",), overrides=("lr=1e-4",)).runs[0]
    assert swept.config.lr == 1e-4 and swept.config.reference == "copy" and not swept.config.lora
    lora = G.build_grid(("table2",), "tiny", only=("kl",), overrides=("lr=1e-4",)).runs[0].config
    assert lora.lr == 1e-4
