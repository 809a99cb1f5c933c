"""`harness judge-check`, `harness fit-judge`, the baseline and learned judges, the correctness probe and the
report's judges table, on small annotation files written here (and on the real GPT-4 annotations when present)."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import numpy as np
import pytest

from evals import judge_check as jc
from evals.annotations import AnnotationError, file_hash, judged_pairs, load_annotations
from evals.correctness_probe import alter, probe_pairs
from evals.judging import Pair, annotate
from harness.cli import main
from harness.results import ResultsStore

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
REAL = SHARED / "alpaca_eval_gpt4_annotations.jsonl.gz"


def _write(tmp: Path, rows: list[dict], prompts: list[str], gz: bool = False) -> Path:
    (tmp / "alpaca_farm_evaluation.json").write_text(json.dumps([{"instruction": p, "input": ""} for p in prompts]))
    path = tmp / ("ann.jsonl.gz" if gz else "ann.jsonl")
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if gz:
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


def _fixture(tmp: Path, gz: bool = False) -> Path:
    """3 models x 8 instructions. 'long' writes long answers and always wins; 'short' writes short ones and wins
    where its index is even; 'same' repeats the reference (a draw nobody judged) on index 0."""
    prompts = [f"Question {i} about the year 1990 in Paris?" for i in range(8)]
    ref = "The answer is 42, said Smith in March 1990."
    rows = []
    for i in range(8):
        rows.append({"model": "long", "index": i, "output": ref + " More detail follows here. " * 3,
                     "preference": 2, "reference": ref})
        rows.append({"model": "short", "index": i, "output": "It is 7.", "preference": 2 if i % 2 == 0 else 1,
                     "reference": ref})
        rows.append({"model": "same", "index": i, "output": ref if i == 0 else "No idea, sorry, I am unsure.",
                     "preference": 1.5 if i == 0 else 1, "reference": ref})
    return _write(tmp, rows, prompts, gz)


def _check(tmp: Path, ann: Path, *extra: str) -> dict:
    assert main(["judge-check", "--annotations", str(ann), "--results", str(tmp / "results"), *extra]) == 0
    recs = [r for r in ResultsStore(tmp / "results").records() if r["evaluator"] == "judge_check"]
    return recs[-1] if len(recs) == 1 else recs


def test_agreement_draws_count_half():
    assert jc.agreement_scores([2, 1.5, 1, 2, 1.5], [2, 2, 2, 1, 1.5]).tolist() == [1, 0.5, 0, 0, 1]
    mean, se, n = jc.percent(jc.agreement_scores([2, 1.5, 1, 2], [2, 2, 2, 1]))
    assert (mean, n) == (37.5, 4) and se == pytest.approx(100 * np.std([1, .5, 0, 0], ddof=1) / 2)


def test_longer_share_and_correlations():
    assert jc.longer_preferred([2, 1, 1.5, 2], [1, 5, 1, 3], [9, 9, 9, 3]).tolist() == [1, 0, 0.5]
    models = ["a"] * 4 + ["b"] * 4 + ["c"] * 4
    idx = [0, 1, 2, 3] * 3
    ref = [2, 2, 2, 1, 2, 2, 1, 1, 2, 1, 1, 1]  # a 75, b 50, c 25
    same = jc.model_correlations(models, idx, ref, ref, n_bootstrap=50)
    assert same["spearman"] == pytest.approx(1.0) and same["kendall"] == pytest.approx(1.0)
    flipped = jc.model_correlations(models, idx, [3 - p for p in ref], ref, n_bootstrap=50)
    assert flipped["spearman"] == pytest.approx(-1.0)
    assert flipped["per_model"]["a"] == {"win_rate": 25.0, "standard_error": pytest.approx(25.0),
                                         "reference_win_rate": 75.0, "n": 4}
    assert same["n_models_under70"] == 2 and same["spearman_under70"] is None  # two models: no rank correlation


def test_judge_check_longer_baseline(tmp_path):
    rec = _check(tmp_path, _fixture(tmp_path, gz=True), "--judge", "longer", "--probe", "5")
    m = rec["metrics"]
    # 23 judged pairs (the 'same' model's index 0 is an unjudged draw); 'longer' picks the long output on 8 'long'
    # pairs (all right), the reference on 8 'short' (right on the 4 odd ones) and on 7 'same' (all right): 19/23
    assert m["n"] == 23 and m["agreement"] == pytest.approx(100 * 19 / 23)
    assert m["agreement_shorter_preferred"] == pytest.approx(0.0) and m["agreement_shorter_preferred_n"] == 4
    assert m["longer_agreement"] == pytest.approx(m["agreement"]) and m["longer_share"] == 100.0
    assert m["model_wins_agreement"] == pytest.approx(100 * 12 / 23)
    assert m["order_consistency"] == 100.0 and m["probe_n"] == 5
    items = {i["id"]: i for i in rec["per_item"]}
    assert items["short/1"] == {"id": "short/1", "model": "short", "index": 1, "preference": 1.0}
    assert rec["details"]["per_model"]["long"]["win_rate"] == 100.0
    assert rec["judge"]["name"] == "longer" and rec["preset"] == "judge-check"


def test_model_wins_is_read_in_the_given_order(tmp_path):
    rec = _check(tmp_path, _fixture(tmp_path), "--judge", "model-wins", "--probe", "0")
    assert rec["metrics"]["order_consistency"] == 0.0
    assert rec["metrics"]["agreement"] == pytest.approx(100 * 12 / 23)
    assert rec["metrics"]["probe_correct"] is None


def test_record_keyed_by_models(tmp_path):
    ann = _fixture(tmp_path)
    _check(tmp_path, ann, "--judge", "longer", "--probe", "0")
    recs = _check(tmp_path, ann, "--judge", "longer", "--probe", "0", "--models", "long,short")
    assert len(recs) == 2 and {r["eval_set"]["n"] for r in recs} == {23, 16}


@pytest.mark.parametrize("content, expected", [
    ('{"model": "a", "index": 0}\n', "line 1: missing field(s) ['output', 'preference', 'reference']"),
    ("not json\n", "line 1: not JSON"),
    ('{"model": "a", "index": 0, "output": "x", "reference": "y", "preference": 3}\n', "preference=3"),
    ('{"model": "a", "index": -1, "output": "x", "reference": "y", "preference": 2}\n', "index=-1"),
])
def test_bad_annotation_files_fail_in_one_line(tmp_path, capsys, content, expected):
    (tmp_path / "bad.jsonl").write_text(content)
    assert main(["judge-check", "--annotations", str(tmp_path / "bad.jsonl"), "--judge", "longer"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--annotations" in err and expected in err


def test_bad_options_fail_before_any_work(tmp_path, capsys):
    ann = _fixture(tmp_path)
    for argv, expected in ((["--annotations", str(tmp_path / "missing.jsonl")], "no such file"),
                           (["--annotations", str(ann), "--judge", "gpt5"], "valid judges: learned, longer"),
                           (["--annotations", str(ann), "--models", "long,nope"], "--models nope: not in"),
                           (["--annotations", str(ann), "--judge", "learned", "--judge-model", "nope.json"],
                            "--judge-model 'nope.json': no such file"),
                           (["--annotations", str(ann), "--instructions", str(tmp_path / "x.json")],
                            "--instructions")):
        assert main(["judge-check", *argv, "--results", str(tmp_path / "r")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expected in err, err
    assert not (tmp_path / "r").exists()


def test_null_preferences_skipped_and_duplicates_refused(tmp_path):
    row = {"model": "a", "index": 0, "output": "x", "reference": "y"}
    (tmp_path / "a.jsonl").write_text(json.dumps({**row, "preference": None}) + "\n"
                                      + json.dumps({**row, "index": 1, "preference": 2}) + "\n")
    assert [r.index for r in load_annotations(tmp_path / "a.jsonl")] == [1]
    (tmp_path / "b.jsonl").write_text((json.dumps({**row, "preference": 2}) + "\n") * 2)
    with pytest.raises(AnnotationError, match="appears twice"):
        load_annotations(tmp_path / "b.jsonl")


def test_probe_alters_facts_and_scores_the_original():
    text = "The bridge opened in 1937 and is 2737 meters long; it was designed by Joseph Strauss in May."
    altered, kinds = alter(text, random.Random(0))
    assert altered != text and kinds and abs(len(altered) - len(text)) <= 4
    assert "number" in kinds
    rows = load_annotations_from([("m", i, text.replace("1937", str(1900 + i)), 2) for i in range(30)])
    pairs = probe_pairs(rows, [f"q{i}" for i in range(30)], n=20, seed=1)
    assert len(pairs) == 20 and {p.original_side for p in pairs} == {1, 2}
    p = pairs[0]
    original = p.pair.output_1 if p.original_side == 1 else p.pair.output_2
    assert original.startswith("The bridge opened in 19")
    assert p.right(1.0 if p.original_side == 1 else 2.0) == 1.0 and p.right(1.5) == 0.5


def load_annotations_from(rows):
    from evals.annotations import Annotation

    return [Annotation(m, i, out, "A reference answer.", float(pref)) for m, i, out, pref in rows]


def assert_symmetric_and_deterministic(judge):
    """Swapping the outputs maps p to 3 - p, the same pairs get the same answers, identical outputs tie."""
    pairs = [Pair("List three fruits.", "", "Apple.", "1. Apple\n2. Pear\n3. Plum"),
             Pair("What is 2+2?", "", "4", "I'm sorry, I cannot answer that")]
    forward = annotate(judge, pairs, order="fixed")
    backward = annotate(judge, [p.swapped() for p in pairs], order="fixed")
    assert [f + b for f, b in zip(forward, backward)] == pytest.approx([3.0, 3.0])
    assert annotate(judge, pairs, order="fixed") == forward
    assert annotate(judge, [Pair("x", "", "same", "same")], order="fixed") == [1.5]


def test_learned_judge_is_symmetric_and_deterministic(tmp_path):
    from evals.learned_judge import FEATURES, LearnedJudge, weights_version

    rng = np.random.default_rng(0)
    w = {"features": list(FEATURES), "mean": [0.0] * len(FEATURES), "scale": [1.0] * len(FEATURES),
         "coef": rng.normal(size=len(FEATURES)).round(3).tolist()}
    w["version"] = weights_version(w)
    judge = LearnedJudge(w)
    assert_symmetric_and_deterministic(judge)


def test_fit_judge_learns_length_and_holds_out_models(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))  # the MiniLM embeddings of the fixture's texts
    prompts = [f"Explain topic number {i} to me." for i in range(40)]
    rows = []
    for m in range(6):
        for i in range(40):
            words = 5 + ((m * 7 + i * 3) % 40)
            out = " ".join(["word"] * words) + "."
            rows.append({"model": f"m{m}", "index": i, "output": out, "reference": " ".join(["ref"] * 20) + ".",
                         "preference": 2 if words > 20 else 1})
    ann = _write(tmp_path, rows, prompts)
    out = tmp_path / "w.json"
    assert main(["fit-judge", "--annotations", str(ann), "--folds", "3", "--out", str(out),
                 "--results", str(tmp_path / "results")]) == 0
    weights = json.loads(out.read_text())
    fit = json.loads(out.with_suffix(".fit.json").read_text())
    from evals.learned_judge import LearnedJudge

    judge = LearnedJudge(out)
    assert judge._prefer([Pair("Explain.", "", " ".join(["w"] * 10) + ".", " ".join(["w"] * 30) + ".")])[0] > 1.9
    assert fit["heldout"]["agreement"] > 95 and sorted(set(fit["folds"].values())) == [0, 1, 2]
    # content features: 40 prompts, 40 distinct outputs, 1 reference embedded once; the flags of the machine
    assert judge.model == "bradley-terry head on surface, word and MiniLM features, pair-modulated"
    assert len(weights["content"]["coef"]) == 385 and fit["texts_embedded"] == 81
    # the pair block: 4 fixed modulators and 32 of the 40 prompts' principal components, each times every surface
    # feature; hard decisions, every held-out preference a pick
    from evals.learned_judge import FEATURES, PAIR_FIXED

    pair = weights["pair"]
    assert pair["modulators"][:4] == list(PAIR_FIXED) and len(pair["modulators"]) == 36
    assert len(pair["coef"]) == 36 * len(FEATURES) and len(pair["pca_components"]) == 32
    assert weights["decision"] == "hard" and weights["shorter_weight"] == 2.0
    assert {i["preference"] for i in next(ResultsStore(tmp_path / "results").records())["per_item"]} <= {1.0, 2.0}
    assert set(fit["cpu_flags"]) == {"avx2", "avx512f", "avx512_bf16", "amx_bf16"} and fit["seconds"] > 0
    rec = next(ResultsStore(tmp_path / "results").records())
    assert rec["settings"]["heldout"] and rec["metrics"]["n"] == 240 and rec["settings"]["content"] == "minilm"
    # the same weights, as a judge by name
    assert main(["judge-check", "--annotations", str(ann), "--judge", "learned", "--judge-model", str(out),
                 "--results", str(tmp_path / "results"), "--probe", "0"]) == 0
    # refit: the same weights bit for bit
    again = tmp_path / "w2.json"
    assert main(["fit-judge", "--annotations", str(ann), "--folds", "3", "--out", str(again),
                 "--results", str(tmp_path / "results")]) == 0
    assert json.loads(again.read_text()) == weights
    assert json.loads(again.with_suffix(".fit.json").read_text())["texts_embedded"] == 0  # all read from the cache
    # without content features: the surface-and-word head of before, no embedding
    plain = tmp_path / "w3.json"
    assert main(["fit-judge", "--annotations", str(ann), "--folds", "3", "--out", str(plain), "--content", "none",
                 "--results", str(tmp_path / "results")]) == 0
    assert "content" not in json.loads(plain.read_text())
    assert "texts_embedded" not in json.loads(plain.with_suffix(".fit.json").read_text())


def test_fit_judge_word_weight_goes_into_the_shipped_coefficients(tmp_path, monkeypatch):
    """With --word-weight w the fit sees w times the word difference; the judge scores the plain bag of words, so
    the shipped word coefficients carry the w: the judge's logits equal the fit's own design times its head."""
    import evals.judge_fit as judge_fit
    from evals.learned_judge import LearnedJudge

    fits = []
    original = judge_fit.fit_head

    def recording(x, y, l2, sample_weight=None):
        coef = original(x, y, l2, sample_weight)
        fits.append((x, coef))
        return coef

    monkeypatch.setattr(judge_fit, "fit_head", recording)
    prompts = [f"Describe item {i}." for i in range(30)]
    rows = []
    for m in range(4):
        for i in range(30):
            good = (m + i) % 3 != 0
            out = f"The item {i} is {'excellent' if good else 'broken'} and {'useful' if good else 'faulty'}."
            rows.append({"model": f"m{m}", "index": i, "output": out, "reference": f"Item {i} is an item.",
                         "preference": 2 if good else 1})
    ann = _write(tmp_path, rows, prompts)
    heads = {}
    for weight in ("1", "3"):
        out = tmp_path / f"w{weight}.json"
        assert main(["fit-judge", "--annotations", str(ann), "--folds", "2", "--out", str(out), "--content", "none",
                     "--min-df", "2", "--word-weight", weight, "--results", str(tmp_path / f"r{weight}")]) == 0
        x, coef = fits[-1]  # the shipped head: fitted last, on every pair
        weights = json.loads(out.read_text())
        judge = LearnedJudge(weights)
        z = judge.logits([prompts[r["index"]] for r in rows], [r["reference"] for r in rows], [r["output"] for r in rows])
        np.testing.assert_allclose(z, np.asarray(x @ coef).ravel(), atol=1e-4)
        heads[weight] = dict(zip(weights["vocabulary"], weights["word_coef"]))
        rec = next(ResultsStore(tmp_path / f"r{weight}").records())
        assert rec["settings"].get("word_weight") == (None if weight == "1" else 3.0)
    # a weaker penalty on the words: the deciding words count more
    assert heads["3"]["excellent"] > heads["1"]["excellent"] > 0 > heads["1"]["broken"] > heads["3"]["broken"]
    assert "word_weight" not in json.loads((tmp_path / "w1.json").read_text())


def test_report_judges_table(tmp_path):
    from harness.report_judges import judges_md

    _check(tmp_path, _fixture(tmp_path), "--judge", "longer", "--probe", "4")
    md = judges_md(list(ResultsStore(tmp_path / "results").records()))
    assert "# Judges against GPT-4" in md and "| longer (the longer output wins) | 23 | 82.6 ± 8.1 |" in md
    assert "| version `chars-1`, 3 models, order both |" in md
    assert "69.2" in md and "65.7" in md


@pytest.mark.skipif(not REAL.is_file(), reason=f"the GPT-4 annotations are not beside the repository ({REAL})")
def test_real_annotations_longer_rule(tmp_path):
    rows = judged_pairs(load_annotations(REAL))
    assert len(rows) == 34398 and len({r.model for r in rows}) == 43
    rec = _check(tmp_path, REAL, "--judge", "longer", "--probe", "100")
    assert rec["metrics"]["agreement"] == pytest.approx(85.4, abs=0.05)
    assert rec["metrics"]["model_wins_agreement"] == pytest.approx(81.4, abs=0.05)
    assert rec["metrics"]["probe_n"] == 100


def test_shipped_weights_match_their_fit_record_and_held_out_record():
    from evals.learned_judge import WEIGHTS_FILE, LearnedJudge, default_identity

    fit = json.loads(WEIGHTS_FILE.with_suffix(".fit.json").read_text())
    judge = LearnedJudge()
    assert judge.version == fit["weights"]["version"] == default_identity()["version"]
    rec = ResultsStore(Path(__file__).resolve().parents[1] / "results").get(fit["heldout_record"])
    assert rec is not None and rec["judge"]["version"] == judge.version and rec["settings"]["heldout"]
    assert rec["metrics"]["agreement"] == pytest.approx(fit["heldout"]["agreement"])
    assert set(fit["excluded_instructions"]) == {"26", "332", "370", "387"}
    # the shipped head reads MiniLM content and modulates by pair; its held-out figures (models never seen in the fit)
    assert judge.model == "bradley-terry head on surface, word and MiniLM features, pair-modulated"
    assert rec["judge"]["model"].startswith(judge.model) and rec["settings"]["content"] == "minilm"
    assert rec["settings"]["decision"] == "hard" and rec["settings"]["prompt_components"] == 32
    assert (rec["settings"]["folds"], rec["settings"]["min_df"], rec["settings"]["word_weight"]) == (10, 5, 4.0)
    assert len(judge.weights["vocabulary"]) == 24945
    m = rec["metrics"]
    assert m["agreement"] == pytest.approx(86.87, abs=0.01) and m["agreement"] > m["longer_agreement"] + 1.0
    assert m["agreement_shorter_preferred"] == pytest.approx(54.68, abs=0.01)
    assert m["spearman"] == pytest.approx(0.926, abs=0.001) and m["kendall"] == pytest.approx(0.796, abs=0.001)
    assert m["spearman"] >= 0.90 and m["agreement_shorter_preferred"] > 50
    assert m["spearman_under70"] == pytest.approx(0.943, abs=0.001)
    assert fit["cpu_flags"]["avx512_bf16"] in (True, False) and fit["seconds"] > 0
    assert all(set(i) == {"id", "model", "index", "preference"} for i in rec["per_item"])
    if not REAL.is_file():
        pytest.skip(f"the GPT-4 annotations are not beside the repository ({REAL})")
    # every figure recomputes from the record's items joined with the annotation file: the agreement here
    assert file_hash(REAL) == rec["eval_set"]["hash"]
    gpt4 = {(a.model, a.index): a.preference for a in load_annotations(REAL)}
    prefs = [i["preference"] for i in rec["per_item"]]
    refs = [gpt4[(i["model"], i["index"])] for i in rec["per_item"]]
    # items keep 5 digits: a pair whose preference lies within 5e-6 of 1.5 reads back as a draw (half a pair)
    assert jc.percent(jc.agreement_scores(prefs, refs))[0] == pytest.approx(rec["metrics"]["agreement"],
                                                                             abs=100 / len(prefs))


@pytest.mark.skipif(not REAL.is_file(), reason=f"the GPT-4 annotations are not beside the repository ({REAL})")
def test_the_shipped_judge_answers_as_its_fit_did():
    """The judge's inference path (evals.learned_judge) and the fit's design matrix (evals.judge_fit) are two codes
    for one formula: on a sample of the file's pairs, the shipped judge gives exactly the preferences that
    `harness judge-check --judge learned` recorded for its weights."""
    from evals.learned_judge import LearnedJudge
    from harness.judge_check import load_annotated

    judge = LearnedJudge()
    store = ResultsStore(Path(__file__).resolve().parents[1] / "results")
    in_sample = next(r for r in store.records() if r["evaluator"] == "judge_check" and r["judge"]["version"]
                     == judge.version and not r["settings"].get("heldout"))
    rows, prompts = load_annotated(REAL, None)
    by_key = {(a.model, a.index): a for a in rows}
    items = random.Random(0).sample(in_sample["per_item"], 60)
    pairs = [Pair(prompts[i["index"]], "", by_key[(i["model"], i["index"])].reference,
                  by_key[(i["model"], i["index"])].output) for i in items]
    assert annotate(judge, pairs, order="fixed") == [i["preference"] for i in items]
