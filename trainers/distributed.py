"""Data-parallel PPO over the processes that `accelerate launch` (torchrun underneath) starts: WORLD_SIZE > 1.

Layout. `rollout_batch_size` and `step_batch_size` stay global: rank r samples, scores and trains on the
contiguous slice r of each step's global prompt batch (rollout_batch_size / W prompts) and on step_batch_size / W
sequences of each minibatch; `micro_batch_size` and `rollout_micro_batch_size` are per process. One process
(WORLD_SIZE unset or 1) is the single-process path, bit for bit: every method here is then the identity.

Gradients: a manual all-reduce (torch.distributed), not DDP, for LoRA and for full fine-tuning without FSDP.
The policy is called in ways DDP does not see: KV-cached sampling, the reference forward inside
`policy.disable_adapter()`, the value model through `ScalarHeadModel.values()` (not `forward`, so DDP's reducer
would never arm), and each micro-batch runs two backward passes (policy, then value) under gradient accumulation.
After a minibatch's micro-batches, the trainable gradients are averaged in flat buckets, before clipping, so every
rank clips and steps identically. Each rank's loss is normalised by the minibatch's global token count / W, so the
averaged gradient is exactly the token mean over the global minibatch, what one process computes. For LoRA the
all-reduce moves a few MB per optimiser step; DDP's overlap of communication with the backward pays off only
for full-size gradients. The broadcast of rank 0's trainable weights at start makes the replicas equal whatever
their initialisation; checkpoints record every rank's parameter digest and refuse to save diverged ranks.

FSDP: full fine-tuning (lora=false) launched with an accelerate FSDP config (`harness/accelerate/fsdp_full_8gpu.yaml`,
FSDP2) takes the accelerate path instead: policy and value become one module (`TrainedRoles`) prepared with the
optimizer by `Accelerator.prepare`, and every policy or value call enters through its `forward`, where FSDP gathers
the shards. Checkpoints gather full state dicts (same layout as one process; the optimizer keyed by parameter
name) and resume loads them back with broadcast from rank 0. This path needs CUDA and was not run here.

Collective statistics: whitening of rewards and advantages uses the global batch's mean and variance, the KL
controller sees the global mean penalty, and each step's metrics are reduced across ranks (see `reduce_record`).
Seeds: each rank samples with a generator seeded from (seed + rank, step) at the start of every step (and seeds
torch's RNG, i.e. dropout, the same way), so a resumed multi-process run reproduces an uninterrupted one without
per-rank RNG files.
"""

from __future__ import annotations

import atexit
import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from trainers import ppo

BUCKET_ELEMENTS = 1 << 24  # gradients all-reduced 64 MB (float32) at a time
SAME_ON_ALL_RANKS = {"step", "objective/kl_coef", "ppo/learning_rate"}
TOKEN_MEANS = {"objective/regularizer_per_token", "objective/true_kl", "objective/entropy", "ppo/returns/mean",
               "ppo/val/mean"}
SUMS = {"time/tokens_per_s", "time/rollout_tokens_per_s"}
MAXIMA = ("time/", "memory/")  # the step waits for its slowest rank; memory is the busiest device's


def env_int(name: str, default: int, environ: Mapping[str, str] = os.environ) -> int:
    value = environ.get(name, "")
    return int(value) if value.strip() else default


def fsdp_requested(environ: Mapping[str, str] = os.environ) -> bool:
    """True when `accelerate launch` ran with an FSDP config (it exports ACCELERATE_USE_FSDP)."""
    return environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def config_errors(cfg, world_size: int, fsdp: bool = False, device: str = "auto") -> list[str]:
    """What prevents `cfg` from running on `world_size` processes (nothing for one process)."""
    if world_size <= 1:
        return []
    errors = []
    for name in ("rollout_batch_size", "step_batch_size"):
        if getattr(cfg, name) % world_size:
            errors.append(f"{name}={getattr(cfg, name)} must be divisible by the number of processes "
                          f"(WORLD_SIZE={world_size}): it is global, each process takes an equal share")
    local_step = cfg.step_batch_size // world_size
    if not errors and local_step % cfg.micro_batch_size:
        errors.append(f"step_batch_size={cfg.step_batch_size} / WORLD_SIZE={world_size} = {local_step} sequences "
                      f"per process must be a multiple of micro_batch_size={cfg.micro_batch_size}")
    if fsdp and cfg.lora:
        errors.append("lora=true under an accelerate FSDP config: the FSDP path is for the full fine-tune "
                      "(lora=false); launch LoRA runs with harness/accelerate/ddp_lora_2gpu.yaml")
    if fsdp and (device == "cpu" or not torch.cuda.is_available()):
        errors.append(f"device={device!r} under an accelerate FSDP config: the FSDP path needs CUDA GPUs")
    return errors


