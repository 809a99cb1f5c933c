"""The `paper` preset against the authors' code (SimengSun/alpaca_farm_lora): optimiser steps per PPO step, the
linear learning-rate schedule stepped per PPO step, AdamW eps, no penalty for unfinished responses, and where a
reward model reads its score. Expected values are computed by hand from their code's definitions."""

import json

import pytest
import torch

from harness import grid, presets
from trainers.reward_trl import trl_score_token
from trainers import models, schedule
from trainers.heads import ScalarHeadModel, load_reward_model, new_head, save_reward_model
from trainers.rollout import _score
from trainers.trainer import PPOTrainer


def test_paper_preset_shows_the_seed_codes_values():
    cfg = presets.resolve("paper").train
    # rl_trainer.step_with_rollouts: one AdamW step per step_per_device_batch_size=16 rollouts, 2 epochs of 256
    assert cfg.optimizer_steps_per_ppo_step == 256 // 16 * 2 == 32
    assert cfg.derived()["optimizer_steps_per_ppo_step"] == 32
    assert (cfg.lr_schedule, cfg.lr_schedule_unit, cfg.warmup_steps, cfg.lr_decay_epochs) == ("linear", "ppo_step", 5, 10.0)
    assert cfg.adam_eps == 1e-5  # ppo_utils.TrainingArguments.adam_epsilon
    assert cfg.penalty_reward is None  # post_reward changes nothing with truncate_tokens=None


def test_linear_schedule_at_ppo_steps_1_5_6_and_the_last():
    # HF get_linear_schedule_with_warmup, stepped after each PPO step: PPO step s runs at count s - 1.
    T, w = 200, 5
    at = lambda s: schedule.lr_factor("linear", s - 1, w, T)  # noqa: E731
    assert at(1) == 0.0  # the first PPO step at lr 0
    assert at(5) == pytest.approx(4 / 5)
    assert at(6) == 1.0
    assert at(T) == pytest.approx(1 / 195)  # (T - (T - 1)) / (T - w)
    assert schedule.lr_factor("constant", 0, w, T) == pytest.approx(1 / 5)  # ours: the first step at lr / w
    assert schedule.lr_factor("constant", 10_000, w, T) == 1.0


def test_decay_horizon_is_alpacafarms_total_steps():
    # total_steps = len(train_dataset) * total_epochs // rollout_batch_size
    assert schedule.decay_horizon(200, 10.0, 20_000, 256) == 781
    assert schedule.decay_horizon(200, 0.0, 20_000, 256) == 200


def test_paper_full_fine_tune_baseline_is_alpacafarms_ppo_setting():
    g = grid.build_grid(("table2",), "paper")
    full = [r for r in g.runs if not r.config.lora]
    assert len(full) == 1
    cfg = full[0].config
    assert (cfg.regularizer, cfg.kl_coef, cfg.rollout_batch_size, cfg.step_batch_size) == ("clamped_kl", 0.0067, 512, 256)
    assert cfg.optimizer_steps_per_ppo_step == 4  # accelerate accumulates to one step per 256 in AlpacaFarm
    assert g.spec.eval_max_new_tokens == 512  # run_inference.py: greedy, max_new_tokens = model_max_length 512


def _counting_optimizer(trainer):
    """The learning rate of every optimiser step the trainer takes."""
    calls = []
    trainer.optimizer.register_step_pre_hook(lambda opt, args, kwargs: calls.append(opt.param_groups[0]["lr"]))
    return calls


def test_trainer_takes_the_configured_optimiser_steps_and_follows_the_ppo_step_schedule(smoke, tmp_path):
    cfg = smoke(steps=4, rollout_batch_size=8, step_batch_size=2, micro_batch_size=2, rollout_micro_batch_size=8,
                lr=1e-3, lr_schedule="linear", lr_schedule_unit="ppo_step", warmup_steps=2, checkpoint_every=4)
    assert cfg.optimizer_steps_per_ppo_step == 8
    trainer = PPOTrainer(cfg, tmp_path / "run", log=lambda m: None)
    rates = _counting_optimizer(trainer)
    records = trainer.train()
    assert len(rates) == 4 * 8
    # the horizon is the run's 4 steps: factors 0, 1/2, 1, (4 - 3) / (4 - 2)
    expected = [0.0, 0.5e-3, 1e-3, 0.5e-3]
    assert [r["ppo/learning_rate"] for r in records] == pytest.approx(expected)
    assert rates == pytest.approx([x for x in expected for _ in range(8)])  # one rate for all of a PPO step


def test_optimizer_step_schedule_counts_optimiser_steps(smoke, tmp_path):
    cfg = smoke(steps=2, rollout_batch_size=8, step_batch_size=4, micro_batch_size=2, rollout_micro_batch_size=8,
                lr=1e-3, warmup_steps=3, checkpoint_every=2)
    trainer = PPOTrainer(cfg, tmp_path / "run", log=lambda m: None)
    rates = _counting_optimizer(trainer)
    trainer.train()
    assert rates == pytest.approx([1e-3 / 3, 2e-3 / 3, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3])


# ---- where the reward model reads ------------------------------------------------------------------------
def _reward(score_token):
    backbone = models.tiny_random_llama().model.float().eval()
    return ScalarHeadModel(backbone, new_head(backbone.config.hidden_size, zero=False, seed=3),
                           score_token=score_token).eval()


class _Models:
    def __init__(self, reward, eos):
        self.reward, self.reward_tokenizer = reward, None
        self.tokenizer = type("Tok", (), {"eos_token_id": eos})()


