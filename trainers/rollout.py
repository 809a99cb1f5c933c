"""Phases 1-3 of a PPO step: sample responses, score them, and take the frozen quantities PPO needs.

Per rollout micro-batch:
1. sample with the policy (eval mode, KV cache), keeping its temperature-scaled logits;
2. one reference forward over query + response -> reference logits at the response positions; from the
   two distributions: sampled-token log-probs, entropy, exact KL(pi || pi_ref) and the regulariser k_t;
   (reference='one_base' with a reward model that is a head on the frozen base: that same forward also gives the
   hidden states the reward reads, over the reward's ids, so step 3's reward costs no forward of its own)
3. the value model's old values and the reward (a reward model's score where it was trained to read it, at the
   EOS or at the last token before it, or a rule), replaced by `penalty_reward` when the response did not end
   with a stop token (when that setting is on).
The policy's log-probs come from the sampling logits: no second policy forward. Steps 2-3 run on groups of
`micro_batch_size` rows of similar length, each trimmed of its padding (`group_by_length`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from trainers import ppo, regularizers
from trainers.build import PPOModels
from trainers.config import TrainConfig
from trainers.execution import ExecutionConfig
from trainers.heads import ScalarHeadModel, response_start
from trainers.sampling import length_groups, position_ids_from_mask, sample, trim_query


@dataclass(slots=True)
class Rollout:
    query_ids: Tensor  # [B, Q] left-padded
    query_mask: Tensor  # [B, Q]
    tokens: Tensor  # [B, R] right-padded
    mask: Tensor  # [B, R]
    logprobs: Tensor  # [B, R] policy, at the sampling temperature
    ref_logprobs: Tensor  # [B, R]
    penalties: Tensor  # [B, R] k_t of the configured regulariser
    true_kl: Tensor  # [B, R] exact KL(pi || pi_ref) per position
    entropy: Tensor  # [B, R]
    values: Tensor  # [B, R] old values
    scores: Tensor  # [B] after the no-EOS penalty
    raw_scores: Tensor  # [B] before it
    ended: Tensor  # [B] bool


def left_pad(seqs: list[list[int]], pad_id: int, device: torch.device) -> tuple[Tensor, Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s):] = 1
    return ids.to(device), mask.to(device)


def sequences(query_ids: Tensor, query_mask: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(ids, attention mask, position ids) of query + response; response padding stays attended, it is
    after every real token and so never seen by one."""
    ids = torch.cat([query_ids, tokens], dim=1)
    mask = torch.cat([query_mask, torch.ones_like(tokens)], dim=1)
    return ids, mask, position_ids_from_mask(mask)


def response_logits(model, ids: Tensor, mask: Tensor, pos: Tensor, n_response: int) -> Tensor:
    """Logits at the positions that predict the last `n_response` tokens of `ids` ([B, n_response, V])."""
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False, logits_to_keep=n_response + 1)
    return out.logits[:, :-1]


def distribution_stats(logits: Tensor, ref_logits: Tensor, tokens: Tensor, spec, rows: int = 4):
    """Per-token statistics of the two [B, R, V] distributions, `rows` sequences at a time so that the
    vocabulary-sized temporaries stay small: sampled log-probs (policy, reference), exact KL, entropy,
    and the full-vocabulary penalty when the regulariser needs one (else None)."""
    parts = []
    for i in range(0, tokens.size(0), rows):
        lg, ref, tok = logits[i:i + rows], ref_logits[i:i + rows], tokens[i:i + rows]
        parts.append((*ppo.pair_statistics(lg, ref, tok), spec.full(lg, ref) if spec.needs_logits else None))
    stacked = [torch.cat(col) if col[0] is not None else None for col in zip(*parts)]
    return tuple(stacked)


def _reward_inputs(reward: ScalarHeadModel, query_ids, query_mask, tokens, mask, ended, eos_id: int):
    """(ids, attention mask, positions, read index, first response column) of a reward model that shares the
    policy's tokenizer: query + response, and an EOS after each response cut at the length limit when the model
    reads there. The appended column changes no position before it."""
    lengths = mask.sum(1)
    if reward.reads_eos and not bool(ended.all()):
        tokens, lengths = _eos_appended(tokens, lengths, ended, eos_id)
    ids, amask, pos = sequences(query_ids, query_mask, tokens)
    last = query_ids.size(1) + lengths - 1
    if not reward.reads_eos:
        last = last - ended.long()
    return ids, amask, pos, last, torch.full_like(last, query_ids.size(1))


