"""The report renderer on a synthetic results store: cells, CSV, LaTeX escaping, figures, claim verdicts, empty store."""

import re

import numpy as np
import pandas as pd
import pytest

from evals import stats
from harness import paper_numbers
from harness.report import paired_bootstrap, render_report, verdict
from harness import results
from harness.results import ResultsStore, make_record

JUDGE = {"name": "fake_judge", "model": "fake-model", "version": "1"}
EVAL_SET = {"name": "tiny_eval", "hash": "abc123", "n": 60}
VERIFIER = {"name": "fake_verifier", "model": "fake-model", "version": "1"}
FACT_SET = {"name": "bios", "hash": "def456", "n": 30}
N, N_ENT = 60, 30


def _label(reg, lora=True, baseline=None, seed=0):
    return {"regularizer": reg, "lora": lora, "seed": seed, "baseline": baseline}


def _prefs(rng, p_win):
    return [2.0 if u < p_win else 1.0 for u in rng.random(N)]


def _winrate(run_id, label, step, prefs, true_kl=None, proxy=None):
    metrics = {"win_rate": stats.win_rate(prefs), "standard_error": stats.standard_error(prefs), "n": len(prefs)}
    if true_kl is not None:
        metrics["true_kl"] = true_kl
    if proxy is not None:
        metrics["proxy_reward"] = proxy
    return make_record(preset="tiny", run_id=run_id, label=label, step=step, evaluator="winrate", metrics=metrics,
                       judge=JUDGE, eval_set=EVAL_SET, per_item=[{"id": f"q{i}", "preference": p}
                                                               for i, p in enumerate(prefs)])


def _fact(run_id, label, step, scores, factscore):
    return make_record(preset="tiny", run_id=run_id, label=label, step=step, evaluator="factuality",
                       metrics={"factscore": factscore, "answered": 96.7, "facts_per_answer": 21.5, "n": N_ENT},
                       judge=VERIFIER, eval_set=FACT_SET,
                       per_item=[{"id": f"e{i}", "score": s, "facts": 20, "supported": round(20 * s)}
                                 for i, s in enumerate(scores)])


def _eff(run_id, label, gpus, peak):
    return make_record(preset="tiny", run_id=run_id, label=label, step=20, evaluator="efficiency",
                       metrics={"gpus": gpus, "trainable_params": 1_000_000 if label["lora"] else 100_000_000,
                                "total_params": 100_000_000, "peak_memory_gib": peak, "seconds_per_step": 1.5,
                                "tokens_per_s": 800.0})


@pytest.fixture(scope="module")
def store_and_prefs(tmp_path_factory):
    """kl / none / jensen_shannon at steps 0/10/20, SFT, a full fine-tune; 'none' clearly beats 'kl' at step 20,
    jensen_shannon ties kl, the full fine-tune clearly beats LoRA kl; full FT loses factuality, LoRA keeps it."""
    with pytest.MonkeyPatch.context() as mp:  # a fixed identity: fast (no git / metadata per record), checkable
        mp.setattr(results, "harness_identity", lambda: {"version": "0.test", "git_commit": "c0ffee1"})
        return _build_store(tmp_path_factory.mktemp("results"))