@pytest.mark.parametrize("score_token,offset", [("eos", 0), ("last_token", 1)])
def test_score_position_for_a_reward_model_trained_with_and_without_eos(score_token, offset):
    torch.manual_seed(0)
    reward = _reward(score_token)
    eos = 2
    query = torch.tensor([[0, 0, 5, 6, 7], [0, 8, 9, 10, 11]])  # left-padded
    qmask = (query != 0).long()
    tokens = torch.tensor([[12, 13, eos, 0], [14, 15, 16, 17]])  # row 0 ended with EOS, row 1 was cut off
    tmask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    ended = torch.tensor([True, False])
    with torch.no_grad():
        got = _score(_Models(reward, eos), query, qmask, tokens, tmask, ended)
        # row 1 as a model reading at EOS was trained to see a cut-off response: followed by EOS
        ids = torch.cat([query, tokens, torch.tensor([[0], [eos]])], 1)
        amask = torch.cat([qmask, torch.ones(2, tokens.size(1) + 1, dtype=torch.long)], 1)
        pos = (amask.cumsum(1) - 1).clamp(min=0)
        every = reward.values(ids, amask, pos, start=0, length=ids.size(1))
    # row 0: the EOS sits at column 5 + 2; a model trained without EOS reads the token before it
    assert got[0] == pytest.approx(every[0, 7 - offset].item(), abs=1e-5)
    # row 1 was cut off: an EOS reader reads the appended EOS (column 9), the other the last token (column 8)
    assert got[1] == pytest.approx(every[1, 9 - offset].item(), abs=1e-5)


def test_a_reward_model_reading_the_response_mean_averages_the_response_and_its_eos():
    torch.manual_seed(0)
    reward = _reward("response_mean")
    eos = 2
    query = torch.tensor([[0, 0, 5, 6, 7], [0, 8, 9, 10, 11]])
    qmask = (query != 0).long()
    tokens = torch.tensor([[12, 13, eos, 0], [14, 15, 16, 17]])  # row 0 ended with EOS, row 1 was cut off
    tmask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    with torch.no_grad():
        got = _score(_Models(reward, eos), query, qmask, tokens, tmask, torch.tensor([True, False]))
        ids = torch.cat([query, tokens, torch.tensor([[0], [eos]])], 1)
        amask = torch.cat([qmask, torch.ones(2, tokens.size(1) + 1, dtype=torch.long)], 1)
        pos = (amask.cumsum(1) - 1).clamp(min=0)
        every = reward.values(ids, amask, pos, start=0, length=ids.size(1))
    # the head is linear: reading the mean state is the mean of the head over columns 5..7 (row 0), 5..9 (row 1)
    assert got[0] == pytest.approx(every[0, 5:8].mean().item(), abs=1e-5)
    assert got[1] == pytest.approx(every[1, 5:10].mean().item(), abs=1e-5)
    with pytest.raises(ValueError, match="needs where each response starts"):
        reward.score_at(ids, amask, pos, torch.tensor([7, 9]))


def test_trl_trained_classifier_reads_before_eos_when_pad_is_eos():
    """What TRL's RewardTrainer trains: a sequence classifier reading the last non-pad token of prompt + response
    + EOS. With pad == EOS that is the token before EOS, so the prepared reward model must read there."""
    from transformers import AutoModelForSequenceClassification

    lm = models.tiny_random_llama()
    config = lm.config
    config.num_labels = 1
    clf = AutoModelForSequenceClassification.from_config(config).float().eval()
    clf.model.load_state_dict(lm.model.state_dict())
    eos = 2
    ids = torch.tensor([[5, 6, 7, 12, 13, eos]])

    class Tok:
        eos_token_id = eos
        pad_token_id = eos

    for pad, expected in ((eos, "last_token"), (0, "eos")):
        Tok.pad_token_id = pad
        clf.config.pad_token_id = pad
        assert trl_score_token(Tok) == expected
        with torch.no_grad():
            logit = clf(input_ids=ids).logits[0, 0]
            hidden = clf.model(input_ids=ids).last_hidden_state[0]
        read = 4 if expected == "last_token" else 5
        assert logit.item() == pytest.approx(clf.score(hidden[read]).item(), abs=1e-5)


def test_reward_model_directory_keeps_its_score_token(tmp_path):
    reward = _reward("last_token")
    tok = models.load_tokenizer("tiny-random-llama")
    out = save_reward_model(reward, tok, tmp_path / "rm")
    assert json.loads((out / "scalar_head.json").read_text())["score_token"] == "last_token"
    assert load_reward_model(str(out), torch.float32, seed=0).score_token == "last_token"
    with pytest.raises(ValueError, match="score_token"):
        ScalarHeadModel(reward.backbone, reward.head, score_token="bos")



def test_a_run_whose_schedule_decays_over_its_steps_cannot_be_extended(smoke, tmp_path):
    from trainers.errors import UserError

    linear = dict(lr_schedule="linear", lr_schedule_unit="ppo_step", warmup_steps=0, checkpoint_every=1)
    PPOTrainer(smoke(steps=1, **linear), tmp_path / "run", log=lambda m: None).train()
    with pytest.raises(UserError, match="steps: 1 -> 2"):
        PPOTrainer(smoke(steps=2, **linear), tmp_path / "run", log=lambda m: None).train(resume=True)
    # a horizon in prompt epochs does not move with `steps`: that run may go on
    fixed = dict(linear, lr_decay_epochs=3.0)
    PPOTrainer(smoke(steps=1, **fixed), tmp_path / "run2", log=lambda m: None).train()
    records = PPOTrainer(smoke(steps=2, **fixed), tmp_path / "run2", log=lambda m: None).train(resume=True)
    assert [r["step"] for r in records] == [1, 2]
