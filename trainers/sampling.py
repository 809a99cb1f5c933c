"""Batched, KV-cached sampling that keeps what PPO needs, so nothing is recomputed after generation.

Queries are left-padded; positions come from the attention mask, the same way every later forward
computes them, so generation-time and training-time log-probs see identical positions. Each step
keeps the temperature-scaled logits of the step (the policy's distribution at the sampling temperature),
from which the sampled tokens' log-probs, the entropy and the exact KL to the reference follow.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import DynamicCache

from trainers.decode_linear import packed_products
from trainers.decode_step import LeanDecoder
from trainers.kv_cache import GroupedPrefillCache, with_room


def position_ids_from_mask(mask: Tensor) -> Tensor:
    """0-based positions that skip left padding: cumsum(mask) - 1, clamped at 0."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def filter_logits(logits: Tensor, top_k: int, top_p: float) -> Tensor:
    """Set logits outside the top-k and outside the smallest set of mass >= top_p to -inf.

    top_k = 0 and top_p = 1 leave the logits unchanged; the most likely token is always kept.
    """
    if top_k > 0 and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        # drop a token once the mass before it already reaches top_p
        drop_sorted = (cumulative - torch.softmax(sorted_logits, dim=-1)) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def length_groups(lengths: Tensor, rows: int, enabled: bool = True) -> list[Tensor]:
    """Row indices in groups of at most `rows`: longest first when `enabled` (so each group's rows have
    similar lengths and trimming leaves little padding), else in their given order."""
    order = torch.argsort(lengths, descending=True, stable=True) if enabled else torch.arange(lengths.numel())
    return list(order.to(lengths.device).split(max(rows, 1)))


