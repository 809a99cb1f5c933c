"""The GPU check's dry run on the CPU, and the `random-llama:` specs it builds its models from."""

import json
import math
import re
import subprocess
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig

from benchmarks import gpu_check
from trainers import heads, memory_plan, models

ROOT = Path(__file__).resolve().parents[1]


def test_the_dry_run_prints_every_stage_and_exits_0(tmp_path):
    out = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--dry-run", "--out", str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-4000:]
    assert "[env] cpu: " in text and "[env] versions: " in text
    n = r"[0-9.]+"
    for stage in ("side_by_side", "llama7b"):
        assert re.search(rf"\[{stage}\] s/step {n} \| generation {n} \| frozen forwards {n} \| training {n} ", text)
        assert re.search(rf"\[{stage}\] peak memory: {n} GiB", text)
        assert re.search(rf"\[{stage}\] training MFU: {n} GFLOP .* peak used: {n} [GT]FLOP/s", text)
        assert f"[{stage}] status: ok" in text
        for variant in gpu_check.DECODE_VARIANTS:
            # a step's time is T(n) - T(1) over 8 tokens: on a busy machine it can take either sign (the format is
            # what is checked here; measured values live in benchmarks/results/)
            assert re.search(rf"\[{stage}\] decode \({variant}; lean step (ran|not used)\): -?{n} ms/step for [0-9]+ rows x 8 "
                             rf"tokens; a step reads {n} MB .* -> floor {n} ms; -?{n}x the floor", text)
    assert "[side_by_side] prompts: " in text
    assert re.search(rf"\[llama7b\] planner prediction \(trainers.memory_plan.plan.*\): {n} GiB; measured {n} GiB", text)
    one_base = json.loads((tmp_path / "llama7b_one_base.json").read_text())
    if one_base["status"] == "unavailable":
        assert "one_base: not available in this version" in text
    else:
        assert one_base["status"] == "ok" and "[llama7b_one_base] planner prediction" in text
    assert "Total wall time: " in text
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [s["stage"] for s in summary["stages"]] == list(gpu_check.DEFAULT_STAGES)
    for s in summary["stages"]:
        if s["stage"] in ("side_by_side", "llama7b"):
            assert set(s["median"]) == {"step", "generation", "frozen_forwards", "training", "other"}
            assert s["peak"]["rss_bytes"] > 0 and s["mfu"]["training_flop"] > 0
            decode = s["decode"]
            assert decode["new_tokens"] == 8 and decode["bandwidth_bytes_per_s"] > 0
            for variant in gpu_check.DECODE_VARIANTS:
                row = decode[variant]
                # a difference of two timings: either sign on a loaded machine (measured values: benchmarks/results/)
                assert math.isfinite(row["ms_per_step"]) and row["bytes_per_step"]["weights"] > 0
                assert row["x_floor"] == pytest.approx(row["ms_per_step"] / row["floor_ms"])
            # the run's settings decode through the lean step (the policy in eval mode, as in a rollout)
            assert decode["settings"]["lean_step"] and not decode["lean_decode_step off"]["lean_step"]
    assert summary["stages"][2]["plan"]["total_gib"] > 0
    assert (tmp_path / "summary.md").read_text().startswith("| stage | status |")


def test_llama_7b_has_its_shape_and_the_planner_counts_its_parameters():
    model = models.random_llama("random-llama:7b", torch.bfloat16, device="meta")
    n = sum(p.numel() for p in model.parameters())
    assert n == 6_738_415_616  # LLaMA-7B with a 32,000-token vocabulary
    assert memory_plan.Dims.from_config(model.config.to_dict()).params == n
    tok = models.load_tokenizer("random-llama:7b")
    assert len(tok) <= model.config.vocab_size  # every id the tokenizer gives has an embedding row
    assert models.context_length("random-llama:7b") == 2048
    assert models.describe_spec_error("policy", "random-llama:7b") is None


@pytest.mark.parametrize("shape, params", [("13b", 13_015_864_320), ("33b", 32_528_943_616),
                                           ("65b", 65_285_660_672)])
def test_the_larger_llama_shapes_have_llamas_parameter_counts(shape, params):
    model = models.random_llama(f"random-llama:{shape}", torch.bfloat16, device="meta")
    assert sum(p.numel() for p in model.parameters()) == params
    assert memory_plan.Dims.from_config(model.config.to_dict()).params == params


def test_the_largest_stage_runs_the_largest_shape_the_planner_fits(tmp_path):
    out = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--dry-run", "--stages", "env,largest", "--out",
                          str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-4000:]
    n = r"[0-9.]+"
    assert re.search(rf"\[largest\] random-llama:mini: planned {n} GiB, {n} with the 15% margin, of {n} GiB "
                     r"\(this host's memory \(dry run\)\): fits", text)
    assert "[largest] largest predicted to fit: random-llama:mini; running it" in text
    assert re.search(rf"\[largest\] planner prediction .*: {n} GiB; measured {n} GiB", text)
    result = json.loads((tmp_path / "largest.json").read_text())
    assert result["status"] == "ok" and result["largest"] == "random-llama:mini" and result["layout"] == "one_base"
    (candidate,) = result["candidates"]
    assert candidate["policy"] == "random-llama:mini" and candidate["fits"] and candidate["planned_gib"] > 0
    assert result["plan"]["total_gib"] > 0 and result["peak"]["rss_bytes"] > 0


