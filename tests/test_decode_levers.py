"""The decoding levers compute the same logits as the model's own forward; the floor benchmark counts the bytes a
decoding step reads and runs end to end on the tiny model."""

import json
import math

import pytest
import torch

from trainers.build import build_models
from trainers.decode_linear import few_row_products, packed_products
from trainers.decode_step import LeanDecoder
from trainers.rollout import left_pad
from trainers.sampling import prefill, sample

CPU = torch.device("cpu")
TEXTS = ["a", "a much longer prompt about rivers and bread", "mid-sized prompt", "xy"]
ONEDNN_BF16 = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def _policy(smoke, dtype: str = "float32"):
    """The smoke policy with random LoRA updates (so that the adapter branch changes the logits), in eval mode."""
    bundle = build_models(smoke(lora_dropout=0.0, frozen_dtype=dtype), CPU)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in bundle.policy.named_parameters():
            if "lora_B" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    bundle.policy.eval()
    return bundle


def _prompts(tok, texts=TEXTS):
    return left_pad([tok(t)["input_ids"] for t in texts], tok.pad_token_id, CPU)


def _sample(bundle, ids, mask, **levers):
    levers = {"lean_step": True, "packed_weights": True, **levers}
    return sample(bundle.policy, ids, mask, max_new_tokens=12, temperature=1.0, stop_ids=[],
                  pad_id=bundle.tokenizer.pad_token_id, generator=torch.Generator().manual_seed(3), **levers)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("fold", [False, True])
@pytest.mark.parametrize("texts", [TEXTS, ["same", "size"]], ids=["padded", "unpadded"])
def test_lean_step_gives_the_forwards_logits_bit_for_bit(smoke, dtype, fold, texts):
    bundle = _policy(smoke, dtype)
    ids, mask = _prompts(bundle.tokenizer, texts)
    with bundle.sampling_context(fold, True):
        plain = _sample(bundle, ids, mask, lean_step=False, packed_weights=False)
        lean = _sample(bundle, ids, mask, lean_step=True, packed_weights=False)
    assert lean.lean_step and not plain.lean_step  # each went the way it was asked to
    assert torch.equal(lean.tokens, plain.tokens)
    assert torch.equal(lean.logits, plain.logits)


def test_lean_step_decodes_through_its_own_path(smoke, monkeypatch):
    """With the lever on, decoding does not call the model's forward after the prefill."""
    bundle = _policy(smoke)
    ids, mask = _prompts(bundle.tokenizer)
    lm = bundle.policy.get_base_model()
    calls = []
    original = type(lm).forward
    monkeypatch.setattr(type(lm), "forward", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    _sample(bundle, ids, mask, lean_step=True, prefill_rows=0)
    assert len(calls) == 1  # the prefill
    calls.clear()
    _sample(bundle, ids, mask, lean_step=False, prefill_rows=0)
    assert len(calls) == 12  # the prefill and 11 decoding steps


def test_lean_step_declines_what_it_does_not_reproduce(smoke):
    from transformers import DynamicCache

    bundle = build_models(smoke(lora_dropout=0.1), CPU)
    ids, mask = _prompts(bundle.tokenizer)
    with torch.inference_mode():
        _, cache = prefill(bundle.policy, ids, mask, room=4)
        bundle.policy.train()  # live LoRA dropout: left to peft
        assert LeanDecoder.build(bundle.policy, cache, mask, 4) is None
        bundle.policy.eval()
        assert LeanDecoder.build(bundle.policy, cache, mask, 4) is not None
        assert LeanDecoder.build(bundle.policy, cache, mask, 5) is None  # no room for a fifth token
        plain = DynamicCache()
        bundle.policy(input_ids=ids, attention_mask=mask, cache=plain, use_cache=True)
        assert LeanDecoder.build(bundle.policy, plain, mask, 4) is None  # not a cache with room


@pytest.mark.skipif(not ONEDNN_BF16, reason="oneDNN bf16 products are not available on this CPU")
def test_packed_products_equal_linear_and_are_undone():
    gen = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.Linear(96, 32, bias=False)).to(torch.bfloat16)
    few, many = torch.randn(5, 1, 64, generator=gen).bfloat16(), torch.randn(200, 64, generator=gen).bfloat16()
    expected = model(few), model(many)
    with torch.no_grad(), packed_products(model, rows_hint=5) as n_packed:
        assert all("forward" in vars(m) for m in model)
        got = model(few), model(many)
    assert n_packed == 2
    for a, b in zip(got, expected):
        assert torch.equal(a, b)
    assert all("forward" not in vars(m) for m in model)


def test_few_row_products_leave_bf16_layers_to_packing():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 8).to(torch.bfloat16))
    with few_row_products(model) as n_patched:
        assert n_patched == 1 and "forward" not in vars(model[1])


def test_few_row_products_leave_lora_adapters_alone(smoke):
    policy = build_models(smoke(), CPU).policy
    q_proj = policy.get_base_model().model.layers[0].self_attn.q_proj
    with few_row_products(policy):
        assert "forward" in vars(q_proj.get_base_layer())
        assert not any("forward" in vars(m) for m in (*q_proj.lora_A.values(), *q_proj.lora_B.values()))