def _build_store(root):
    store = ResultsStore(root)
    rng = np.random.default_rng(0)
    sft = _prefs(rng, 0.3)
    prefs = {("sft", 0): sft}
    store.put(_winrate("sft", _label(None, None, "sft", None), 0, sft))
    kl20 = _prefs(rng, 0.3)
    js20 = list(kl20)
    js20[0], js20[1] = 3.0 - js20[0], 3.0 - js20[1]  # two flips: a tie within noise
    finals = {"kl": kl20, "none": _prefs(rng, 0.9), "jensen_shannon": js20}
    for reg, final in finals.items():
        for step, p in ((0, sft), (10, _prefs(rng, 0.4)), (20, final)):
            prefs[(reg, step)] = p
            store.put(_winrate(f"run-{reg}", _label(reg), step, p, true_kl=0.01 * step, proxy=0.1 * step))
    for step, p_win in ((10, 0.6), (20, 0.95)):
        prefs[("full", step)] = p = _prefs(rng, p_win)
        store.put(_winrate("run-full", _label("kl", lora=False), step, p, true_kl=0.02 * step))
    sft_s = rng.uniform(0.7, 0.9, N_ENT)
    store.put(_fact("sft", _label(None, None, "sft", None), 0, sft_s, 80.0))
    store.put(_fact("run-full", _label("kl", lora=False), 20, sft_s - rng.uniform(0.2, 0.3, N_ENT), 55.0))
    store.put(_fact("run-kl", _label("kl"), 20, sft_s - rng.uniform(0.0, 0.02, N_ENT), 79.0))
    store.put(_eff("run-kl", _label("kl"), 1, 3.0))
    store.put(_eff("run-full", _label("kl", lora=False), 2, 5.0))
    other = make_record(preset="other", run_id="run-bregman", label=_label("bregman"), step=10, evaluator="winrate",
                        metrics={"win_rate": 50.0}, judge=JUDGE, eval_set=EVAL_SET)
    store.put(other)
    store.put_manifest("run-kl", {"command": "harness train --preset tiny --set regularizer=kl", "git_commit": "abc"})
    paper_numbers.store_paper_records(store)
    return root, prefs


@pytest.fixture(scope="module")
def report(store_and_prefs, tmp_path_factory):
    root, prefs = store_and_prefs
    out = tmp_path_factory.mktemp("report")
    return out, render_report(root, out, "tiny"), prefs