def parameter_digest(params: Sequence[torch.Tensor]) -> str:
    """sha256 (16 hex digits) of the tensors' bytes, in order: equal digests = bit-identical replicas."""
    h = hashlib.sha256()
    for p in params:
        h.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


class DataParallel:
    """The process group and the collective steps of a PPO step; the identity when world_size == 1."""

    def __init__(self, cfg, device: str = "auto", environ: Mapping[str, str] = os.environ) -> None:
        self.seed = cfg.seed
        self.world_size = env_int("WORLD_SIZE", 1, environ)
        self.rank = env_int("RANK", 0, environ)
        self.local_rank = env_int("LOCAL_RANK", 0, environ)
        self.fsdp = self.enabled and fsdp_requested(environ) and not cfg.lora
        errors = config_errors(cfg, self.world_size, self.enabled and fsdp_requested(environ), device)
        if errors:  # every rank raises the same error before any collective: nobody waits forever
            raise ValueError("invalid training configuration:\n  - " + "\n  - ".join(errors))
        self.device = self._device(device)
        self.backend = None
        self.roles: TrainedRoles | None = None
        if self.enabled:
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            self.backend = "cuda:nccl,cpu:gloo" if self.device.type == "cuda" else "gloo"
            if not dist.is_initialized():
                dist.init_process_group(self.backend, rank=self.rank, world_size=self.world_size,
                                        timeout=timedelta(minutes=30))  # MASTER_ADDR / MASTER_PORT: env://
                atexit.register(self.close)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def strategy(self) -> str:
        return "fsdp" if self.fsdp else "allreduce" if self.enabled else "single"

    def _device(self, choice: str) -> torch.device:
        if choice == "auto":
            choice = "cuda" if torch.cuda.is_available() else "cpu"
        if choice == "cuda" and self.enabled:
            return torch.device("cuda", self.local_rank)  # LOCAL_RANK selects this process's GPU
        return torch.device(choice)

    def facts(self) -> dict:
        if not self.enabled:
            return {}
        return {"distributed": {"world_size": self.world_size, "backend": self.backend, "strategy": self.strategy}}

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()

    # ---- coordination ---------------------------------------------------------------------------------------
    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def run_on_main(self, fn: Callable[[], Any]) -> Any:
        """`fn()` on rank 0 only (file writes); its result, or its ValueError / FileNotFoundError, on every rank."""
        if not self.enabled:
            return fn()
        result = error = None
        if self.is_main:
            try:
                result = fn()
            except (ValueError, FileNotFoundError) as e:
                error = (type(e).__name__, str(e))
        result, error = self.broadcast_object((result, error))
        if error is not None:
            raise {"ValueError": ValueError, "FileNotFoundError": FileNotFoundError}[error[0]](error[1])
        return result

    def sync_parameters(self, params: Sequence[torch.Tensor]) -> None:
        """Copy rank 0's values of `params` to every rank (replicas start equal whatever their initialisation)."""
        if self.enabled and not self.fsdp:
            for p in params:
                dist.broadcast(p.data, src=0)

    def parameter_digests(self, params: Sequence[torch.Tensor]) -> list[str]:
        local = parameter_digest(params)
        if not self.enabled:
            return [local]
        found: list[Any] = [None] * self.world_size
        dist.all_gather_object(found, local)
        return found

    # ---- the data --------------------------------------------------------------------------------------------
    def shard(self, batch: list) -> list:
        """This rank's contiguous slice of a global batch."""
        if not self.enabled:
            return batch
        size = len(batch) // self.world_size
        return batch[self.rank * size:(self.rank + 1) * size]

    def reseed(self, step: int, generator: torch.Generator) -> None:
        """Seed sampling and dropout from (seed + rank, step) (multi-process only; one process keeps its streams)."""
        if self.enabled:
            seed = (self.seed + self.rank) * 1_000_003 + step
            generator.manual_seed(seed)
            torch.manual_seed(seed)

    # ---- collective statistics -------------------------------------------------------------------------------
    def _all_reduce(self, values: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
        out = values.detach().to(self.device, torch.float64).clone()
        dist.all_reduce(out, op=op)
        return out.cpu()

    def token_denominator(self, mask: torch.Tensor) -> float:
        """Normaliser of a minibatch's summed losses: its token count (one process), or the global token count / W,
        so that the average of the ranks' gradients is the token mean over the global minibatch."""
        if not self.enabled:
            return mask.sum().clamp(min=1).item()
        total = self._all_reduce(mask.sum().reshape(1)).item()
        return max(total, 1.0) / self.world_size

    def mean(self, value: float) -> float:
        if not self.enabled:
            return value
        return self._all_reduce(torch.tensor([value])).item() / self.world_size

    def whiten(self, x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
        """`ppo.whiten` with the mean and unbiased variance of the global batch's masked entries."""
        if not self.enabled:
            return ppo.whiten(x, mask, shift_mean=shift_mean, eps=eps)
        total, n = self._all_reduce(torch.stack([(x * mask).sum(), mask.sum()])).tolist()
        mean = total / max(n, 1.0)
        squares = self._all_reduce(((x - mean).square() * mask).sum().reshape(1)).item()
        var = squares / max(n - 1.0, 1.0)
        out = (x - mean) * torch.rsqrt(torch.tensor(var + eps, dtype=x.dtype, device=x.device))
        if not shift_mean:
            out = out + mean
        return out * mask

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """The ranks' equal-shaped tensors concatenated along dim 0, in rank order."""
        if not self.enabled:
            return t
        parts = [torch.empty_like(t, device=self.device) for _ in range(self.world_size)]
        dist.all_gather(parts, t.contiguous().to(self.device))
        return torch.cat(parts).to(t.device)

    def reduce_record(self, record: dict, tokens: float) -> dict:
        """One step's metrics over all ranks: token means weighted by each rank's response tokens (`tokens`),
        throughputs summed, times and memory the maximum, step / kl_coef / learning rate as they are (equal), and
        every other number the mean over ranks (per-sequence means over equal shares = the global mean)."""
        if not self.enabled:
            return record
        numeric = sorted(k for k, v in record.items()
                         if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in SAME_ON_ALL_RANKS)
        maxed = [k for k in numeric if k.startswith(MAXIMA) and k not in SUMS]
        summed = [k for k in numeric if k not in maxed]
        vector = [record[k] * tokens if k in TOKEN_MEANS else record[k] for k in summed] + [tokens]
        sums = self._all_reduce(torch.tensor(vector, dtype=torch.float64)).tolist()
        maxima = self._all_reduce(torch.tensor([float(record[k]) for k in maxed], dtype=torch.float64),
                                  op=dist.ReduceOp.MAX).tolist()
        out = dict(record)
        total_tokens = max(sums[-1], 1.0)
        for k, v in zip(summed, sums):
            out[k] = v / total_tokens if k in TOKEN_MEANS else v if k in SUMS else v / self.world_size
        out.update({k: int(v) if isinstance(record[k], int) else v for k, v in zip(maxed, maxima)})
        return out

    # ---- gradients -------------------------------------------------------------------------------------------
    def average_gradients(self, params: Sequence[nn.Parameter]) -> None:
        """Average the gradients of `params` over ranks (FSDP has already reduced them in the backward)."""
        if not self.enabled or self.fsdp:
            return
        bucket: list[nn.Parameter] = []
        size = 0
        for p in params:
            if p.grad is None:  # a parameter this rank's batch did not reach: it still takes part
                p.grad = torch.zeros_like(p)
            bucket.append(p)
            size += p.numel()
            if size >= BUCKET_ELEMENTS:
                self._average_bucket(bucket)
                bucket, size = [], 0
        if bucket:
            self._average_bucket(bucket)

    def _average_bucket(self, bucket: list[nn.Parameter]) -> None:
        for dtype in {p.grad.dtype for p in bucket}:
            group = [p for p in bucket if p.grad.dtype == dtype]
            flat = torch.cat([p.grad.reshape(-1) for p in group])
            dist.all_reduce(flat)
            flat.div_(self.world_size)
            offset = 0
            for p in group:
                p.grad.copy_(flat[offset:offset + p.numel()].view_as(p.grad))
                offset += p.numel()

    def clip_grad_norm(self, params: Sequence[nn.Parameter], max_norm: float) -> torch.Tensor:
        if self.roles is None:
            return torch.nn.utils.clip_grad_norm_(params, max_norm)
        norm = self.roles.accelerator.clip_grad_norm_(list(self.roles.parameters()), max_norm)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm

    # ---- FSDP (full fine-tune under an accelerate FSDP config) ------------------------------------------------
    def prepare_fsdp(self, models, optimizer, accelerator=None):
        """Wrap policy and value with `Accelerator.prepare`; returns (models whose policy and value calls enter
        through the FSDP root, the prepared optimizer). `accelerator`: tests pass a stand-in."""
        if accelerator is None:
            from accelerate import Accelerator

            accelerator = Accelerator()
            if not accelerator.is_fsdp2:
                raise ValueError("the FSDP path needs FSDP2 (fsdp_version: 2 in the accelerate config)")
        roles = TrainedRoles(models.policy, models.value)
        roles, prepared = accelerator.prepare(roles, optimizer)
        roles.accelerator, roles.raw_optimizer = accelerator, optimizer
        self.roles = roles
        routed = dataclasses.replace(models, policy=_Route(roles, "policy"), value=_Route(roles, "value"))
        return routed, prepared

    def save_fsdp(self, run_dir: Path, step: int, models, scheduler, generator, extra: dict) -> None:
        """Gather full state dicts (collective) and write the usual checkpoint layout from rank 0."""
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                             get_optimizer_state_dict)

        from trainers import checkpoint
        from trainers.runfolder import read_state, verify

        roles = self.roles
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = get_model_state_dict(roles, options=options)
        optim_state = get_optimizer_state_dict(roles, roles.raw_optimizer, options=options)
        if self.is_main:
            view = _FullStateView(roles.policy_raw, state, models.tokenizer)
            checkpoint.save(run_dir, step, view, _Fixed(optim_state), scheduler, generator, extra)
        self.barrier()

    def load_fsdp(self, folder: Path, scheduler) -> dict:
        """Load a checkpoint written by `save_fsdp` into the sharded modules and optimizer (rank 0 reads)."""
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                             set_optimizer_state_dict)

        from trainers import checkpoint
        from trainers.runfolder import read_state, verify

        roles = self.roles
        state: dict[str, torch.Tensor] = {}
        optim_state: dict = {}
        if self.is_main:
            verify(folder)
            policy_dir = folder / "policy"
            index = policy_dir / "model.safetensors.index.json"
            files = (sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file()
                     else ["model.safetensors"])
            for name in files:
                state.update({f"policy.{k}": v for k, v in checkpoint.load_tensors(policy_dir / name).items()})
            state.update({f"value.{k}": v for k, v in checkpoint.load_tensors(folder / "value.safetensors").items()})
            optim_state = checkpoint.load_pt(folder / "optimizer.pt")
        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=False)
        result = set_model_state_dict(roles, state, options=options)
        tied = roles.policy_raw.config.tie_word_embeddings
        missing = [k for k in getattr(result, "missing_keys", []) if not (tied and "lm_head" in k)]
        if missing:
            raise ValueError(f"{folder}: the checkpoint lacks {missing[:5]}")
        set_optimizer_state_dict(roles, roles.raw_optimizer, optim_state, options=options)
        scheduler.load_state_dict(checkpoint.load_pt(folder / "scheduler.pt"))
        return read_state(folder)


