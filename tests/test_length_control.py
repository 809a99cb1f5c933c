"""The length-controlled win rate: our fit against alpaca-eval's own `length_controlled_minimal`, its standard error,
and its place in every win-rate record."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from evals import stats
from evals.evalsets import EvalSet
from evals.judging import Judge
from evals.length_control import C_GRID, length_controlled_win_rate
from evals.winrate import winrate_result


def _annotations(seed: int, n: int, *, bias: float, unparsed: int = 0):
    """A judge that prefers longer outputs (strength `bias`), with draws and fractional preferences mixed in."""
    rng = np.random.default_rng(seed)
    ref_len = rng.integers(200, 900, n)
    model_len = (ref_len * rng.uniform(0.5, 2.5, n)).astype(int)
    logit = 0.3 + bias * np.tanh((model_len - ref_len) / 400)
    prefs = np.where(rng.random(n) < 1 / (1 + np.exp(-logit)), 2.0, 1.0)
    prefs[rng.random(n) < 0.1] = 1.5
    prefs[:5] = [1.25, 1.75, 1.5, 2.0, 1.0]
    prefs = [float(p) for p in prefs]
    for i in range(unparsed):
        prefs[-1 - 3 * i] = None
    return prefs, [int(x) for x in ref_len], [int(x) for x in model_len]


def _alpaca_eval_lc(monkeypatch, tmp_path, prefs, ref_len, model_len) -> float:
    """alpaca-eval's `get_length_controlled_winrate(glm_name="length_controlled_minimal")` on the same annotations."""
    from evals.alpaca_eval_import import import_alpaca_eval

    import_alpaca_eval()
    from alpaca_eval.metrics import glm_winrate

    # its featurisation reads an instruction-difficulty table from the Hub even for the minimal formula, which does
    # not use it: a local stand-in keeps the test offline and cannot change the minimal fit
    table = tmp_path / "df_gamed.csv"
    pd.DataFrame({"model": "m", "index": range(len(prefs)), "instruction_difficulty": 0.0}).to_csv(table, index=False)
    monkeypatch.setattr(glm_winrate, "hf_hub_download", lambda *a, **k: str(table), raising=False)
    annotations = pd.DataFrame({
        "instruction": [f"q{i}" for i in range(len(prefs))], "index": range(len(prefs)),
        "output_1": ["r" * n for n in ref_len], "output_2": ["m" * n for n in model_len],
        "generator_1": "reference", "generator_2": "model", "annotator": "test",
        "preference": [np.nan if p is None else p for p in prefs]})
    out = glm_winrate.get_length_controlled_winrate(annotations, glm_name="length_controlled_minimal",
                                                     save_weights_dir=None, is_warn_extreme_changes=False)
    return float(out["length_controlled_winrate"])


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")  # alpaca-eval's own sklearn calls
@pytest.mark.parametrize("seed,n,bias,unparsed", [(0, 80, 2.0, 0), (1, 40, 0.5, 3), (2, 150, 4.0, 0), (4, 60, 1.0, 0)])
def test_matches_alpaca_eval_length_controlled_minimal(monkeypatch, tmp_path, seed, n, bias, unparsed):
    prefs, ref_len, model_len = _annotations(seed, n, bias=bias, unparsed=unparsed)
    ours = length_controlled_win_rate(prefs, ref_len, model_len)
    theirs = _alpaca_eval_lc(monkeypatch, tmp_path, prefs, ref_len, model_len)
    # the same folds, grid, solver and seed: agreement to rounding, far inside 1e-3 percentage points
    assert ours["lc_win_rate"] == pytest.approx(theirs, abs=1e-9)
    raw = stats.win_rate([p for p in prefs if p is not None])
    if ours["C"] == C_GRID[0]:  # cross-validation chose the strongest penalty: both weights 0
        assert ours["lc_win_rate"] == 50.0 and ours["length_weight"] == 0.0
    else:  # longer model outputs and a length-loving judge: controlling for length lowers the win rate
        assert ours["lc_win_rate"] < raw and ours["length_weight"] < 0  # x = tanh(reference - model length)


