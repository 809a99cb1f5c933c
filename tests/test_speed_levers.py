"""The speed levers compute the same quantities: grouped prefill, folded adapters, length-grouped micro-batches."""

import pytest
import torch

from trainers import models
from trainers.build import build_models
from trainers.execution import ExecutionConfig
from trainers.lora_merge import folded_adapters
from trainers.rollout import left_pad, length_groups, trim_query
from trainers.sampling import prefill, sample

CPU = torch.device("cpu")
TEXTS = ["a", "a much longer prompt about rivers and bread", "mid-sized prompt", "xy", "another long prompt, with words"]


def _perturbed_policy(smoke):
    bundle = build_models(smoke(lora_dropout=0.0), CPU)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in bundle.policy.named_parameters():
            if "lora_B" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return bundle


def _prompts(tok):
    return left_pad([tok(t)["input_ids"] for t in TEXTS], tok.pad_token_id, CPU)


def test_grouped_prefill_equals_one_batched_read(smoke):
    bundle = _perturbed_policy(smoke)
    ids, mask = _prompts(bundle.tokenizer)
    with torch.inference_mode():
        whole, whole_cache = prefill(bundle.policy, ids, mask, 0)
        grouped, grouped_cache = prefill(bundle.policy, ids, mask, 2)
    torch.testing.assert_close(grouped, whole, rtol=1e-5, atol=1e-5)
    real = mask.bool()[:, None, :, None]  # padding slots are masked: only real positions must agree
    for a, b in zip(whole_cache.layers, grouped_cache.layers):
        assert a.keys.shape == b.keys.shape
        torch.testing.assert_close(b.keys * real, a.keys * real, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(b.values * real, a.values * real, rtol=1e-5, atol=1e-5)


def test_grouped_prefill_samples_the_same_tokens(smoke):
    bundle = _perturbed_policy(smoke)
    ids, mask = _prompts(bundle.tokenizer)
    runs = []
    for rows in (0, 2):
        runs.append(sample(bundle.policy, ids, mask, max_new_tokens=12, temperature=1.0, stop_ids=[],
                           pad_id=bundle.tokenizer.pad_token_id, generator=torch.Generator().manual_seed(3),
                           prefill_rows=rows, lean_step=True, packed_weights=True))
    assert torch.equal(runs[0].tokens, runs[1].tokens)
    torch.testing.assert_close(runs[1].logits, runs[0].logits, rtol=1e-4, atol=1e-4)


def test_folded_adapters_give_the_adapted_outputs_and_restore_the_weights_exactly(smoke):
    bundle = _perturbed_policy(smoke)
    policy = bundle.policy
    ids, mask = _prompts(bundle.tokenizer)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    with torch.inference_mode():
        adapted = policy(input_ids=ids, attention_mask=mask).logits
        with policy.disable_adapter():
            base = policy(input_ids=ids, attention_mask=mask).logits
        with folded_adapters(policy) as n_folded:
            folded = policy(input_ids=ids, attention_mask=mask).logits
    assert n_folded == 2 * 4  # 2 layers x q/k/v/o
    assert (adapted - base).abs().max() > 1e-2  # the adapters matter, so the comparison below means something
    torch.testing.assert_close(folded, adapted, rtol=1e-4, atol=1e-4)
    after = policy.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    with torch.inference_mode():  # and the adapter branch is live again
        torch.testing.assert_close(policy(input_ids=ids, attention_mask=mask).logits, adapted)


def test_folded_adapters_skip_bf16_weights(smoke):
    bundle = build_models(smoke(frozen_dtype="bfloat16"), CPU)
    with folded_adapters(bundle.policy) as n_folded:
        assert n_folded == 0


def test_folded_adapters_are_restored_after_an_error(smoke):
    bundle = _perturbed_policy(smoke)
    before = {k: v.clone() for k, v in bundle.policy.state_dict().items()}
    with pytest.raises(RuntimeError, match="boom"):
        with folded_adapters(bundle.policy):
            raise RuntimeError("boom")
    assert all(torch.equal(before[k], v) for k, v in bundle.policy.state_dict().items())
    assert not any(getattr(m, "merged_adapters", []) for m in bundle.policy.modules())


def test_length_groups_and_trimming():
    lengths = torch.tensor([3, 9, 5, 9, 1])
    groups = length_groups(lengths, 2)
    assert [g.tolist() for g in groups] == [[1, 3], [2, 0], [4]]
    assert [g.tolist() for g in length_groups(lengths, 2, enabled=False)] == [[0, 1], [2, 3], [4]]
    ids = torch.tensor([[0, 0, 5, 6], [0, 0, 0, 7]])
    q, m = trim_query(ids, (ids != 0).long())
    assert q.tolist() == [[5, 6], [0, 7]] and m.tolist() == [[1, 1], [0, 1]]


@pytest.mark.parametrize("overrides", [dict(), dict(regularizer="jensen_shannon_full"),
                                       dict(stop_at_eos=True, response_len=24)])
def test_a_ppo_step_is_the_same_with_and_without_the_levers(smoke, tmp_path, overrides):
    """One step (rollout, scoring, update) and the updated adapters agree. Later steps are not compared: a
    1e-6 change in a logit can flip one multinomial draw, after which two runs legitimately part."""
    from trainers.trainer import PPOTrainer

    records, params = {}, {}
    for on in (True, False):
        cfg = smoke(steps=1, lora_dropout=0.0, rollout_batch_size=8, step_batch_size=8, micro_batch_size=2,
                    rollout_micro_batch_size=8, **overrides)
        levers = ExecutionConfig(group_by_length=on, merge_adapters_for_rollout=on, lean_decode_step=on,
                                 packed_decode_weights=on)
        trainer = PPOTrainer(cfg, tmp_path / str(on), execution=levers, log=lambda _m: None)
        records[on] = trainer.train()[-1]
        params[on] = [p.detach().clone() for p in trainer.models.trainable_parameters()]
    for key in ("objective/scores", "objective/true_kl", "objective/kl_sampled", "objective/entropy",
                "objective/regularizer", "rollout/response_length", "ppo/loss/policy", "ppo/loss/value",
                "ppo/grad_norm", "ppo/val/mean"):
        assert records[True][key] == pytest.approx(records[False][key], rel=1e-4, abs=1e-6), key
    assert records[True]["ppo/grad_norm"] > 0
    for a, b in zip(params[True], params[False]):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)  # Adam divides by |g|: tiny g, loose digits