@pytest.mark.skipif(not ONEDNN_BF16, reason="oneDNN bf16 products are not available on this CPU")
@pytest.mark.parametrize("lean", [False, True])
def test_packed_weights_sample_the_same_tokens(smoke, lean):
    bundle = _policy(smoke, "bfloat16")
    ids, mask = _prompts(bundle.tokenizer)
    with bundle.sampling_context(True, True):
        plain = _sample(bundle, ids, mask, lean_step=lean, packed_weights=False)
        packed = _sample(bundle, ids, mask, lean_step=lean, packed_weights=True)
    assert torch.equal(packed.tokens, plain.tokens)
    assert torch.equal(packed.logits, plain.logits)
    assert not any("forward" in vars(m) for m in bundle.policy.modules())  # the packed copies are gone


@pytest.mark.skipif(not ONEDNN_BF16, reason="oneDNN bf16 products are not available on this CPU")
def test_lean_packed_step_of_a_plain_model(smoke):
    """Without LoRA, the stacked q/k/v and gate/up products are split into views: still the forward's bits."""
    from trainers import models

    model = models.load_causal_lm("tiny-random-llama", torch.bfloat16)
    tok = models.load_tokenizer("tiny-random-llama")
    ids, mask = _prompts(tok)
    runs = [sample(model, ids, mask, max_new_tokens=12, temperature=1.0, stop_ids=[], pad_id=tok.pad_token_id,
                   generator=torch.Generator().manual_seed(3), lean_step=lean, packed_weights=lean)
            for lean in (False, True)]
    assert torch.equal(runs[0].tokens, runs[1].tokens) and torch.equal(runs[0].logits, runs[1].logits)


def test_step_bytes_match_a_hand_count(smoke):
    """The tiny Llama: vocabulary 259, hidden 64, MLP 128, 2 layers, 4 heads of 16, 2 key/value heads, untied
    embedding; LoRA r on q/k/v/o; float32."""
    from benchmarks.decode_floor import step_bytes

    bundle = build_models(smoke(lora_dropout=0.0), CPU)
    r = smoke().lora_r
    batch, width, new = 3, 5, 4
    per_layer = 64 * 64 + 64 * 32 + 64 * 32 + 64 * 64 + 3 * 64 * 128 + 2 * 64  # q k v o, gate up down, 2 norms
    base = 2 * per_layer + 64 + 259 * 64 + batch * 64  # layers, final norm, LM head, the 3 embedding rows read
    lora = 2 * ((r * 64 + 64 * r) * 2 + (r * 64 + 32 * r) * 2)  # A and B of q, o (64 out) and k, v (32 out)
    kv = 2 * 2 * batch * 2 * 16 * 4 * (width + new / 2)  # keys and values, 2 layers, mean length w + n / 2
    counted = step_bytes(bundle.policy, batch, width, new)
    assert counted["weights"] == 4 * (base + lora)
    assert counted["kv_cache"] == kv
    with bundle.sampling_context(True, False):  # folded: the step reads W + dW, not A and B
        assert step_bytes(bundle.policy, batch, width, new)["weights"] == 4 * base


def test_floor_benchmark_dry_run(tmp_path):
    from benchmarks import decode_floor

    before = torch.get_num_threads()
    try:
        assert decode_floor.main(["--dry-run", "--out", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(before)
    result = json.loads((tmp_path / "decode_floor.json").read_text())
    rows = {row["lever"]: row for row in result["rows"]}
    assert {"defaults", "lean_decode_step off", "packed_decode_weights off", "every decoding lever off"} <= set(rows)
    for name in ("lean_decode_step off", "packed_decode_weights off"):
        assert rows[name]["same_tokens_as_defaults"] and rows[name]["max_abs_logit_difference"] == 0
    # a step's time is a difference of two timings, T(n) - T(1): on a busy machine a dry run's few tokens can give
    # any sign, so the test asks for a number; benchmarks/results/ holds the measured values
    assert all(row["floor_ms"] > 0 and math.isfinite(row["ms_per_step_best"]) for row in rows.values())
    assert result["bandwidth_bytes_per_s_best"] > 1e8 and result["machine"]
    assert "| defaults |" in (tmp_path / "decode_floor.md").read_text()
    parts = result["step_breakdown"]  # the lean step applies to the tiny Llama: its time, split by operator group
    assert math.isfinite(parts["ms_per_step"]) and math.isfinite(parts["ms_per_step_adapters_disabled"])
    # bf16 weights: the float32 products are the adapters' alone; float32 weights: every product is float32
    fp32 = "float32 products (LoRA A and B)" if result["default_dtype"] == "bfloat16" else "float32 products"
    names = {name for name, _ in decode_floor.STEP_PARTS if "float32" not in name}
    assert set(parts["profiled_ms_per_step"]) == names | {fp32, "other operators"}
    assert parts["profiled_ms_per_step"][fp32] > 0
    assert parts["operator_calls_per_step"] > 10 * 2  # two layers, dozens of operators each
    assert "| attention (SDPA) |" in (tmp_path / "decode_floor.md").read_text()