def _reference_and_reward(models: PPOModels, query_ids, query_mask, tokens, mask, ended) -> tuple[Tensor, Tensor]:
    """(reference logits [B, n, V] float32, rewards [B]) from ONE forward of the frozen base over the reward's ids,
    when the reward reads the reference's weights (reference='one_base' with a head-only reward model)."""
    ids, amask, pos, last, first = _reward_inputs(models.reward, query_ids, query_mask, tokens, mask, ended,
                                                  models.tokenizer.eos_token_id)
    h = models.reward.hidden_states(ids, amask, pos)
    start, n = query_ids.size(1) - 1, tokens.size(1)
    ref_logits = models.base.lm_head(h[:, start:start + n + 1])[:, :-1]  # the positions `response_logits` keeps
    return ref_logits.float(), models.reward.score_states(h, last, first).float()


def _score(models: PPOModels, query_ids, query_mask, tokens, mask, ended) -> Tensor:
    """The reward of each response, read where the reward model was trained to read (`score_token`): at an EOS
    after the response (the one that ended it, or one appended to a response cut at the length limit), or at the
    response's last token before it."""
    lengths = mask.sum(1)
    reward = models.reward
    if not isinstance(reward, ScalarHeadModel):
        texts = models.tokenizer.batch_decode([t[: int(n)] for t, n in zip(tokens, lengths)], skip_special_tokens=True)
        return reward(texts, lengths.cpu()).to(tokens.device)
    if models.reward_tokenizer is None:
        ids, amask, pos, last, first = _reward_inputs(reward, query_ids, query_mask, tokens, mask, ended,
                                                      models.tokenizer.eos_token_id)
        return reward.score_at(ids, amask, pos, last, first).float()
    # a reward model with its own tokenizer reads the decoded text, as AlpacaFarm does
    tok, rt = models.tokenizer, models.reward_tokenizer
    eos = rt.eos_token if reward.reads_eos and rt.eos_token else ""
    prompts = [tok.decode(q[m.bool()], skip_special_tokens=True) for q, m in zip(query_ids, query_mask)]
    texts = [p + tok.decode(t[: int(n)], skip_special_tokens=True) + eos
             for p, t, n in zip(prompts, tokens, lengths)]
    enc = rt(texts, return_tensors="pt", padding=True, padding_side="left").to(tokens.device)
    pos = position_ids_from_mask(enc["attention_mask"])
    last = torch.full((len(texts),), enc["input_ids"].size(1) - 1, device=tokens.device)
    first = response_start(rt, prompts, enc["attention_mask"]) if reward.score_token == "response_mean" else None
    return reward.score_at(enc["input_ids"], enc["attention_mask"], pos, last, first).float()


def _eos_appended(tokens: Tensor, lengths: Tensor, ended: Tensor, eos_id: int) -> tuple[Tensor, Tensor]:
    """(tokens, lengths) with EOS after each response cut at the length limit: a reward model that reads at EOS is
    trained on every response followed by EOS (`evals.reward_judge.reward_text`), finished or not."""
    tokens = torch.cat([tokens, torch.full_like(tokens[:, :1], eos_id)], dim=1)
    rows = (~ended).nonzero().squeeze(-1)
    tokens[rows, lengths[rows]] = eos_id
    return tokens, lengths + (~ended).long()


def sampling_options(models: PPOModels, cfg: TrainConfig, execution: ExecutionConfig) -> dict:
    """`trainers.sampling.sample`'s keyword arguments for a rollout of `cfg` (all but the generator)."""
    return dict(max_new_tokens=cfg.response_len, temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                stop_ids=models.stop_ids if cfg.stop_at_eos else [], pad_id=models.tokenizer.pad_token_id,
                prefill_rows=cfg.micro_batch_size if execution.group_by_length else 0,
                lean_step=execution.lean_decode_step, packed_weights=execution.packed_decode_weights)