def trim_query(query_ids: Tensor, query_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Drop leading columns that are padding in every row (left-padded queries)."""
    first = int(query_mask.any(0).float().argmax())
    return query_ids[:, first:], query_mask[:, first:]


def prefill(model: torch.nn.Module, query_ids: Tensor, mask: Tensor, group_rows: int = 0,
            room: int = 0) -> tuple[Tensor, DynamicCache]:
    """Read the left-padded prompts: the logits at their last position [B, V] and the KV cache, with room for
    `room` more positions per layer (`trainers.kv_cache`).

    With `group_rows` > 0 the prompts are read in groups of that many rows, longest first, each group trimmed
    of the columns that are padding in all its rows, and their caches laid out as one batched read would have
    left them (padding slots are masked, so their contents never matter): a batch of prompts of mixed lengths
    then costs its real tokens, not batch x longest prompt (`group_by_length`; `python -m benchmarks.side_by_side
    --levers` times a step without it). A model whose cache is not a plain per-layer key/value cache is read in
    one batch.
    """
    batch, width = query_ids.shape
    if group_rows <= 0 or group_rows >= batch:
        cache = DynamicCache()
        out = model(input_ids=query_ids, attention_mask=mask, position_ids=position_ids_from_mask(mask), cache=cache,
                    use_cache=True, logits_to_keep=1)
        return out.logits[:, -1], (with_room(cache, room) if room else cache)
    last_logits, joined = None, GroupedPrefillCache(batch, width, room)
    for rows in length_groups(mask.sum(1), group_rows):
        ids, m = trim_query(query_ids[rows], mask[rows])
        part = DynamicCache()
        out = model(input_ids=ids, attention_mask=m, position_ids=position_ids_from_mask(m), cache=part,
                    use_cache=True, logits_to_keep=1)
        if not joined.add(rows, width - ids.size(1), part):
            return prefill(model, query_ids, mask, 0, room)
        if last_logits is None:
            last_logits = out.logits.new_empty(batch, out.logits.size(-1))
        last_logits[rows] = out.logits[:, -1]
    return last_logits, joined.cache()


def draw(probs: Tensor, generator: torch.Generator | None) -> Tensor:
    """One token per row from the categorical `probs` [B, V] by inverting its CDF at a uniform draw.

    The same distribution as `torch.multinomial`, whose CPU kernel draws an exponential variate for every
    vocabulary entry; this draws one uniform per row (`python -m benchmarks.profile_step` lists the costliest
    operators of a step).
    """
    cdf = probs.cumsum(-1)
    u = torch.rand(probs.size(0), 1, generator=generator, device=probs.device, dtype=cdf.dtype)
    u = (1.0 - u) * cdf[:, -1:]  # in (0, total]: never lands before the first token with mass
    token = torch.searchsorted(cdf, u).squeeze(1)
    return token.clamp(max=probs.size(-1) - 1)


@dataclass(slots=True)
class Samples:
    """Responses and the policy's temperature-scaled logits at each response position."""

    tokens: Tensor  # [B, R] sampled ids, pad after the stop token
    mask: Tensor  # [B, R] 1 up to and including the stop token
    logits: Tensor | None  # [B, R, V] float32 logits / temperature (None when greedy or not kept)
    ended: Tensor  # [B] bool: the response ends with a stop token
    lean_step: bool = False  # the steps after the first token ran through `trainers.decode_step.LeanDecoder`


@torch.inference_mode()
def sample(
    model: torch.nn.Module,
    query_ids: Tensor,
    query_mask: Tensor,
    *,
    max_new_tokens: int,
    temperature: float,
    top_k: int = 0,
    top_p: float = 1.0,
    stop_ids: list[int],
    pad_id: int,
    generator: torch.Generator | None = None,
    keep_logits: bool = True,
    prefill_rows: int = 0,
    lean_step: bool,
    packed_weights: bool,
) -> Samples:
    """Sample up to `max_new_tokens` per row (temperature 0: greedy); stop when every row has stopped.

    `prefill_rows` > 0 reads the prompts in length-sorted groups of that many rows (see `prefill`). Decoding levers
    (each gives the same logits as without it): `lean_step` decodes with `trainers.decode_step.LeanDecoder` where
    it applies (without the per-call work of the model's forward); `packed_weights` computes bf16 linear layers
    with weights packed once for the call (`trainers.decode_linear.packed_products`). They have no default here:
    the caller passes its configuration's (`trainers.execution.DecodeLevers`)."""
    device = query_ids.device
    batch = query_ids.size(0)
    mask = query_mask.long()
    positions = position_ids_from_mask(mask)
    last_logits, cache = prefill(model, query_ids, mask, prefill_rows, room=max_new_tokens)
    next_pos = positions[:, -1:] + 1
    stop = torch.tensor(stop_ids, dtype=torch.long, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    tokens = []
    kept = None  # [B, max_new_tokens, V], filled in place: no list of per-step copies to stack
    decoding = max_new_tokens > 1
    pack_rows = batch if packed_weights and decoding else 0
    decoder = LeanDecoder.build(model, cache, mask, max_new_tokens, pack_rows) if lean_step and decoding else None
    with packed_products(model, bool(pack_rows) and decoder is None, rows_hint=batch):  # the decoder packs its own
        for step in range(max_new_tokens):
            logits = last_logits.float()
            if temperature > 0:
                logits = logits / temperature
                if keep_logits:
                    if kept is None:
                        kept = logits.new_empty(batch, max_new_tokens, logits.size(-1))
                    kept[:, step] = logits
                probs = torch.softmax(filter_logits(logits, top_k, top_p), dim=-1)
                token = draw(probs, generator)
            else:
                token = logits.argmax(-1)
            # Without stop tokens no row ends early: nothing to mask, and no need to read `finished`, a host-device
            # sync on a GPU that would keep the host from queuing the next step while the device runs this one.
            if stop_ids:
                token = torch.where(finished, torch.full_like(token, pad_id), token)
                finished |= torch.isin(token, stop)
            tokens.append(token)
            if step == max_new_tokens - 1 or (stop_ids and bool(finished.all())):
                break
            if decoder is not None:
                last_logits = decoder(token, next_pos)
            else:
                mask = torch.cat([mask, torch.ones(batch, 1, dtype=mask.dtype, device=device)], dim=1)
                last_logits = model(input_ids=token[:, None], attention_mask=mask, position_ids=next_pos,
                                    cache=cache, use_cache=True).logits[:, -1]
            next_pos = next_pos + 1
    tokens_t = torch.stack(tokens, dim=1)
    is_stop = torch.isin(tokens_t, stop)
    # real tokens: those up to and including the first stop token
    after_stop = (is_stop.long().cumsum(1) - is_stop.long()) > 0
    response_mask = (~after_stop).long()
    return Samples(
        tokens=tokens_t,
        mask=response_mask,
        logits=kept[:, : tokens_t.size(1)] if kept is not None else None,
        ended=is_stop.any(1),
        lean_step=decoder is not None,
    )