def test_no_length_difference_gives_the_raw_rate_and_its_standard_error():
    prefs = [2.0] * 30 + [1.0] * 15 + [1.5] * 5
    lc = length_controlled_win_rate(prefs, [100] * 50, [100] * 50)
    assert lc["lc_win_rate"] == pytest.approx(stats.win_rate(prefs), abs=0.05)
    assert lc["lc_standard_error"] == pytest.approx(stats.standard_error(prefs), rel=2e-3)


def test_standard_error_grows_when_length_explains_the_preferences():
    prefs, ref_len, model_len = _annotations(3, 120, bias=3.0)
    lc = length_controlled_win_rate(prefs, ref_len, model_len)
    raw_se = stats.standard_error(prefs)
    assert raw_se < lc["lc_standard_error"] < 3 * raw_se


def test_too_few_pairs_and_bad_input():
    assert length_controlled_win_rate([2.0, 1.0, None, 2.0, 1.5, None], [1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1]) is None
    with pytest.raises(ValueError, match="one of each per pair"):
        length_controlled_win_rate([2.0] * 6, [1] * 6, [1] * 5)
    with pytest.raises(ValueError, match=r"\[1, 2\]"):
        length_controlled_win_rate([3.0] * 6, list(range(6)), [1] * 6)


class LongerWins(Judge):
    name, model, version = "longer", "rule", "1"

    def _prefer(self, pairs):
        return [1.0 if len(p.output_1) > len(p.output_2) else 2.0 for p in pairs]


def test_every_win_rate_record_has_the_length_controlled_rate():
    records = tuple({"id": str(i), "instruction": f"q{i}", "input": "", "output": None, "generator": None}
                    for i in range(12))
    outputs = ["word " * (3 + i % 5) for i in range(12)]
    references = ["ref " * (4 + i % 3) for i in range(12)]
    result = winrate_result(EvalSet("s", records), outputs, references, LongerWins())
    m = result["metrics"]
    prefs = [p["preference"] for p in result["per_item"]]
    expected = length_controlled_win_rate(prefs, [len(r.strip()) for r in references],
                                          [len(o.strip()) for o in outputs])
    assert m["lc_win_rate"] == pytest.approx(expected["lc_win_rate"])
    assert m["lc_standard_error"] == pytest.approx(expected["lc_standard_error"])
    # a judge that only counts characters: at equal lengths nobody wins more than half
    assert m["lc_win_rate"] < m["win_rate"] or m["win_rate"] <= 50
    assert result["length_control"]["glm"] == "length_controlled_minimal"
    small = winrate_result(EvalSet("s", records[:4]), outputs[:4], references[:4], LongerWins())
    assert small["metrics"]["lc_win_rate"] is None and small["metrics"]["lc_standard_error"] is None


def test_several_answers_per_instruction_are_one_cluster_in_the_standard_error():
    from evals.length_control import _sandwich_se

    rng = np.random.default_rng(0)
    n = 40
    x = np.tanh(rng.normal(size=n))
    y = (rng.random(n) < 1 / (1 + np.exp(-(0.3 + 0.8 * x)))).astype(float)
    z = np.column_stack([x, np.ones(n)])
    w = np.array([0.8, 0.3])
    single = _sandwich_se(z, y, w, np.arange(n))
    # every instruction's pair three times: clustered, it is the same evidence as once; unclustered, it is not
    z3, y3, ids = np.vstack([z] * 3), np.concatenate([y] * 3), np.concatenate([np.arange(n)] * 3)
    assert _sandwich_se(z3, y3, w, ids) == pytest.approx(single, rel=1e-9)
    assert _sandwich_se(z3, y3, w, np.arange(3 * n)) < 0.6 * single
    # five pairs from two instructions cannot fill five cross-validation folds
    assert length_controlled_win_rate([2, 1, 2, 1, 2], [5] * 5, [3, 4, 5, 6, 7], groups=list("aabbb")) is None
    with pytest.raises(ValueError, match="4 groups for 5 pairs"):
        length_controlled_win_rate([2, 1, 2, 1, 2], [5] * 5, [3, 4, 5, 6, 7], groups=list("abcd"))
