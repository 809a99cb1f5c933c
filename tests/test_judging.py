"""The pairwise judge interface: order handling, caching, ties, agreement; the simulated rubric; eval sets."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from evals.evalsets import EvalSetError, load_eval_set
from evals.judging import AnnotationCache, Judge, JudgeError, Pair, annotate, order_agreement
from evals.simulated import SimulatedJudge, repetition, rubric_features, rubric_score, training_labels

SHARED_EVAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "alpaca_farm_evaluation.json"


class LengthJudge(Judge):
    """Prefers the longer output; with `bias`, also leans towards the first position."""

    name, model, version = "length", "len", "1"

    def __init__(self, bias: float = 0.0) -> None:
        self.calls, self.bias = 0, bias

    def _prefer(self, pairs):
        self.calls += len(pairs)
        out = []
        for p in pairs:
            d = len(p.output_2) - len(p.output_1) - self.bias
            out.append(2.0 if d > 0 else 1.0 if d < 0 else 1.5)
        return out


def pairs(n=4):
    return [Pair(f"q{i}", "", "short", "a much longer answer " * (i + 1), f"id{i}") for i in range(n)]


def test_identical_outputs_are_draws_without_asking():
    judge = LengthJudge()
    assert annotate(judge, [Pair("q", "", "same", " same ")], order="fixed") == [1.5]
    assert judge.calls == 0


def test_both_orders_average_and_cancel_a_position_bias():
    # the judge prefers output_1 unless output_2 is at least 10 characters longer
    judge = LengthJudge(bias=10)
    p = [Pair("q", "", "x" * 20, "x" * 25, "a")]
    assert annotate(judge, p, order="fixed") == [1.0]  # bias wins in one order
    assert annotate(judge, p, order="both") == [1.5]  # 1.0 forward, 3 - 1.0 = 2.0 backward
    assert order_agreement(judge, p)["agreement"] == 0.0
    assert order_agreement(LengthJudge(), pairs())["agreement"] == 100.0


def test_random_order_maps_answers_back():
    judge = LengthJudge()
    assert annotate(judge, pairs(8), order="random", seed=3) == [2.0] * 8


def test_cache_makes_reruns_free(tmp_path):
    cache = AnnotationCache(tmp_path / "a.sqlite")
    judge = LengthJudge()
    first = annotate(judge, pairs(), order="both", cache=cache)
    calls = judge.calls
    assert calls == 8
    again = annotate(judge, pairs(), order="both", cache=AnnotationCache(tmp_path / "a.sqlite"))
    assert again == first and judge.calls == calls


class FailingJudge(LengthJudge):
    def _prefer(self, pairs):
        raise JudgeError("server unreachable")


def test_a_failing_judge_caches_nothing(tmp_path):
    cache = AnnotationCache(tmp_path / "a.sqlite")
    with pytest.raises(JudgeError):
        annotate(FailingJudge(), pairs(), cache=cache)
    assert cache._db.execute("SELECT COUNT(*) FROM annotations").fetchone()[0] == 0


def test_out_of_range_preferences_are_rejected():
    class Bad(LengthJudge):
        def _prefer(self, pairs):
            return [3.0] * len(pairs)

    with pytest.raises(JudgeError, match="outside"):
        annotate(Bad(), pairs(1), order="fixed")
    with pytest.raises(ValueError, match="order='sideways'"):
        annotate(LengthJudge(), pairs(1), order="sideways")


# ---- simulated judge ----------------------------------------------------------------------------------------
class BagOfWords:
    """A deterministic stand-in embedder: normalised counts of hashed words (for fast rubric tests)."""

    version = "bow"

    def encode(self, texts):
        out = torch.zeros(len(texts), 64)
        for i, t in enumerate(texts):
            for w in t.lower().split():
                out[i, hash(w.strip(".,!?")) % 64] += 1
        return torch.nn.functional.normalize(out + 1e-6, dim=-1)


def test_rubric_terms_on_hand_examples():
    f = rubric_features("List three fruits.", "- apple\n- pear\n- plum.", relevance=0.5)
    assert f["structure"] == 1.0 and f["no_ending"] == 0.0 and f["refusal"] == 0.0
    assert f["adequacy"] == pytest.approx(math.log1p(3) / math.log1p(80))
    f2 = rubric_features("Is 7 prime? Answer with yes or no.", "I'm sorry, I cannot", relevance=0.1)
    assert f2["refusal"] == 1.0 and f2["no_ending"] == 1.0
    assert f2["adequacy"] == pytest.approx(math.log1p(5) / math.log1p(8))  # i, m, sorry, i, cannot
    assert repetition("a b c a b c a b c") == pytest.approx(1 - 3 / 7)
    assert rubric_score({"relevance": 0.5, "adequacy": 1, "structure": 1, "repetition": 0.5, "no_ending": 1,
                         "refusal": 0}) == pytest.approx(0.5 + 0.5 + 0.15 - 0.5 - 0.15)


def test_simulated_judge_is_symmetric_and_prefers_the_better_answer():
    judge = SimulatedJudge(embedder=BagOfWords())
    good = "The capital of France is Paris, a city on the Seine."
    bad = "the the the the the the the the"
    p = Pair("What is the capital of France?", "", bad, good, "x")
    forward = annotate(judge, [p], order="fixed")[0]
    backward = annotate(judge, [p.swapped()], order="fixed")[0]
    assert forward > 1.9 and forward + backward == pytest.approx(3.0)
    assert annotate(judge, [p], order="both")[0] == pytest.approx(forward)


def test_the_simulated_judges_identity_is_known_without_loading_it():
    from evals.judges import judge_identity, judge_options

    assert judge_identity("simulated") == SimulatedJudge().identity()
    assert judge_identity("simulated")["version"] != SimulatedJudge(embedder=BagOfWords()).identity()["version"]
    with pytest.raises(ValueError, match="--judge-timeout set for judge='simulated'; these options apply to "
                                         "--judge openai only"):
        judge_options("simulated", timeout=5.0)


def test_training_labels_flip_the_requested_share():
    prefs = [2.0] * 4000
    labels = training_labels(prefs, p_flip=0.25, seed=1)
    assert labels == training_labels(prefs, p_flip=0.25, seed=1)
    assert 0.23 < labels.count(1) / len(labels) < 0.27
    assert training_labels([1.2, 1.9], p_flip=0.0) == [1, 2]
    with pytest.raises(ValueError, match="p_flip"):
        training_labels(prefs, p_flip=0.7)


def test_minilm_embeddings_from_the_wheel():
    from evals.embeddings import shared_minilm

    m = shared_minilm()
    v = m.encode(["A cat sits on the mat.", "A kitten is sitting on a rug.", "Quarterly tax filing deadlines."])
    assert v.shape == (3, 384)
    assert torch.allclose(v.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert float(v[0] @ v[1]) > float(v[0] @ v[2]) + 0.2


# ---- eval sets ----------------------------------------------------------------------------------------------
def test_eval_set_validation_names_the_record_and_field(tmp_path):
    path = tmp_path / "set.json"
    path.write_text(json.dumps([{"instruction": "a", "output": "x"}, {"instruction": "b"}]))
    with pytest.raises(EvalSetError, match="1 of 2 records have an 'output'"):
        load_eval_set(str(path))
    path.write_text(json.dumps([{"instruction": "a"}, {"input": "no instruction"}]))
    with pytest.raises(EvalSetError, match="record 1 has no non-empty string field 'instruction'"):
        load_eval_set(str(path))
    with pytest.raises(EvalSetError, match="no such file"):
        load_eval_set(str(tmp_path / "missing.json"))
    path.write_text(json.dumps([{"instruction": "a", "input": "b"}, {"instruction": "c"}]))
    s = load_eval_set(str(path), limit=1)
    assert s.identity()["n"] == 1 and not s.has_references and s.records[0]["input"] == "b"


@pytest.mark.skipif(not SHARED_EVAL.is_file(), reason=f"the real AlpacaFarm eval set is not at {SHARED_EVAL}")
def test_the_real_alpaca_farm_eval_set_loads():
    s = load_eval_set(str(SHARED_EVAL))
    assert len(s.records) == 805 and s.has_references
    assert s.reference_generator == "text-davinci-003"
    assert sum(bool(r["input"]) for r in s.records) > 100


def test_empty_generations_error_only_when_nothing_was_generated():
    from evals.winrate import EmptyGenerationsError, check_generations

    assert check_generations(["", "an answer", "  "], "outputs") == 2  # a collapsed policy is judged as it is
    with pytest.raises(EmptyGenerationsError, match="all 2 generations are empty"):
        check_generations(["", " "], "outputs of X")


def test_win_rate_asks_each_order_once_and_reuses_the_answers_for_agreement():
    from evals.evalsets import EvalSet
    from evals.winrate import winrate_result

    records = tuple({"id": str(i), "instruction": f"q{i}", "input": "", "output": None, "generator": None}
                    for i in range(5))
    judge = LengthJudge()
    result = winrate_result(EvalSet("s", records), ["a longer answer"] * 5, ["short"] * 5, judge)
    assert judge.calls == 10  # 5 pairs x 2 orders, no cache
    assert result["metrics"]["win_rate"] == 100.0 and result["metrics"]["order_agreement"] == 100.0


def test_several_samples_per_instruction_average_into_one_item_per_instruction():
    from evals.evalsets import EvalSet
    from evals.winrate import winrate_result

    records = tuple({"id": str(i), "instruction": f"q{i}", "input": "", "output": None, "generator": None}
                    for i in range(3))
    # sample 0 of each instruction, then sample 1: instruction 0 wins once and loses once, 1 wins twice, 2 loses twice
    outputs = ["a longer answer", "a longer answer", "s", "s", "a longer answer", "s"]
    result = winrate_result(EvalSet("s", records), outputs, ["short"] * 3, LengthJudge(), samples=2)
    items = {i["id"]: i["preference"] for i in result["per_item"]}
    assert items == {"0": 1.5, "1": 2.0, "2": 1.0}
    m = result["metrics"]
    assert m["n"] == 3 and m["win_rate"] == 50.0  # instructions, not answers, are the unit
    assert m["strict_win_rate"] == 50.0 and m["mean_words_model"] == 2.0
    # the standard error counts 3 instruction means, not 6 answers
    assert m["standard_error"] == pytest.approx(100 * math.sqrt(((0.5 ** 2) * 2 / 2) / 3))
    with pytest.raises(ValueError, match="5 outputs \\(2 per instruction\\) and 3 references for 3 instructions"):
        winrate_result(EvalSet("s", records), outputs[:5], ["short"] * 3, LengthJudge(), samples=2)


def test_sampled_answers_are_seeded_apart_and_named_in_the_record_id_only_when_several():
    from evals.config import SAMPLE_SEED_STRIDE, EvalConfig
    from evals.generation_settings import GenerationSettings

    base = GenerationSettings(max_new_tokens=8, temperature=1.0, seed=5)
    three = EvalConfig(temperature=1.0, samples=3)
    assert [g.seed for g in three.sample_generations(base)] == [5, 5 + SAMPLE_SEED_STRIDE, 5 + 2 * SAMPLE_SEED_STRIDE]
    # the next evaluation seed's samples share none of these seeds
    next_seeds = {g.seed for g in three.sample_generations(GenerationSettings(temperature=1.0, seed=6))}
    assert not next_seeds & {g.seed for g in three.sample_generations(base)}
    assert three.winrate_settings(base)["samples"] == 3
    assert "samples" not in EvalConfig(temperature=1.0).winrate_settings(base)  # single-sample ids unchanged
    with pytest.raises(ValueError, match="samples=2 needs temperature > 0"):
        EvalConfig(samples=2)
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match=f"samples={bad!r} must be an integer >= 1"):
            EvalConfig(temperature=1.0, samples=bad)
