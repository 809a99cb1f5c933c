"""The length-controlled win rate in the report: Table 2's LC block, Figure 1 by `--metric`, older records as dashes."""

from __future__ import annotations

import pandas as pd
import pytest

from harness import report_figures, results
from harness.cli import main
from harness.report import render_report
from harness.results import ResultsStore, make_record

JUDGE = {"name": "fake_judge", "model": "fake-model", "version": "1"}
EVAL_SET = {"name": "tiny_eval", "hash": "abc123", "n": 20}
KL = {"regularizer": "kl", "lora": True, "seed": 0, "baseline": None}
# (step, win rate, its SE, LC win rate, its SE); step 20's record predates the LC win rate
POINTS = [(0, 40.0, 5.0, 45.0, 6.0), (10, 60.0, 5.0, 52.5, 6.5), (20, 70.0, 4.0, None, None)]


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "harness_identity", lambda: {"version": "0.test", "git_commit": "c0ffee1"})
    s = ResultsStore(tmp_path / "results")
    for step, wr, se, lc, lc_se in POINTS:
        metrics = {"win_rate": wr, "standard_error": se, "n": 20}
        if lc is not None:
            metrics.update(lc_win_rate=lc, lc_standard_error=lc_se)
        s.put(make_record(preset="tiny", run_id="run-kl", label=KL, step=step, evaluator="winrate", metrics=metrics,
                          judge=JUDGE, eval_set=EVAL_SET))
    return s.root


def test_table2_has_the_lc_block_and_dashes_for_older_records(store, tmp_path):
    out = tmp_path / "report"
    render_report(store, out, "tiny")
    df = pd.read_csv(out / "table2.csv")
    ours = df[df.row == "LoRA kl"].set_index("column")
    assert ours.loc["step 10", "text"] == "60.0 ± 5.0" and ours.loc["LC step 10", "text"] == "52.5 ± 6.5"
    assert ours.loc["LC step 10", "metric"] == "lc_win_rate" and ours.loc["LC step 10", "standard_error"] == 6.5
    assert ours.loc["step 20", "text"] == "70.0 ± 4.0" and ours.loc["LC step 20", "text"] == "—"
    md = (out / "table2.md").read_text()
    assert "| step 0 | step 10 | step 20 | LC step 0 | LC step 10 | LC step 20 |" in md
    assert "length_controlled_minimal" in md  # the caption says how LC is computed
    assert r"\multicolumn{3}{c}{ours, length-controlled}" in (out / "table2.tex").read_text()


def _plotted(store, tmp_path, monkeypatch, *extra):
    """Figure 1's our-panel (y label, the run's points) as `harness report` draws it."""
    figures = []
    save = report_figures._save
    monkeypatch.setattr(report_figures, "_save", lambda fig, out, name: figures.append((name, fig)) or
                        save(fig, out, name))
    assert main(["report", "--results", str(store), "--out", str(tmp_path / "report"), "--preset", "tiny",
                 *extra]) == 0
    fig = dict(figures)["figure1"]
    ours = fig.axes[0]
    (bars,) = [c for c in ours.containers if c.get_label() == "LoRA kl"]  # errorbar: data line, caps, bars
    line = bars.lines[0]
    return ours.get_ylabel(), list(zip(line.get_xdata(), line.get_ydata())), fig.get_suptitle()


def test_figure1_plots_the_metric_asked_for(store, tmp_path, monkeypatch):
    ylabel, points, title = _plotted(store, tmp_path, monkeypatch)
    assert ylabel == "win rate (%)" and points == [(0, 40.0), (10, 60.0), (20, 70.0)]
    ylabel, points, title = _plotted(store, tmp_path, monkeypatch, "--metric", "lc_win_rate")
    assert ylabel == "length-controlled win rate (%)"
    assert points == [(0, 45.0), (10, 52.5)]  # step 20 has no LC win rate: left out, not drawn as 0
    assert title.startswith("Length-controlled win rate (ours; the paper's: raw)")


def test_unknown_metric_is_refused(store, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["report", "--results", str(store), "--out", str(tmp_path / "r"), "--metric", "lc"])
    assert "invalid choice: 'lc'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="metric='lc' is not known; allowed: win_rate, lc_win_rate"):
        render_report(store, tmp_path / "r", "tiny", metric="lc")
