"""`harness eval` and `harness prepare` end to end on the tiny random model (offline judge, local data)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.cli import main
from harness.results import ResultsStore
from trainers.trainer import PPOTrainer


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, prompt_file):
    from harness import presets
    from trainers.config import TrainConfig

    values = presets.preset("smoke")
    values.update(prompts=prompt_file, prompt_split="", query_len=256, steps=2, checkpoint_every=2)
    out = tmp_path_factory.mktemp("run") / "smoke"
    PPOTrainer(TrainConfig(**values), out, log=lambda m: None).train()
    return out


@pytest.fixture
def eval_file(tmp_path):
    path = tmp_path / "evalset.json"
    rows = [{"instruction": f"Name a colour number {i}.", "input": "Answer briefly." if i % 3 == 0 else ""}
            for i in range(6)]
    path.write_text(json.dumps(rows))
    return str(path)


def _eval(target, results, eval_file, *extra):
    return main(["eval", str(target), "--results", str(results), "--eval-set", eval_file, "--max-new-tokens", "6",
                 "--preset", "smoke", *extra])


def test_eval_writes_one_complete_record_and_reuses_caches(smoke_run, tmp_path, cache, eval_file, capsys):
    results = tmp_path / "results"
    assert _eval(smoke_run, results, eval_file) == 0
    store = ResultsStore(results)
    (rec,) = list(store.records())
    assert rec["evaluator"] == "winrate" and rec["step"] == 2 and rec["preset"] == "smoke"
    assert rec["label"] == {"regularizer": "kl", "lora": True, "seed": 42, "baseline": None}
    assert rec["judge"]["name"] == "simulated" and "MiniLM" in rec["judge"]["model"]
    assert rec["eval_set"]["n"] == 6 and len(rec["per_item"]) == 6
    m = rec["metrics"]
    prefs = [p["preference"] for p in rec["per_item"]]
    assert m["win_rate"] == pytest.approx(100 * sum(p - 1 for p in prefs) / 6)
    assert m["order_agreement"] == 100.0 and m["n"] == 6 and m["true_kl"] > 0
    assert rec["details"]["generation"]["temperature"] == 0.0
    assert rec["details"]["references"]["source"] == "generated"
    # the proxy reward: the run's own reward model (its seeded head) on the same outputs
    from evals.reward_judge import RewardModelJudge
    from trainers.data import format_prompt

    (outputs_file,) = (cache / "outputs").glob("model-*.json")
    outputs = json.loads(outputs_file.read_text())["outputs"]
    rm = RewardModelJudge("head:tiny-random-llama", template="alpaca", seed=42)
    prompts = [format_prompt(r, "alpaca", rm.tokenizer) for r in json.loads(Path(eval_file).read_text())]
    assert m["proxy_reward"] == pytest.approx(float(rm.rewards(prompts, outputs).mean()), abs=1e-5)
    assert isinstance(m["proxy_reward"], float) and rec["details"]["proxy_reward_model"] == "head:tiny-random-llama"
    # the base policy (step 0) reuses the cached references; a rerun reuses outputs and annotations
    assert _eval(smoke_run, results, eval_file, "--step", "0") == 0
    assert _eval(smoke_run, results, eval_file, "--step", "0") == 0
    recs = {r["step"]: r for r in store.records()}
    assert set(recs) == {0, 2}
    assert recs[0]["details"]["references"]["source"] == "cache"
    assert recs[0]["details"]["annotation_cache"]["misses"] == 0 and recs[0]["metrics"]["true_kl"] == 0.0
    assert "reusing 6 cached generations" in capsys.readouterr().out


def test_eval_errors_are_clear_and_early(smoke_run, tmp_path, cache, eval_file, capsys):
    assert _eval(tmp_path / "no-such-run", tmp_path / "r", eval_file) == 2
    assert "neither a run folder" in capsys.readouterr().err
    assert _eval(smoke_run, tmp_path / "r", eval_file, "--step", "7") == 2
    err = capsys.readouterr().err
    assert "--step 7: run" in err and "it has steps [2]" in err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"prompt": "no instruction field"}]))
    assert _eval(smoke_run, tmp_path / "r", str(bad)) == 2
    assert "record 0 has no non-empty string field 'instruction'" in capsys.readouterr().err
    assert _eval(smoke_run, tmp_path / "r", eval_file, "--judge", "oracle") == 2
    assert ("judge='oracle' is not known; valid judges: learned, longer, model-wins, openai, reward-model, simulated"
            in capsys.readouterr().err)
    assert not (tmp_path / "r").exists()  # nothing written before the errors


@pytest.mark.parametrize("method,samples", [("head", 3), ("trl", 2)])
def test_prepare_fits_a_proxy_reward_model_records_its_agreement_and_is_idempotent(cache, prompt_file, capsys,
                                                                                  tmp_path, method, samples):
    from harness import presets
    from harness.prepare import prepare
    from trainers import heads
    from trainers.config import TrainConfig
    from trainers.run_config import RunConfig

    # the local prompt file has no 'preference' split: point prepare at the bundled one
    cfg = RunConfig(TrainConfig(**dict(presets.preset("smoke"), prompts=presets.INSTRUCTIONS, prompt_split="",
                                       response_len=8)))
    report = prepare("smoke-test", cfg, limit=24, samples=samples, method=method, batch_size=4,
                     results=tmp_path / "results", log=lambda m: None)
    # pairs among each instruction's responses; 4 of the 24 instructions held out, none of their pairs trained on
    assert report["samples_per_instruction"] == samples and report["heldout_instructions"] == 4
    assert report["train_pairs"] + report["heldout_pairs"] <= report["pairs"] <= 24 * samples * (samples - 1) // 2
    assert report["train_pairs"] > report["heldout_pairs"] > 0
    assert 0.0 <= report["heldout_accuracy_gold"] <= 100.0
    assert report["trained_by"].startswith("trl 1.12.0" if method == "trl" else "Bradley-Terry head")
    folder = heads.prepared_dir("smoke-test")
    rm = heads.load_reward_model("prepared:smoke-test", __import__("torch").float32, seed=0)
    assert rm.head.weight.abs().sum() > 0 and rm.score_token == ("response_mean" if method == "head" else "eos")
    (record,) = [r for r in ResultsStore(tmp_path / "results").records() if r["evaluator"] == "proxy_rm"]
    assert record["metrics"]["gold_agreement"] == report["heldout_accuracy_gold"]
    assert record["metrics"]["train_pairs"] == report["train_pairs"] and record["run_id"] == "prepared:smoke-test"
    assert len(report["cv_accuracy_gold"]) == (5 if method == "head" else 0)
    assert (record["metrics"]["gold_agreement_cv_mean"] is None) == (method == "trl")
    again = prepare("smoke-test", cfg, limit=24, samples=samples, method=method, log=print, results=None)
    assert again == report and "already at" in capsys.readouterr().out
    assert heads.is_reward_model_dir(folder)
    if method == "head":  # other settings: refitted, and said why
        other = prepare("smoke-test", cfg, limit=24, samples=samples, method=method, read="eos", log=print,
                        results=None)
        assert "prepared with read=response_mean; refitting with read=eos" in capsys.readouterr().out
        assert other["read"] == "eos" and heads.reward_score_token(folder) == "eos"


def test_training_with_an_unprepared_reward_model_says_what_to_run(cache, capsys):
    assert main(["train", "--preset", "tiny", "--out", str(cache / "x")]) == 2
    assert "run `harness prepare --preset tiny` first" in capsys.readouterr().err


def test_factuality_record_of_a_checkpoint(smoke_run, tmp_path, cache, eval_file):
    results = tmp_path / "results"
    assert _eval(smoke_run, results, eval_file, "--factuality-only", "--factuality-limit", "3") == 0
    (rec,) = list(ResultsStore(results).records())
    assert rec["evaluator"] == "factuality" and rec["eval_set"]["n"] == 3
    assert rec["judge"]["name"] == "minilm-consistency" and rec["settings"]["verifier"] == "consistency"
    assert rec["settings"]["knowledge"] == "bundled:" + rec["details"]["knowledge"]["sha256"]  # documents by content
    assert [p["id"] for p in rec["per_item"]] == ["Isaac Newton", "Charles Darwin", "Galileo Galilei"]
    m = rec["metrics"]
    assert set(m) >= {"factscore", "answered", "facts_per_answer", "n"} and m["n"] == 3
    # a random model's garbled bytes are not checkable facts: nothing it says is supported
    assert m["factscore"] in (None, 0.0)


def test_several_samples_per_instruction_reuse_the_single_sample_answers(smoke_run, tmp_path, cache, eval_file,
                                                                          capsys):
    results = tmp_path / "results"
    assert _eval(smoke_run, results, eval_file, "--temperature", "1") == 0
    assert _eval(smoke_run, results, eval_file, "--temperature", "1", "--samples", "2") == 0
    out = capsys.readouterr().out
    assert "reusing 6 cached generations" in out and "sample 2 of 2" in out  # only sample 2 is generated anew
    one, two = sorted(ResultsStore(results).records(), key=lambda r: r["details"]["samples_per_instruction"])
    assert one["record_id"] != two["record_id"] and two["settings"]["samples"] == 2 and "samples" not in one["settings"]
    assert len(two["per_item"]) == 6 and two["metrics"]["n"] == 6  # one item per instruction
    # the proxy reward covers both answers of every instruction, in the order they were generated
    from evals.config import SAMPLE_SEED_STRIDE
    from evals.reward_judge import RewardModelJudge
    from trainers.data import format_prompt

    by_seed = {}
    for path in (cache / "outputs").glob("model-*.json"):
        saved = json.loads(path.read_text())
        by_seed[saved["parts"][2]["seed"]] = saved["outputs"]
    assert sorted(by_seed) == [0, SAMPLE_SEED_STRIDE]
    answers = by_seed[0] + by_seed[SAMPLE_SEED_STRIDE]
    rm = RewardModelJudge("head:tiny-random-llama", template="alpaca", seed=42)
    prompts = [format_prompt(r, "alpaca", rm.tokenizer) for r in json.loads(Path(eval_file).read_text())] * 2
    assert two["metrics"]["proxy_reward"] == pytest.approx(float(rm.rewards(prompts, answers).mean()), abs=1e-5)
    assert two["metrics"]["empty_outputs"] == sum(not a.strip() for a in answers)
    assert _eval(smoke_run, results, eval_file, "--samples", "2") == 2  # greedy has one answer per instruction
    assert "samples=2 needs temperature > 0" in capsys.readouterr().err


def _with_logged_true_kl(run: Path, dest: Path, step: int, value: float) -> Path:
    """A copy of `run` whose metrics log holds `value` as the true KL at `step`."""
    import shutil

    shutil.copytree(run, dest)
    rows = [json.loads(line) for line in (dest / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        if row["step"] == step:
            row["objective/true_kl"] = value
    (dest / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return dest


def test_a_logged_kl_that_rounds_below_zero_is_stored_as_zero(smoke_run, tmp_path, cache, eval_file):
    """An exact KL of two matching distributions can sum to -1.6e-08 in float32: rounding, recorded as 0."""
    run = _with_logged_true_kl(smoke_run, tmp_path / "run", 2, -1.6332240448946322e-08)
    assert _eval(run, tmp_path / "results", eval_file) == 0
    (rec,) = ResultsStore(tmp_path / "results").records()
    assert rec["metrics"]["true_kl_train"] == 0.0 and rec["metrics"]["true_kl"] >= 0


def test_a_logged_kl_below_zero_beyond_rounding_is_refused_before_generating(smoke_run, tmp_path, cache,
                                                                              eval_file, capsys):
    run = _with_logged_true_kl(smoke_run, tmp_path / "run", 2, -0.25)
    assert _eval(run, tmp_path / "results", eval_file) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "metrics.jsonl: step 2: objective/true_kl=-0.25 is a KL below zero" in err[0]
    assert not (tmp_path / "results").exists() or not list(ResultsStore(tmp_path / "results").records())
    assert not (cache / "outputs").exists()  # nothing was generated

