"""Each regulariser against values computed by hand from p and q."""

import math

import pytest
import torch

from trainers import regularizers
from trainers.regularizers import penalty

P, Q = 0.5, 0.2  # policy and reference probability of the sampled token
LP, LQ = torch.tensor([math.log(P)]), torch.tensor([math.log(Q)])


@pytest.mark.parametrize(
    "name, expected",
    [
        ("kl", math.log(P / Q)),  # 0.9163
        ("clamped_kl", math.log(P / Q)),
        ("bregman", Q / P - 1 + math.log(P / Q)),  # 0.5163
        ("squared_error", 0.5 * math.log(P / Q) ** 2),  # 0.4198
        # m = 0.35: 0.5 * (max(0, log .5/.35) + max(0, log .2/.35)) = 0.5 * 0.35667
        ("jensen_shannon", 0.5 * math.log(P / 0.35)),
        ("negative_kl", -math.log(P / Q)),
        ("none", 0.0),
        ("dropout_only", 0.0),
    ],
)
def test_sampled_token_penalties_match_hand_values(name, expected):
    assert penalty(name, LP, LQ).item() == pytest.approx(expected, abs=1e-6)


def test_clamps_when_policy_is_below_reference():
    lp, lq = torch.tensor([math.log(0.1)]), torch.tensor([math.log(0.4)])
    assert penalty("clamped_kl", lp, lq).item() == 0.0
    assert penalty("kl", lp, lq).item() == pytest.approx(math.log(0.25))
    # JS: m = 0.25, only the reference term is positive: 0.5 * log(0.4 / 0.25)
    assert penalty("jensen_shannon", lp, lq).item() == pytest.approx(0.5 * math.log(0.4 / 0.25), abs=1e-6)
    # Bregman stays >= 0: 4 - 1 + log 0.25 = 1.6137
    assert penalty("bregman", lp, lq).item() == pytest.approx(3 + math.log(0.25), abs=1e-6)


def test_all_sampled_forms_vanish_when_policy_equals_reference():
    lp = torch.log(torch.tensor([0.1, 0.5, 0.9]))
    for name, spec in regularizers.REGULARIZERS.items():
        if not spec.needs_logits:
            assert torch.allclose(penalty(name, lp, lp), torch.zeros(3), atol=1e-7), name


def test_full_vocabulary_kl_and_js_match_hand_values():
    p = torch.tensor([0.5, 0.3, 0.2])
    q = torch.tensor([0.2, 0.5, 0.3])
    logits, ref_logits = p.log()[None], q.log()[None]
    kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p.tolist(), q.tolist()))
    m = [(a + b) / 2 for a, b in zip(p.tolist(), q.tolist())]
    js = 0.5 * sum(a * math.log(a / c) for a, c in zip(p.tolist(), m)) + 0.5 * sum(
        b * math.log(b / c) for b, c in zip(q.tolist(), m))
    dummy = torch.zeros(1)
    assert penalty("kl_full", dummy, dummy, logits=logits, ref_logits=ref_logits).item() == pytest.approx(kl, abs=1e-6)
    assert penalty("jensen_shannon_full", dummy, dummy, logits=logits, ref_logits=ref_logits).item() == pytest.approx(js, abs=1e-6)
    # logits are defined up to a constant: shifting one side changes nothing
    assert regularizers.kl_full(logits + 3.0, ref_logits - 1.0).item() == pytest.approx(kl, abs=1e-5)


def test_sampled_kl_is_an_unbiased_estimate_of_full_kl():
    gen = torch.Generator().manual_seed(0)
    logits, ref_logits = torch.randn(1, 6, generator=gen), torch.randn(1, 6, generator=gen)
    lp, lq = logits.log_softmax(-1)[0], ref_logits.log_softmax(-1)[0]
    draws = torch.multinomial(lp.exp(), 200_000, replacement=True, generator=gen)
    estimate = penalty("kl", lp[draws], lq[draws]).mean().item()
    k3 = penalty("bregman", lp[draws], lq[draws]).mean().item()
    exact = regularizers.kl_full(logits, ref_logits).item()
    assert estimate == pytest.approx(exact, rel=0.03)
    assert k3 == pytest.approx(exact, rel=0.03)


def test_full_forms_need_logits():
    with pytest.raises(ValueError, match="full-vocabulary"):
        penalty("kl_full", LP, LQ)


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as err:
        penalty("kl_divergence", LP, LQ)
    msg = str(err.value)
    assert "'kl_divergence'" in msg
    for name in regularizers.REGULARIZERS:
        assert name in msg


def test_none_forces_dropout_zero_and_dropout_only_keeps_it():
    assert regularizers.get("none").lora_dropout == 0.0
    assert regularizers.get("dropout_only").lora_dropout is None