def test_the_trainer_decodes_as_its_decoding_levers_say(smoke, tmp_path, monkeypatch):
    from trainers import decode_step
    from trainers.trainer import PPOTrainer

    built = []
    original = decode_step.LeanDecoder.__init__
    monkeypatch.setattr(decode_step.LeanDecoder, "__init__",
                        lambda self, *a, **k: built.append(1) or original(self, *a, **k))
    for on in (False, True):
        built.clear()
        cfg = smoke(steps=1, rollout_batch_size=4, step_batch_size=4, micro_batch_size=2, rollout_micro_batch_size=4)
        PPOTrainer(cfg, tmp_path / str(on), execution=ExecutionConfig(lean_decode_step=on),
                   log=lambda _m: None).train()
        assert bool(built) == on


def test_pair_statistics_equal_the_separate_formulas():
    from trainers import ppo, regularizers

    gen = torch.Generator().manual_seed(0)
    logits, ref = torch.randn(3, 5, 40, generator=gen) * 3, torch.randn(3, 5, 40, generator=gen) * 3
    tokens = torch.randint(0, 40, (3, 5), generator=gen)
    picked, ref_picked, kl, entropy = ppo.pair_statistics(logits, ref, tokens)
    torch.testing.assert_close(picked, ppo.sequence_logprobs(logits, tokens, 1.0))
    torch.testing.assert_close(ref_picked, ppo.sequence_logprobs(ref, tokens, 1.0))
    torch.testing.assert_close(kl, regularizers.kl_full(logits, ref))
    torch.testing.assert_close(entropy, ppo.entropy_from_logits(logits))


def test_inverse_cdf_draws_follow_the_distribution():
    from trainers.sampling import draw

    probs = torch.tensor([[0.0, 0.5, 0.0, 0.3, 0.2]]).expand(20000, 5).contiguous()
    tokens = draw(probs, torch.Generator().manual_seed(0))
    freq = torch.bincount(tokens, minlength=5).float() / tokens.numel()
    assert freq[0] == 0 and freq[2] == 0  # tokens without mass are never drawn
    torch.testing.assert_close(freq, probs[0], atol=0.015, rtol=0)


def test_roomy_cache_equals_a_growing_cache(smoke):
    from transformers import DynamicCache

    from trainers.kv_cache import with_room

    bundle = _perturbed_policy(smoke)
    ids, mask = _prompts(bundle.tokenizer)
    step = torch.full((ids.size(0), 1), 7)
    outs = []
    with torch.inference_mode():
        for roomy in (False, True):
            cache = DynamicCache()
            bundle.policy(input_ids=ids, attention_mask=mask, cache=cache, use_cache=True)
            if roomy:
                cache = with_room(cache, 1)  # room for one: the second step must grow it
            m = mask
            for _ in range(3):
                m = torch.cat([m, torch.ones_like(step)], 1)
                out = bundle.policy(input_ids=step, attention_mask=m, cache=cache, use_cache=True).logits
            outs.append(out)
            assert cache.get_seq_length() == ids.size(1) + 3
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)


def test_few_row_products_equal_linear_and_are_undone():
    from trainers.decode_linear import MAX_ROWS, few_row_products

    gen = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Linear(5, 3, bias=False))
    small, large = torch.randn(2, 1, 6, generator=gen), torch.randn(MAX_ROWS + 1, 6, generator=gen)
    expected = model(small), model(large)
    with torch.no_grad(), few_row_products(model) as n_patched:
        got = model(small), model(large)
    assert n_patched == 2
    for a, b in zip(got, expected):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b)
    assert all("forward" not in vars(m) for m in model)


def test_process_settings_are_the_entry_points_not_the_trainers(smoke, tmp_path):
    """`harness train` sets torch's threads and glibc's allocator once; building a trainer leaves them alone."""
    import os

    from trainers import host_memory
    from trainers.process_settings import configure_training_process, torch_threads
    from trainers.trainer import PPOTrainer

    before = torch.get_num_threads()
    try:
        applied = configure_training_process(ExecutionConfig(threads=1, device="cpu"), environ={})
        assert applied.threads == 1 and torch.get_num_threads() == 1
        assert applied.keep_freed_memory == (host_memory._libc() is not None)
        untuned = ExecutionConfig(threads=1, device="cpu", tune_host_allocator=False)
        assert not configure_training_process(untuned, environ={}).keep_freed_memory
        PPOTrainer(smoke(), tmp_path / "run", execution=ExecutionConfig(threads=2), log=lambda _m: None)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    cores = os.cpu_count() or 1
    assert torch_threads(0, {}) == cores
    assert torch_threads(0, {"WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2"}) == max(1, cores // 2)
    assert torch_threads(0, {"WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "2"}) == cores
    assert torch_threads(3, {"WORLD_SIZE": "2"}) == 3
