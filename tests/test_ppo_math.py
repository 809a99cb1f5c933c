"""PPO maths against hand-computed values."""

import math

import pytest
import torch

from trainers import ppo
from trainers.sampling import filter_logits, position_ids_from_mask


def test_gae_matches_hand_computation():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.6, 0.7]])
    gamma, lam = 0.9, 0.8
    # delta_2 = 1 - 0.7 = 0.3 (value after the last token is 0)
    # delta_1 = 0 + 0.9 * 0.7 - 0.6 = 0.03;  delta_0 = 0 + 0.9 * 0.6 - 0.5 = 0.04
    a2 = 0.3
    a1 = 0.03 + gamma * lam * a2
    a0 = 0.04 + gamma * lam * a1
    adv, ret = ppo.gae_advantages(rewards, values, gamma, lam)
    assert adv[0].tolist() == pytest.approx([a0, a1, a2], abs=1e-6)
    assert ret[0].tolist() == pytest.approx([a0 + 0.5, a1 + 0.6, a2 + 0.7], abs=1e-6)


def test_gae_with_gamma_lambda_one_is_reward_to_go_minus_value():
    rewards = torch.tensor([[0.1, -0.2, 0.3, 2.0]])
    values = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    adv, ret = ppo.gae_advantages(rewards, values, 1.0, 1.0)
    to_go = [2.2, 2.1, 2.3, 2.0]
    assert ret[0].tolist() == pytest.approx(to_go, abs=1e-6)
    assert adv[0].tolist() == pytest.approx([t - v for t, v in zip(to_go, values[0].tolist())], abs=1e-6)


def test_padding_after_the_response_does_not_leak_into_advantages():
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    rewards = torch.tensor([[0.0, 1.0, 5.0, 5.0]]) * mask
    values = torch.tensor([[0.2, 0.4, 9.0, 9.0]]) * mask
    adv, _ = ppo.gae_advantages(rewards, values, 1.0, 0.95)
    short, _ = ppo.gae_advantages(rewards[:, :2], values[:, :2], 1.0, 0.95)
    assert torch.allclose(adv[:, :2], short)
    assert adv[0, 2:].abs().sum() == 0


def test_shape_rewards_adds_score_at_last_real_token():
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    penalties = torch.tensor([[0.1, 0.2, 0.3], [0.5, 7.0, 7.0]])
    shaped, non_score = ppo.shape_rewards(torch.tensor([1.0, -2.0]), penalties, 0.1, mask)
    assert torch.allclose(shaped, torch.tensor([[-0.01, -0.02, 1.0 - 0.03], [-2.0 - 0.05, 0.0, 0.0]]), atol=1e-6)
    assert torch.allclose(non_score, torch.tensor([[-0.01, -0.02, -0.03], [-0.05, 0.0, 0.0]]), atol=1e-6)


def test_whiten_masked_entries():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    out = ppo.whiten(x, mask)
    # mean 2, unbiased var 1
    assert out[0].tolist() == pytest.approx([-1.0, 0.0, 1.0, 0.0], abs=1e-4)
    kept = ppo.whiten(x, mask, shift_mean=False)
    assert kept[0].tolist() == pytest.approx([1.0, 2.0, 3.0, 0.0], abs=1e-4)


def test_policy_loss_clips_like_the_formula():
    old = torch.zeros(1, 3)
    new = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))
    adv = torch.tensor([[1.0, 1.0, -1.0]])
    mask = torch.ones(1, 3)
    loss, stats = ppo.policy_loss(new, old, adv, mask, cliprange=0.2, denom=3.0)
    # token 0: max(-1.5, -1.2) = -1.2 (clipped); token 1: max(-0.5, -0.8) = -0.5; token 2: max(1.1, 1.1) = 1.1
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 1.1) / 3, abs=1e-6)
    assert stats["clipfrac"].item() == pytest.approx(1 / 3)
    approxkl = 0.5 * sum(math.log(r) ** 2 for r in (1.5, 0.5, 1.1)) / 3
    assert stats["approxkl"].item() == pytest.approx(approxkl, abs=1e-6)


def test_value_loss_takes_the_larger_of_clipped_and_unclipped():
    values = torch.tensor([[1.0, 0.0]])
    old = torch.tensor([[0.0, 0.0]])
    returns = torch.tensor([[2.0, 1.0]])
    loss, stats = ppo.value_loss(values, old, returns, torch.ones(1, 2), cliprange_value=0.2, denom=2.0)
    # token 0: unclipped (1-2)^2 = 1, clipped (0.2-2)^2 = 3.24 -> 3.24; token 1: both 1
    assert loss.item() == pytest.approx(0.5 * (3.24 + 1.0) / 2, abs=1e-6)
    assert stats["clipfrac"].item() == pytest.approx(0.5)


def test_micro_batch_losses_sum_to_the_minibatch_mean():
    gen = torch.Generator().manual_seed(0)
    lp, old, adv = (torch.randn(4, 5, generator=gen) for _ in range(3))
    mask = (torch.rand(4, 5, generator=gen) > 0.3).float()
    whole, _ = ppo.policy_loss(lp, old, adv, mask, 0.2, mask.sum().item())
    parts = sum(ppo.policy_loss(lp[i:i + 1], old[i:i + 1], adv[i:i + 1], mask[i:i + 1], 0.2, mask.sum().item())[0]
                for i in range(4))
    assert parts.item() == pytest.approx(whole.item(), abs=1e-6)


def test_sequence_logprobs_equals_log_softmax_gather():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 11, generator=gen)
    tokens = torch.randint(0, 11, (2, 3), generator=gen)
    expected = torch.log_softmax(logits / 0.7, -1).gather(-1, tokens[..., None]).squeeze(-1)
    assert torch.allclose(ppo.sequence_logprobs(logits, tokens, 0.7), expected, atol=1e-6)


def test_entropy_of_uniform_and_peaked_distributions():
    assert ppo.entropy_from_logits(torch.zeros(8)).item() == pytest.approx(math.log(8), abs=1e-6)
    assert ppo.entropy_from_logits(torch.tensor([100.0, 0.0, 0.0])).item() == pytest.approx(0.0, abs=1e-6)


def test_filter_logits_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.15, 0.1]]))
    assert torch.isinf(filter_logits(logits, 2, 1.0)[0, 2:]).all()
    assert torch.isfinite(filter_logits(logits, 2, 1.0)[0, :2]).all()
    kept = torch.isfinite(filter_logits(logits, 0, 0.7))[0].tolist()
    assert kept == [True, True, False, False]  # 0.5 < 0.7 so the second token is needed
    assert torch.isfinite(filter_logits(logits, 0, 0.01))[0].tolist() == [True, False, False, False]
    assert torch.equal(filter_logits(logits, 0, 1.0), logits)


def test_position_ids_skip_left_padding():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert position_ids_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]