def test_on_one_h200_the_planner_fits_llama_33b_in_one_base_mode_and_not_65b():
    """What the largest stage would choose on the GPU this project is lent (139 GiB), prompts at 256 tokens."""
    planned = {f"random-llama:{shape}": gpu_check.llama_plan(gpu_check.llama_values(f"random-llama:{shape}", False,
                                                                                      "one_base"), False, 139 * 2**30,
                                                             256).total
               for shape in gpu_check.LARGEST_CANDIDATES}
    rows, chosen = gpu_check.largest_fitting(planned, 139 * 2**30)
    assert {row["policy"]: row["fits"] for row in rows} == {"random-llama:7b": True, "random-llama:13b": True,
                                                            "random-llama:33b": True, "random-llama:65b": False}
    assert chosen == "random-llama:33b"


def test_the_largest_fitting_plan_is_chosen_whatever_the_order_and_none_when_nothing_fits():
    gib = 2**30
    planned = {"b": 30 * gib, "a": 10 * gib, "c": 90 * gib}
    rows, chosen = gpu_check.largest_fitting(planned, 40 * gib)  # 30 GiB + 15% fits 40, 90 does not
    assert chosen == "b" and [row["fits"] for row in rows] == [True, True, False]
    assert rows[0] == {"policy": "b", "planned_gib": 30.0, "fits": True}
    assert gpu_check.largest_fitting(planned, 34 * gib)[1] == "a"  # 30 GiB + 15% = 34.5 GiB: no longer fits
    assert gpu_check.largest_fitting(planned, 5 * gib)[1] is None


def test_random_llama_is_seeded_and_leaves_the_global_rng_alone():
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    a = models.load_causal_lm("random-llama:mini", torch.float32)
    after = torch.rand(1)
    b = models.load_causal_lm("random-llama:mini", torch.float32)
    assert torch.equal(before, after)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert a.config.num_hidden_layers == 2 and a.config.vocab_size == 32000


def test_random_llama_from_a_directory_takes_its_architecture_and_tokenizer(tmp_path):
    LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=300,
                max_position_embeddings=64).save_pretrained(tmp_path)
    models.tiny_tokenizer().save_pretrained(tmp_path)
    spec = f"random-llama:{tmp_path}"
    assert models.describe_spec_error("policy", spec) is None
    model = models.load_causal_lm(spec, torch.float32)
    assert model.config.hidden_size == 32 and models.context_length(spec) == 64
    assert models.load_tokenizer(spec).decode(models.load_tokenizer(spec)("hi")["input_ids"]) == "hi"


@pytest.mark.parametrize("spec", ["random-llama:9b", "random-llama:/no/such/dir"])
def test_unknown_random_llama_specs_are_named_with_the_valid_shapes(spec):
    message = models.describe_spec_error("policy", spec)
    assert message.startswith(f"policy={spec!r}") and "7b, 13b, 33b, 65b, mini" in message


def test_reward_and_value_backbones_of_a_random_llama_are_the_policys():
    backbone = heads.load_backbone("random-llama:mini", torch.float32)
    policy = models.load_causal_lm("random-llama:mini", torch.float32)
    assert all(torch.equal(x, y) for x, y in zip(backbone.state_dict().values(), policy.model.state_dict().values()))
    assert heads.load_backbone(models.TINY, torch.float32).config.hidden_size == 64  # other specs as before


def test_the_summary_has_one_row_per_stage_and_the_total():
    rows = [{"stage": "env", "status": "ok"},
            {"stage": "llama7b", "status": "ok", "median": {"step": 2.0, "generation": 1.0, "frozen_forwards": 0.5,
                                                             "training": 0.4, "other": 0.1},
             "peak": {"allocated_bytes": 30 * 2**30, "reserved_bytes": 32 * 2**30}, "plan": {"total_gib": 29.5},
             "mfu": {"mfu": 0.123}, "decode": {"settings": {"ms_per_step": 12.5, "x_floor": 3.21}}},
            {"stage": "llama7b_one_base", "status": "unavailable"}]
    text = gpu_check.summary(rows, 123.4, dry=False)
    assert ("| llama7b | ok | 2.00 | 1.00 | 0.50 | 0.40 | 0.10 | 30.00 GiB | 32.00 GiB | 29.50 GiB | 12.3% | 12.50 | "
            "3.21x |") in text
    assert "| llama7b_one_base | unavailable |" in text and text.endswith("Total wall time: 123.4 s\n")


def test_the_h200_peak_is_the_dense_bf16_figure(monkeypatch):
    monkeypatch.delenv("GPU_PEAK_TFLOPS", raising=False)
    assert gpu_check.gpu_peak_flops("NVIDIA H200")[0] == 989e12
    assert gpu_check.gpu_peak_flops("Some GPU")[0] is None
    monkeypatch.setenv("GPU_PEAK_TFLOPS", "100")
    assert gpu_check.gpu_peak_flops("Some GPU") == (100e12, "GPU_PEAK_TFLOPS")


def test_an_unknown_stage_is_refused_before_any_stage_runs(tmp_path):
    out = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--dry-run", "--stages", "env,largst", "--out",
                          str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "--stages env,largst: no stage 'largst'; valid: env, side_by_side" in out.stderr
    assert "[env]" not in out.stdout and not (tmp_path / "env.json").exists()