@torch.inference_mode()
def collect_chunk(models: PPOModels, cfg: TrainConfig, execution: ExecutionConfig, prompts: list[list[int]],
                  generator, device, timings) -> Rollout:
    spec = regularizers.get(cfg.regularizer)
    query_ids, query_mask = left_pad(prompts, models.tokenizer.pad_token_id, device)
    t0 = time.perf_counter()
    with models.sampling_context(execution.merge_adapters_for_rollout, execution.few_row_decode_products):
        samples = sample(models.policy, query_ids, query_mask, generator=generator,
                         **sampling_options(models, cfg, execution))
    t1 = time.perf_counter()
    tokens, mask = samples.tokens, samples.mask
    batch, width = tokens.shape
    out = {name: torch.zeros(batch, width, device=device) for name in
           ("logprobs", "ref_logprobs", "penalties", "true_kl", "entropy", "values")}
    raw_scores = torch.zeros(batch, device=device)
    lengths = query_mask.sum(1) + mask.sum(1)
    # Scoring forwards one group of rows at a time: with groups of similar length, trimmed of the columns
    # that are padding in all their rows, no forward pays for another row's long prompt or response.
    grouped = execution.group_by_length
    for rows in length_groups(lengths, cfg.micro_batch_size if grouped else batch, grouped):
        q_ids, q_mask = trim_query(query_ids[rows], query_mask[rows])
        n = int(mask[rows].sum(1).max())
        toks, tmask = tokens[rows, :n], mask[rows, :n]
        ids, amask, pos = sequences(q_ids, q_mask, toks)
        scores = None
        if models.reward_reads_reference:
            ref_logits, scores = _reference_and_reward(models, q_ids, q_mask, toks, tmask, samples.ended[rows])
        else:
            with models.reference_context():
                ref_logits = response_logits(models.reference_model, ids, amask, pos, n).float()
        if cfg.temperature != 1.0:
            ref_logits = ref_logits / cfg.temperature
        logprobs, ref_logprobs, true_kl, entropy, full_penalty = distribution_stats(
            samples.logits[rows, :n], ref_logits, toks, spec)
        del ref_logits
        penalties = full_penalty if spec.needs_logits else spec.sampled(logprobs, ref_logprobs)
        values = models.value.values(ids, amask, pos, start=q_ids.size(1) - 1, length=n).float()
        for name, value in (("logprobs", logprobs), ("ref_logprobs", ref_logprobs), ("penalties", penalties),
                            ("true_kl", true_kl), ("entropy", entropy), ("values", values)):
            out[name][rows, :n] = value
        raw_scores[rows] = scores if scores is not None else _score(models, q_ids, q_mask, toks, tmask,
                                                                    samples.ended[rows])
    ended = samples.ended
    del samples
    if cfg.penalty_reward is None:
        scores = raw_scores
    else:
        scores = torch.where(ended, raw_scores, torch.full_like(raw_scores, cfg.penalty_reward))
    t2 = time.perf_counter()
    timings["rollout"] += t1 - t0
    timings["score"] += t2 - t1
    m = mask.float()
    return Rollout(query_ids, query_mask, tokens, mask, out["logprobs"] * m, out["ref_logprobs"] * m,
                   out["penalties"] * m, out["true_kl"] * m, out["entropy"] * m, out["values"] * m, scores,
                   raw_scores, ended)


def concat(chunks: list[Rollout], pad_id: int) -> Rollout:
    """Join micro-batch rollouts: queries re-left-padded, responses right-padded to the longest."""
    out = {}
    for f in fields(Rollout):
        parts = [getattr(c, f.name) for c in chunks]
        if f.name in ("query_ids", "query_mask"):
            fill = pad_id if f.name == "query_ids" else 0
            flipped = [row.flip(0) for p in parts for row in p]
            out[f.name] = pad_sequence(flipped, batch_first=True, padding_value=fill).flip(1)
        elif parts[0].dim() == 2:
            fill = pad_id if f.name == "tokens" else 0
            out[f.name] = pad_sequence([row for p in parts for row in p], batch_first=True, padding_value=fill)
        else:
            out[f.name] = torch.cat(parts)
    return Rollout(**out)
