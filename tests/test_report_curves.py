"""The report's training-curves figure: drawn from the curves copied into results/ (never from runs/), one line
per run in each of its five panels, PNG and PDF, rendered byte-identically twice; a preset without curves gets no
figure; a damaged curves file is refused naming the field."""

from __future__ import annotations

import json

import pytest

from harness.curves import CURVE_METRICS, make_curves, put_curves, read_curves
from harness.errors import UserError
from harness.report import render_report
from harness.report_curves import draw
from harness.results import ResultsStore, make_record

LABELS = {"kl-lora-s1-aaaaaaaaaaaa": {"regularizer": "kl", "lora": True, "seed": 1, "baseline": None},
          "none-lora-s1-bbbbbbbbbbbb": {"regularizer": "none", "lora": True, "seed": 1, "baseline": None}}


def rows(offset: float, steps: int = 4) -> list[dict]:
    return [{"step": s, "objective/scores": offset + s, "objective/true_kl": 0.01 * s * (1 + offset),
             "objective/regularizer": 0.1 * s, "objective/entropy": 2.0 - 0.1 * s, "ppo/loss/value": 1.0 / s,
             "memory/kind": "peak_rss", "time/step": 3.0} for s in range(1, steps + 1)]


@pytest.fixture
def store(tmp_path):
    root = tmp_path / "results"
    ResultsStore(root).put(make_record(
        preset="smoke", run_id="kl-lora-s1-aaaaaaaaaaaa", label=LABELS["kl-lora-s1-aaaaaaaaaaaa"], step=4,
        evaluator="winrate", metrics={"win_rate": 55.0, "standard_error": 5.0, "n": 4},
        judge={"name": "j", "model": "m", "version": "1"}, eval_set={"name": "e", "hash": "h", "n": 4},
        per_item=[{"id": f"q{i}", "preference": p} for i, p in enumerate((2.0, 1.0, 2.0, 1.5))]))
    for i, (rid, label) in enumerate(LABELS.items()):
        put_curves(root, make_curves(rid, "smoke", label, rows(float(i))))
    return root


def test_the_figure_draws_each_runs_metrics_against_step(store):
    runs = read_curves(store, "smoke")
    assert [c["run_id"] for c in runs] == list(LABELS)
    assert runs[0]["metrics"]["objective/scores"] == [1.0, 2.0, 3.0, 4.0]
    fig = draw(runs, "smoke")
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == list(CURVE_METRICS)
    for ax, metric in zip(axes, CURVE_METRICS):
        assert len(ax.lines) == 2
        for line, offset in zip(ax.lines, (0.0, 1.0)):
            expected = [float(v) for r in rows(offset) for v in (r["step"], r[metric])]
            assert line.get_xydata().ravel().tolist() == expected, metric
    assert [line.get_label() for line in axes[0].lines] == ["kl LoRA seed 1", "none LoRA seed 1"]


def test_the_report_renders_curves_png_and_pdf_reproducibly_and_only_where_curves_exist(store, tmp_path):
    out = tmp_path / "report"
    paths = render_report(store, out, "smoke")
    assert out / "curves.png" in paths and out / "curves.pdf" in paths
    assert "[curves.png](curves.png)" in (out / "index.md").read_text()
    first = {p: p.read_bytes() for p in (out / "curves.png", out / "curves.pdf")}
    render_report(store, out, "smoke")
    assert {p: p.read_bytes() for p in first} == first
    other = tmp_path / "other"
    (store / "runs" / "kl-lora-s1-aaaaaaaaaaaa" / "curves.json").unlink()
    (store / "runs" / "none-lora-s1-bbbbbbbbbbbb" / "curves.json").unlink()
    render_report(store, other, "smoke")
    assert not (other / "curves.png").exists() and "curves.png" not in (other / "index.md").read_text()


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.update(steps=[2, 1, 3, 4]), "steps must be a list of increasing integers"),
    (lambda c: c["metrics"]["objective/true_kl"].__setitem__(1, float("nan")), "metrics.objective/true_kl"),
    (lambda c: c["metrics"].pop("ppo/loss/value"), "metrics must have exactly the keys"),
])
def test_a_damaged_curves_file_is_refused_naming_the_field(store, edit, message):
    path = store / "runs" / "kl-lora-s1-aaaaaaaaaaaa" / "curves.json"
    curves = json.loads(path.read_text())
    edit(curves)
    path.write_text(json.dumps(curves))
    with pytest.raises(UserError, match=message):
        read_curves(store, "smoke")



def test_a_run_evaluated_on_validation_instructions_only_is_left_out_of_the_figure(store, tmp_path, monkeypatch):
    """A point of a settings sweep belongs to the validation table; a run with a test record stays drawn."""
    import harness.report_curves as report_curves

    drawn = []
    monkeypatch.setattr(report_curves, "draw", lambda runs, preset: drawn.append([c["run_id"] for c in runs])
                        or draw(runs, preset))

    def validation_record(run_id, prefs):
        ResultsStore(store).put(make_record(
            preset="smoke", run_id=run_id, label=LABELS[run_id], step=4, evaluator="winrate",
            metrics={"win_rate": 50.0, "standard_error": 5.0, "n": 4}, judge={"name": "j", "model": "m", "version": "1"},
            eval_set={"name": "harness-bundled:val", "hash": "v", "n": 4},
            per_item=[{"id": f"v{i}", "preference": p} for i, p in enumerate(prefs)]))

    render_report(store, tmp_path / "a", "smoke")
    assert drawn[-1] == list(LABELS)  # a run with no record at all is still drawn
    validation_record("none-lora-s1-bbbbbbbbbbbb", (1.0, 1.0, 2.0, 1.0))
    render_report(store, tmp_path / "b", "smoke")
    assert drawn[-1] == ["kl-lora-s1-aaaaaaaaaaaa"]
    validation_record("kl-lora-s1-aaaaaaaaaaaa", (1.0, 2.0, 2.0, 2.0))  # it has a test record too
    render_report(store, tmp_path / "c", "smoke")
    assert drawn[-1] == ["kl-lora-s1-aaaaaaaaaaaa"]