class TrainedRoles(nn.Module):
    """Policy and value as one module: accelerate's FSDP2 prepares one model with one optimizer, and FSDP gathers
    a module's shards in its `forward`, so every call (sampling, training forwards, values) enters here."""

    def __init__(self, policy: nn.Module, value: nn.Module) -> None:
        super().__init__()
        self.policy, self.value = policy, value

    @property
    def policy_raw(self) -> nn.Module:
        return self.policy

    def forward(self, role: str, *args, **kwargs):
        if role == "policy":
            return self.policy(*args, **kwargs)
        if role == "values":
            return self.value.values(*args, **kwargs)
        raise ValueError(f"role={role!r}: expected 'policy' or 'values'")


class _Route:
    """Stands in for `models.policy` / `models.value`: calls go through the FSDP root's forward."""

    def __init__(self, roles: TrainedRoles, role: str) -> None:
        self.roles, self.role = roles, role

    def _module(self) -> nn.Module:
        return getattr(self.roles, self.role)

    def __call__(self, *args, **kwargs):
        return self.roles("policy", *args, **kwargs)

    def values(self, *args, **kwargs):
        return self.roles("values", *args, **kwargs)

    def parameters(self):
        return self._module().parameters()

    def train(self, mode: bool = True):
        self._module().train(mode)
        return self

    def eval(self):
        return self.train(False)


class _Fixed:
    """An object whose `state_dict()` is a given dict (the gathered optimizer state)."""

    def __init__(self, state: dict) -> None:
        self._state = state

    def state_dict(self) -> dict:
        return self._state


class _FullStateView:
    """What `checkpoint.save` reads from the models, served from a gathered full state dict."""

    def __init__(self, policy: nn.Module, state: dict[str, torch.Tensor], tokenizer) -> None:
        self.tokenizer = tokenizer
        policy_state = {k.removeprefix("policy."): v for k, v in state.items() if k.startswith("policy.")}
        self.policy = _SavePolicy(policy, policy_state)
        self.value = _NamedTensors({k.removeprefix("value."): v for k, v in state.items() if k.startswith("value.")})


class _SavePolicy:
    def __init__(self, policy: nn.Module, state: dict[str, torch.Tensor]) -> None:
        self.policy, self.state = policy, state

    def save_pretrained(self, path) -> None:
        self.policy.save_pretrained(path, state_dict=self.state)


class _NamedTensors:
    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        self.state = state

    def named_parameters(self):
        return ((k, nn.Parameter(v, requires_grad=True)) for k, v in self.state.items())