def _md_rows(text):
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for ln in lines[2:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        rows[cells[0]] = dict(zip(header[1:], cells[1:]))
    return header, rows


def test_table2_cells(report):
    out, _, prefs = report
    header, rows = _md_rows((out / "table2.md").read_text())
    assert header[1:4] == ["step 0", "step 10", "step 20"]
    assert "paper 20" in header and "paper 180" in header and "paper line" in header
    assert set(rows) == {"SFT", "full FT kl", "LoRA kl", "LoRA none", "LoRA jensen_shannon"}  # no other preset
    for reg in ("kl", "none", "jensen_shannon"):
        for step in (0, 10, 20):
            p = prefs[(reg, step)]
            assert rows[f"LoRA {reg}"][f"step {step}"] == f"{stats.win_rate(p):.1f} ± {stats.standard_error(p):.1f}"
    assert rows["SFT"]["step 10"] == "—" and rows["full FT kl"]["step 0"] == "—"
    assert rows["LoRA kl"]["paper 20"] == "35.6" and rows["LoRA jensen_shannon"]["paper 100"] == "49.8"
    assert rows["SFT"]["paper line"] == "37.0" and rows["full FT kl"]["paper line"] == "46.7"
    assert rows["LoRA none"]["paper line"] == "—"


def test_csv_and_latex(report):
    out, files, prefs = report
    df = pd.read_csv(out / "table2.csv")
    assert len(df) == 5 * (2 * 3 + 5 + 1)  # rows x (our steps, raw and LC + paper steps + paper line)
    assert set(df[df.column.str.startswith("LC ")].text) == {"—"}  # these records predate the LC win rate
    cell = df[(df.row == "LoRA none") & (df.column == "step 20")].iloc[0]
    assert cell.source == "harness" and cell.value == pytest.approx(stats.win_rate(prefs[("none", 20)]))
    assert cell.run_id == "run-none" and cell.n == N
    assert set(df[df.column.str.startswith("paper")].source) == {"paper"}
    t1 = pd.read_csv(out / "table1.csv")
    lora_gpus = t1[(t1.row == "LoRA") & (t1.column == "GPUs")].iloc[0]
    assert lora_gpus.value == 1 and t1[(t1.row == "LoRA") & (t1.column == "paper GPUs")].iloc[0].value == 2
    t3 = pd.read_csv(out / "table3.csv")
    fs = t3[(t3.row == "full FT kl") & (t3.column == "FActScore (%)")].iloc[0]
    assert fs.value == 55.0 and fs.ci_low < fs.ci_high and fs.n == N_ENT  # the record's metric, its entities' interval
    assert fs.text == f"55.0 [{fs.ci_low:.1f}, {fs.ci_high:.1f}]"
    assert t3[(t3.row == "full FT kl") & (t3.column == "supported (%)")].iloc[0].text == "—"  # the record lacks it
    for name in ("table1", "table2", "table3"):
        tex = (out / f"{name}.tex").read_text()
        assert r"\toprule" in tex and r"\bottomrule" in tex
        body = tex.split("\n", 1)[1].replace(" & ", " ")  # the first line is a comment; " & " separates cells
        assert not re.search(r"(?<!\\)[_%&#]", body), name
    assert r"jensen\_shannon" in (out / "table2.tex").read_text()
    assert {p.name for p in files} >= {f"table{i}.{e}" for i in (1, 2, 3) for e in ("md", "tex", "csv")}


def test_figures_valid(report):
    out, _, _ = report
    for name in ("figure1", "figure2", "figure3"):
        png, pdf = (out / f"{name}.png").read_bytes(), (out / f"{name}.pdf").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
        assert pdf[:5] == b"%PDF-" and len(pdf) > 5_000


def _claim(summary, num):
    return summary.split(f"## Claim {num}:")[1].split("## Claim")[0]


def test_summary_verdicts(report):
    out, _, _ = report
    s = (out / "summary.md").read_text()
    c2 = _claim(s, 2)  # none clearly better than kl: not equivalent within the margin
    assert "**contradicted**; equivalence margin +-5 win-rate points; A better by more than the margin" in c2
    assert "**not detected**" in _claim(s, 3)               # jensen_shannon ties kl
    c1 = _claim(s, 1)
    assert "memory" in c1 and "**holds**" in c1 and "**contradicted**" in c1  # less memory; full FT wins here
    c4 = _claim(s, 4).splitlines()
    assert any("PPO hurts" in ln and "**holds**" in ln for ln in c4)
    assert any("LoRA mitigates" in ln and "**holds**" in ln for ln in c4)
    supported = [ln for ln in c4 if ln.startswith("- supported facts before the length penalty")]
    assert len(supported) == 3 and all("**holds**" in ln and "n = 30" in ln for ln in supported)
    index = (out / "index.md").read_text()
    assert "summary.md" in index and "harness train --preset tiny --set regularizer=kl" in index
    assert "`c0ffee1` (" in index


def test_claim4_pairs_only_entities_both_answered():
    from harness.report import compare_scores
    from harness.report_data import Series, item_supported

    def series(items):
        rec = {"per_item": items}
        return Series("x", "lora", "kl", None, points={4: rec})

    sft = series([{"id": "a", "score": 0.02, "facts": 3, "supported": 2}, {"id": "b", "score": 0.0, "facts": 2,
                  "supported": 0}, {"id": "c", "score": 0.05, "facts": 4, "supported": 4}])
    ppo = series([{"id": "a", "score": 0.0, "facts": 1, "supported": 0}, {"id": "b", "score": None, "facts": 0,
                  "supported": 0}, {"id": "c", "score": 0.01, "facts": 2, "supported": 1}])
    assert item_supported(ppo.last) == {"a": 0.0, "c": 0.5}  # b: not answered, no score
    test = compare_scores(ppo, sft, "PPO hurts", -1, "supported")
    assert test.result["n"] == 2 and test.result["difference"] == pytest.approx(100 * ((0 - 2 / 3) + (0.5 - 1)) / 2)
    lone = series([{"id": "a", "score": 0.0, "facts": 1, "supported": 0}])
    assert "fewer than 2 entities answered by both (A 1, B 3, common 1)" in compare_scores(lone, sft, "x", -1).why
    sft.points[4]["per_item"] = [dict(i, answered=True) for i in sft.last["per_item"]]
    ppo.points[4]["per_item"] = [dict(i, answered=i["facts"] > 0) for i in ppo.last["per_item"]]
    answered = compare_scores(ppo, sft, "x", -1, "answered").result  # every common entity, answered or not
    assert answered["n"] == 3 and answered["difference"] == pytest.approx(-100 / 3) and answered["b_better"] == 1


def test_verdict_rule_and_bootstrap():
    assert verdict(0.5, 3.0) == "holds" and verdict(-3.0, -0.5) == "contradicted" and verdict(-1, 1) == "not detected"
    assert verdict(-3.0, -0.5, direction=-1) == "holds"
    r = paired_bootstrap({"a": 0.9, "b": 0.8, "c": 0.7}, {"a": 0.5, "b": 0.5, "c": 0.5, "d": 0.1}, n_bootstrap=500)
    assert r["n"] == 3 and r["difference"] == pytest.approx(30.0) and r["ci_low"] > 0 and r["b_better"] == 0


def test_empty_store(tmp_path):
    files = render_report(tmp_path / "results", tmp_path / "report", "tiny")
    out = tmp_path / "report"
    assert all(p.exists() for p in files) and (out / "figure1.png").stat().st_size > 10_000
    _, rows = _md_rows((out / "table2.md").read_text())
    assert rows["LoRA kl"]["ours"] == "—" and rows["LoRA kl"]["paper 180"] == "47.6"
    _, rows1 = _md_rows((out / "table1.md").read_text())
    assert rows1["LoRA"]["GPUs"] == "—" and rows1["full fine-tune"]["paper GPUs"] == "8"
    assert "—" in (out / "table3.md").read_text()
    assert (out / "summary.md").read_text().count("not measured at this preset") >= 4


def test_paper_records_idempotent(tmp_path):
    recs = paper_numbers.paper_records()
    assert len(recs) == 15 + 2 + sum(map(len, paper_numbers.FIGURE2.values())) + 2
    assert len({r["record_id"] for r in recs}) == len(recs)
    assert recs == paper_numbers.paper_records()
    store = ResultsStore(tmp_path)
    ids = paper_numbers.store_paper_records(store)
    before = {p.name: p.read_bytes() for p in (tmp_path / "records").iterdir()}
    assert paper_numbers.store_paper_records(store) == ids
    assert {p.name: p.read_bytes() for p in (tmp_path / "records").iterdir()} == before
    fig2 = [r for r in store.records() if r["details"].get("figure") == 2]
    assert all("true_kl" in r["metrics"] for r in fig2) and len(fig2) == 42


def test_seeds_judges_and_missing_items(tmp_path, monkeypatch):
    """Two seeds get a row each; records of a second judge are left out (and said so); None preferences and
    records without per-item data do not break the cells or the claims."""
    from harness import report_tables
    from harness.report import claims, load

    monkeypatch.setattr(results, "harness_identity", lambda: {"version": "0.test", "git_commit": "c0ffee1"})
    store = ResultsStore(tmp_path)
    prefs = [2.0, 1.0, None, 1.5, 2.0]
    for seed in (0, 1):
        store.put(_winrate(f"kl-{seed}", _label("kl", seed=seed), 10, [p or 1.0 for p in prefs]))
    rec = _winrate("none-0", _label("none"), 10, [1.0] * 5)
    rec["per_item"][0]["preference"] = None
    store.put(rec)
    store.put(make_record(preset="tiny", run_id="js-0", label=_label("jensen_shannon"), step=10,
                          evaluator="winrate", metrics={"win_rate": 40.0}, judge=JUDGE, eval_set=EVAL_SET))
    store.put(make_record(preset="tiny", run_id="kl-0", label=_label("kl"), step=10, evaluator="winrate",
                          metrics={"win_rate": 10.0}, judge={**JUDGE, "name": "other_judge"}, eval_set=EVAL_SET))
    data = load(tmp_path, "tiny")
    assert data.judge["name"] == "fake_judge" and any("other_judge" in n for n in data.notes)
    t2 = report_tables.table2(data)
    rows = {label: cells for label, cells in t2.rows}
    assert {"LoRA kl (seed 0)", "LoRA kl (seed 1)", "LoRA none", "LoRA jensen_shannon"} <= set(rows)
    assert rows["LoRA jensen_shannon"][0].text == "40.0"  # metrics only: no standard error to show
    assert rows["LoRA kl (seed 1)"][0].text.startswith(f"{stats.win_rate([2, 1, 1, 1.5, 2]):.1f} ± ")
    c = {num: tests for num, _, tests in claims(data)}
    assert c["3"][0].verdict == "not measured at this preset" and "per-item" in c["3"][0].why
    assert c["2"][0].result["n"] == 4  # the None preference is dropped from the pairing


def test_every_preset_when_none_given(store_and_prefs, tmp_path, monkeypatch):
    """preset=None (the CLI's default): one report per preset found, under out/<preset>/, and an index of them."""
    from harness import report, report_figures

    root, _ = store_and_prefs
    monkeypatch.setattr(report_figures, "figure1", lambda data, out: [])  # figures are tested above; keep it fast
    monkeypatch.setattr(report_figures, "figure2", lambda data, out: [])
    monkeypatch.setattr(report_figures, "figure3", lambda data, out: [])
    assert report.presets_in(root) == ["other", "tiny"]
    files = render_report(root, tmp_path, None)
    assert (tmp_path / "tiny" / "table2.md").is_file() and (tmp_path / "other" / "summary.md").is_file()
    assert "LoRA bregman" in (tmp_path / "other" / "table2.md").read_text()
    assert "[tiny](tiny/index.md)" in (tmp_path / "index.md").read_text() and tmp_path / "index.md" in files


def test_seeds_are_averaged_per_instruction_before_pairing(tmp_path, monkeypatch):
    """A regulariser's seeds enter a claim as one preference per instruction (their mean), paired with the SFT
    policy's step 0; instructions missing from a seed are left out."""
    from harness.report import averaged_preferences, claims, load

    monkeypatch.setattr(results, "harness_identity", lambda: {"version": "0.test", "git_commit": "c0ffee1"})
    store = ResultsStore(tmp_path)
    store.put(_winrate("sft", _label(None, None, "sft", None), 0, [1.0] * 8))
    seed1 = [2.0, 2.0, 2.0, 1.0, 2.0, 2.0, 1.5, 2.0]
    seed2 = [2.0, 1.0, 2.0, 1.0, 2.0, 2.0, 2.0, 2.0]
    for seed, prefs in ((1, seed1), (2, seed2)):
        for step in (2, 4):
            store.put(_winrate(f"kl-{seed}", _label("kl", seed=seed), step, prefs if step == 4 else [1.0] * 8))
    rec = _winrate("kl-3", _label("kl", seed=3), 4, [2.0] * 8)
    rec["per_item"] = rec["per_item"][:6]  # a third seed lacks two instructions
    store.put(rec)
    data = load(tmp_path, "tiny")
    runs = data.find_all(data.winrate, "lora", "kl")
    assert [r.seed for r in runs] == [1, 2, 3]
    avg = averaged_preferences(runs, 4)
    assert sorted(avg) == [f"q{i}" for i in range(6)]
    assert avg["q1"] == pytest.approx(5.0 / 3) and avg["q3"] == pytest.approx(4.0 / 3)
    helps = next(t for t in {n: ts for n, _, ts in claims(data)}["1"] if "A = LoRA kl, B = SFT" in t.what)
    assert "3 seeds averaged" in helps.what and "(step 4 vs 0)" in helps.what
    assert helps.result["n"] == 6 and helps.result["mean_b"] == 0.0
    assert helps.result["mean_a"] == pytest.approx(stats.win_rate(list(avg.values())))
    assert helps.verdict == "holds"


def test_the_report_says_which_reproduce_made_it_and_how_long_it_took(tmp_path, monkeypatch):
    from harness import report_figures

    for name in ("figure1", "figure2", "figure3"):
        monkeypatch.setattr(report_figures, name, lambda data, out: [])
    store = ResultsStore(tmp_path / "results")
    store.put(_winrate("sft", _label(None, None, "sft", None), 0, [1.0, 2.0]))
    first = {"command": "harness reproduce --table 2", "minutes": 70.0, "runs_trained": 1, "evaluations": 1,
             "failed": [], "machine": "Some CPU, 2 cores, x86_64", "finished": "2026-01-01T00:00:00Z"}
    store.add_reproduction("tiny", first)
    store.add_reproduction("tiny", {**first, "minutes": 42.04, "runs_trained": 4, "evaluations": 9})
    assert [r["minutes"] for r in store.reproductions("tiny")] == [70.0, 42.04] and store.reproductions("x") == []
    render_report(tmp_path / "results", tmp_path / "report", "tiny")
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert ("Made by `harness reproduce --table 2` finished 2026-01-01T00:00:00Z in 70.0 min of wall time (trained 1 "
            "runs, ran 1 evaluations) on Some CPU, 2 cores, x86_64.") in summary
    assert ("Then `harness reproduce --table 2` finished 2026-01-01T00:00:00Z in 42.0 min of wall time (trained 4 "
            "runs, ran 9 evaluations) on Some CPU, 2 cores, x86_64.") in summary
    assert "- made by `harness reproduce --table 2`" in (tmp_path / "report" / "index.md").read_text()


def test_table3_says_how_the_bios_were_decoded():
    from harness.report_data import Series
    from harness.report_tables import _decoding_text

    greedy, sampled = Series("a", "lora", "kl", 1), Series("b", "sft", None, None)
    greedy.points[6] = {"details": {"generation": {"temperature": 0.0, "max_new_tokens": 96}}}
    sampled.points[0] = {"details": {"generation": {"temperature": 1.0, "max_new_tokens": 96}}}
    assert _decoding_text([greedy]) == "greedy, 96 new tokens"
    assert _decoding_text([greedy, sampled, greedy]) == "greedy, 96 new tokens; sampled at temperature 1, 96 new tokens"
    assert _decoding_text([]) == "decoding not recorded"
    several = Series("c", "lora", "kl", 2)
    several.points[6] = {"details": {"generation": {"temperature": 1.0, "max_new_tokens": 96},
                                     "samples_per_instruction": 4}}
    assert _decoding_text([several]) == "sampled at temperature 1 (4 answers per instruction, averaged), 96 new tokens"


def test_validation_records_stay_out_of_the_test_tables(tmp_path):
    """A run evaluated on the validation instructions too: its table and curves use the main eval set only."""
    from harness.report_data import load

    store = ResultsStore(tmp_path)
    test_prefs, val_prefs = [2.0] * 40 + [1.0] * 20, [1.0] * 30
    store.put(_winrate("run-kl", _label("kl"), 10, test_prefs))
    store.put(_winrate("run-none", _label("none"), 10, test_prefs))
    store.put(make_record(preset="tiny", run_id="run-kl", label=_label("kl"), step=10, evaluator="winrate",
                          metrics={"win_rate": 0.0, "n": 30}, judge=JUDGE,
                          eval_set={"name": "harness-bundled:val", "hash": "bb09", "n": 30},
                          per_item=[{"id": f"v{i}", "preference": p} for i, p in enumerate(val_prefs)]))
    data = load(tmp_path, "tiny")
    kl = data.find(data.winrate, "lora", "kl")
    assert kl.points[10]["eval_set"] == EVAL_SET and kl.points[10]["metrics"]["win_rate"] == pytest.approx(200 / 3)
    assert data.notes == [] and [r["eval_set"]["name"] for r in data.validation] == ["harness-bundled:val"]


def test_the_validation_table_shows_the_sft_decodings_and_the_sweep_runs(tmp_path):
    from harness.report import render_report

    store = ResultsStore(tmp_path)
    store.put(_winrate("run-kl", _label("kl"), 10, [2.0] * 30 + [1.0] * 30))
    val = {"name": "harness-bundled:val", "hash": "bb09", "n": 4}

    def on_validation(run_id, label, step, prefs, temperature):
        return make_record(preset="tiny", run_id=run_id, label=label, step=step, evaluator="winrate",
                           metrics={"win_rate": stats.win_rate(prefs), "standard_error": stats.standard_error(prefs),
                                    "n": len(prefs)}, judge=JUDGE, eval_set=val,
                           details={"generation": {"temperature": temperature}},
                           settings={"generation": {"temperature": temperature}},
                           per_item=[{"id": f"v{i}", "preference": p} for i, p in enumerate(prefs)])

    store.put(on_validation("sft:m", _label(None, None, "sft", None), 0, [1.0, 1.0, 2.0, 2.0], 0.0))
    store.put(on_validation("sft:m", _label(None, None, "sft", None), 0, [1.0, 1.0, 1.0, 2.0], 0.7))
    store.put(on_validation("run-lr1", _label("kl", seed=1), 10, [2.0, 2.0, 2.0, 1.0], 1.0))
    store.put_manifest("run-lr1", {"run_id": "run-lr1", "config": {"lr": 0.001, "kl_coef": 0.02, "steps": 10}})
    render_report(tmp_path, tmp_path / "out", "tiny")
    rows = {ln.split(" | ")[0].strip("| "): ln for ln in (tmp_path / "out" / "validation.md").read_text().splitlines()
            if ln.startswith("| ") and "---" not in ln}
    assert rows["SFT, greedy"].split(" | ")[4] == "50.0 ± 28.9"
    assert rows["SFT, temperature 0.7"].split(" | ")[4] == "25.0 ± 25.0"
    assert rows["LoRA kl"].split(" | ")[1:4] == ["0.001", "0.02", "10"] and "75.0 ± 25.0" in rows["LoRA kl"]
    assert "run-kl" not in (tmp_path / "out" / "validation.csv").read_text()  # test-set records stay in Table 2


def test_seed_means_average_each_instructions_preference_over_the_seeds():
    from harness.report_data import Series, seed_means

    def run(run_id, seed, prefs, kl):
        rec = {"step": 4, "metrics": {"win_rate": 0.0, "true_kl": kl, "lc_win_rate": 50.0 + seed},
               "per_item": [{"id": f"q{i}", "preference": p} for i, p in enumerate(prefs)]}
        return Series(run_id, "lora", "kl", seed, points={4: rec})

    one, two = run("a", 1, [2.0, 1.0, 2.0, 1.0], 0.1), run("b", 2, [2.0, 2.0, 1.0, 1.0], 0.3)
    sft = Series("sft:m", "sft", None, None, points={0: {"step": 0, "metrics": {"win_rate": 40.0}}})
    none = run("c", 1, [1.0, 1.0, 1.0, 2.0], 0.5)
    none.regularizer = "none"
    out = seed_means([two, sft, one, none])
    assert [s.label for s in out] == ["SFT", "LoRA kl (mean of 2 seeds)", "LoRA none"]
    m = out[1].points[4]["metrics"]
    averaged = [2.0, 1.5, 1.5, 1.0]
    assert m["win_rate"] == pytest.approx(stats.win_rate(averaged)) == 50.0
    assert m["standard_error"] == pytest.approx(stats.standard_error(averaged))
    assert m["true_kl"] == pytest.approx(0.2) and m["lc_win_rate"] == pytest.approx(51.5) and m["n"] == 4
    assert out[2] is none and out[0] is sft


def test_a_table_keeps_one_decoding_and_the_best_decoding_row_its_own(tmp_path):
    """Records of one run at two decodings: the table keeps the decoding most of its policies share, even where the
    other record is newer, says what it left out, and keeps 'SFT at its best decoding' at the decoding chosen for it."""
    from harness.report_data import load

    def at(run_id, label, temperature, prefs, created):
        generation = {"temperature": temperature, "top_p": 1.0, "top_k": 0, "max_new_tokens": 96}
        return make_record(preset="tiny", run_id=run_id, label=label, step=0 if label["baseline"] else 10,
                           evaluator="winrate", metrics={"win_rate": stats.win_rate(prefs), "n": len(prefs)},
                           judge=JUDGE, eval_set=EVAL_SET, details={"generation": generation},
                           settings={"generation": generation}, created=created,
                           per_item=[{"id": f"q{i}", "preference": p} for i, p in enumerate(prefs)])

    store = ResultsStore(tmp_path)
    greedy, sampled = [2.0] * 30 + [1.0] * 30, [2.0] * 50 + [1.0] * 10
    store.put(at("sft:p", _label(None, None, "sft"), 0.0, [1.5] * 60, "2026-01-01T00:00:00+00:00"))
    store.put(at("run-kl", _label("kl"), 0.0, greedy, "2026-01-01T00:00:01+00:00"))
    store.put(at("run-none", _label("none"), 0.0, greedy, "2026-01-01T00:00:02+00:00"))
    store.put(at("run-kl", _label("kl"), 1.0, sampled, "2026-01-02T00:00:00+00:00"))
    store.put(at("sft-best:p", _label(None, None, "sft-best"), 1.0, sampled, "2026-01-02T00:00:01+00:00"))
    data = load(tmp_path, "tiny")
    kl = data.find(data.winrate, "lora", "kl")
    assert kl.points[10]["details"]["generation"]["temperature"] == 0.0
    assert kl.points[10]["metrics"]["win_rate"] == pytest.approx(50.0)
    best = data.find(data.winrate, "sft_best")
    assert best is not None and best.points[0]["details"]["generation"]["temperature"] == 1.0
    assert data.notes == ["win-rate records of other decodings left out: temperature 1, top_p 1.0, top_k 0, "
                          "96 new tokens (1)"]


def test_a_new_rendering_removes_an_earlier_reports_files_it_lacks_and_nothing_else(tmp_path):
    out = tmp_path / "report"
    files = render_report(tmp_path / "results", out, "tiny")
    index = out / "index.md"
    # an earlier rendering (another preset, older code) that listed a file this one does not make
    index.write_text(index.read_text().replace("## Files\n\n", "## Files\n\n- [validation.md](validation.md)\n"))
    (out / "validation.md").write_text("an older report's table")
    (out / "notes.md").write_text("the user's own notes")  # never listed by a report
    again = render_report(tmp_path / "results", out, "tiny")
    assert sorted(again) == sorted(files) and all(p.is_file() for p in again)
    assert not (out / "validation.md").exists()
    assert (out / "notes.md").read_text() == "the user's own notes"
    assert "validation.md" not in index.read_text()


def test_a_several_preset_index_names_the_files_of_each_preset_folder(tmp_path):
    from harness.report import rendered_before

    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "table2.md").write_text("t")
    (tmp_path / "tiny" / "index.md").write_text("# Report, preset `tiny`\n\n## Files\n\n- [table2.md](table2.md)\n"
                                                "- [../x](../x)\n- [gone.md](gone.md)\n")
    (tmp_path / "index.md").write_text("# Reports\n\n- [tiny](tiny/index.md)\n")
    assert rendered_before(tmp_path) == {tmp_path / "index.md", tmp_path / "tiny" / "index.md",
                                         tmp_path / "tiny" / "table2.md"}
    (tmp_path / "index.md").write_text("# My notes\n\n- [tiny](tiny/index.md)\n")  # not a report's index
    assert rendered_before(tmp_path) == set()
