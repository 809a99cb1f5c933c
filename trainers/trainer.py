"""The PPO loop. Each step reads as its phases:

1. rollout   sample responses from the policy (trainers.rollout)
2. score     reference, value and reward forwards, regulariser k_t, exact KL
3. shape     r_t = -kl_coef * k_t, plus the score at the last response token
4. advantage optional reward whitening, GAE, advantage whitening
5. update    `noptepochs` passes over shuffled minibatches of distinct samples, gradient accumulation
6. record    one line of metrics.jsonl, KL controller, checkpoint

A run folder (`trainers.runfolder.RunFolder`) holds `config.json`, `metrics.jsonl` and `checkpoints/`;
`train(resume=True)` continues from the latest checkpoint and reproduces an uninterrupted run with the same seed on
CPU.

Launched by `accelerate launch` with WORLD_SIZE > 1, the same loop runs data-parallel (trainers.distributed): each
process takes its share of the global batch, gradients and statistics are reduced across processes, and only
rank 0 writes the run folder.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from pathlib import Path

import torch

from trainers import checkpoint, data, identity, ppo, preflight, schedule, trackers
from trainers.distributed import DataParallel
from trainers.build import build_models
from trainers.config import TrainConfig
from trainers.errors import UserError
from trainers.execution import ExecutionConfig
from trainers.run_config import RunConfig
from trainers.runfolder import RunFolder, check_no_checkpoint, check_resume, verify
from trainers.kl_control import make_kl_controller
from trainers.precision import cpu_matmul_gflops, resolve_frozen_dtype
from trainers.progress import Meter
from trainers.resumption import refused_changes, settings_hash
from trainers.rollout import (Rollout, collect_chunk, concat, length_groups, position_ids_from_mask, response_logits,
                              trim_query)
from trainers.host_memory import release_host_memory
from trainers.runlog import Progress, peak_memory


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("torch", "transformers", "peft", "accelerate", "safetensors"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def pick_device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


class PPOTrainer:
    """The run `cfg` describes, executed as `execution` says (threads excepted: the entry point sets them,
    `trainers.process_settings`)."""

    def __init__(self, cfg: TrainConfig, run_dir: str | Path, *, execution: ExecutionConfig = ExecutionConfig(),
                 log=None) -> None:
        preflight.check(cfg, execution.device)
        trackers.check_installed(execution.report_to)  # a missing tracker library: one line, before any model loads
        self.cfg, self.execution, self.run_dir = cfg, execution, Path(run_dir)
        self.folder = RunFolder(self.run_dir)
        self.dp = DataParallel(cfg, execution.device)  # one process: the identity everywhere
        self.log = log or (lambda msg: print(msg, flush=True))
        if not self.dp.is_main:
            self.log = lambda msg: None
        self.device = self.dp.device if self.dp.enabled else pick_device(execution.device)
        torch.manual_seed(cfg.seed)
        # auto may measure: every rank takes rank 0's choice
        self.frozen_dtype = self.dp.broadcast_object(resolve_frozen_dtype(cfg.frozen_dtype, self.device))
        if self.dp.fsdp and cfg.value_model == "policy_head":
            raise UserError("value_model='policy_head' is not available with FSDP (the value head reads the policy "
                            "outside the FSDP root's forward); use value_model='separate'")
        self.models = build_models(cfg, self.device, self.frozen_dtype, log=self.log)
        self.prompts = self._tokenized_prompts()
        self.local_rollout_size = cfg.rollout_batch_size // self.dp.world_size
        self.local_step_size = cfg.step_batch_size // self.dp.world_size
        params = self.models.trainable_parameters()
        self.dp.sync_parameters(params)
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, eps=cfg.adam_eps, weight_decay=cfg.weight_decay)
        horizon = schedule.decay_horizon(cfg.steps, cfg.lr_decay_epochs, len(self.prompts), cfg.rollout_batch_size)
        if cfg.lr_schedule_unit == "optimizer_step":
            horizon *= cfg.optimizer_steps_per_ppo_step
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda count: schedule.lr_factor(cfg.lr_schedule, count, cfg.warmup_steps, horizon))
        self.kl_ctl = make_kl_controller(cfg.kl_controller, cfg.kl_coef, cfg.target_kl, cfg.kl_horizon)
        self.generator = torch.Generator(self.device).manual_seed(cfg.seed)
        self.step = 0
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16,
                                       enabled=cfg.autocast and not cfg.lora and self.frozen_dtype == torch.bfloat16)
        counts = self.models.parameter_counts()
        if self.dp.fsdp:  # policy and value sharded by accelerate; their calls now enter through the FSDP root
            self.models, self.optimizer = self.dp.prepare_fsdp(self.models, self.optimizer)
        self.facts = {
            "run_id": identity.run_id(cfg),
            "device": str(self.device),
            "frozen_dtype": str(self.frozen_dtype).removeprefix("torch."),
            "layout": self.models.layout,
            "parameters": counts,
            "prompts": len(self.prompts),
            "versions": library_versions(),
            **({"cpu_matmul_gflops": cpu_matmul_gflops()} if self.device.type == "cpu" else
               {"gpu": torch.cuda.get_device_name(self.device)}),
            **self.dp.facts(),
        }
        self.log(f"device {self.device} | frozen weights {str(self.frozen_dtype).removeprefix('torch.')} | "
                 f"layout {self.models.layout} | "
                 f"policy {cfg.policy} | trainable {counts['trainable']:,} of {counts['total']:,} parameters "
                 f"({100 * counts['trainable'] / counts['total']:.3f}%) | {len(self.prompts)} prompts | "
                 f"{cfg.num_minibatches} minibatches x {self.local_step_size // cfg.micro_batch_size} micro-batches "
                 f"per epoch" + (f" | {self.dp.world_size} processes ({self.dp.strategy}, {self.dp.backend}), "
                                 f"{self.local_rollout_size} sequences each" if self.dp.enabled else ""))

    def _tokenized_prompts(self) -> list[list[int]]:
        tok, cfg = self.models.tokenizer, self.cfg
        records = data.load_records(cfg.prompts, cfg.prompt_split)
        texts = [data.format_prompt(r, cfg.prompt_template, tok) for r in records]
        ids = [tok(t, add_special_tokens=True)["input_ids"] for t in texts]
        kept = [x for x in ids if len(x) <= cfg.query_len]
        if not kept:
            raise ValueError(f"query_len={cfg.query_len}: every prompt of {cfg.prompts!r} is longer; "
                             f"the shortest has {min(map(len, ids))} tokens")
        return kept

    def batch_prompts(self, step: int) -> list[list[int]]:
        """Prompts of PPO step `step` (0-based): consecutive slices of per-epoch seeded permutations."""
        n, size = len(self.prompts), self.cfg.rollout_batch_size
        perms: dict[int, torch.Tensor] = {}  # one permutation per data epoch this batch touches
        picked = []
        for i in range(step * size, (step + 1) * size):
            epoch = i // n
            if epoch not in perms:
                perms[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch))
            picked.append(self.prompts[int(perms[epoch][i % n])])
        return picked

    # ---- run management -------------------------------------------------------------------------
    def _start_or_resume(self, resume: bool) -> None:
        latest = self.dp.run_on_main(lambda: self._prepare_run_dir(resume))  # rank 0 checks and writes
        if latest is None:
            if self.dp.is_main:
                self.folder.keep_metrics_through(0)
            self.dp.barrier()
            return
        latest = Path(latest)
        if self.dp.fsdp:
            state = self.dp.load_fsdp(latest, self.scheduler)
        else:
            state = checkpoint.load(latest, self.models, self.optimizer, self.scheduler, self.generator)
        self.step = state["step"]
        self.kl_ctl.kl_coef = state["kl_coef"]
        if self.dp.is_main:
            self.folder.keep_metrics_through(self.step)
        self.dp.barrier()
        self.log(f"resumed from {latest} at step {self.step}")

    def _prepare_run_dir(self, resume: bool) -> str | None:
        """Check the run folder against this configuration, write config.json and run.json; the checkpoint to
        resume from (None: start afresh)."""
        self.lock.acquire()  # held until train() returns: a second process on this folder fails here
        old = self.folder.read_config() if self.folder.has_config() else {}
        old_execution = self.folder.read_execution() if old else {}
        changed = refused_changes(old, old_execution, self.cfg, self.execution)
        if changed:
            raise UserError(f"{self.run_dir} holds a run with a different configuration ({', '.join(changed)}); "
                            "use another --out")
        logged = [r["step"] for r in self.folder.read_metrics()]
        latest = self.folder.latest_checkpoint()
        if not resume and (logged or latest):  # config.json may be gone: the log and checkpoints still count
            raise UserError(f"{self.run_dir} already holds a run; pass --resume to continue it or use another --out")
        if resume and latest is None:
            every = old.get("checkpoint_every")
            self.log(check_no_checkpoint(self.run_dir, logged, every if isinstance(every, int) and every > 0
                                         else self.cfg.checkpoint_every))
        elif resume:
            check_resume(latest, verify(latest), self._resume_hash(), logged, self.folder.metrics_path)
        self.folder.write_config(RunConfig(self.cfg, self.execution).to_dict())
        self.folder.write_facts(self.facts)
        return None if latest is None or not resume else str(latest)

    def _resume_hash(self) -> str:
        return settings_hash(self.cfg, self.execution)

    def train(self, resume: bool = False) -> list[dict]:
        self.lock = self.folder.lock()  # taken by rank 0 in _prepare_run_dir
        try:
            return self._train(resume)
        finally:
            self.lock.release()

    def _train(self, resume: bool) -> list[dict]:
        self._start_or_resume(resume)
        progress = Progress(self.cfg.steps, self.step)
        ex = self.execution
        sink = trackers.for_training(ex.report_to, self.run_dir, self.facts["run_id"], ex.tracker_group,
                                     RunConfig(self.cfg, ex).flat(), self.step if resume else None) \
            if self.dp.is_main else None
        finished = False
        try:
            while self.step < self.cfg.steps:
                record = self.ppo_step()
                if self.dp.is_main:
                    self.folder.append_metrics(record)
                    sink.log_step(record)
                    progress.update(self.step, record)
                if self.step % self.cfg.checkpoint_every == 0 or self.step == self.cfg.steps:
                    self._save_checkpoint()
            finished = True
        finally:
            if sink is not None:
                sink.close(finished)
        self.dp.barrier()
        return self.folder.read_metrics()


    def _save_checkpoint(self) -> None:
        extra = {"kl_coef": self.kl_ctl.kl_coef, "run_id": self.facts["run_id"], "resume_hash": self._resume_hash()}
        if self.dp.fsdp:
            self.dp.save_fsdp(self.run_dir, self.step, self.models, self.scheduler, self.generator, extra)
            return
        if self.dp.enabled:  # the replicas must be bit-identical: record it, and never save diverged ranks
            digests = self.dp.parameter_digests(self.models.trainable_parameters())
            if len(set(digests)) > 1:
                raise RuntimeError(f"step {self.step}: the processes' trainable parameters differ ({digests})")
            extra["rank_parameter_digests"] = digests
        if self.dp.is_main:
            checkpoint.save(self.run_dir, self.step, self.models, self.optimizer, self.scheduler, self.generator,
                            extra)
        self.dp.barrier()

    # ---- one PPO step ---------------------------------------------------------------------------
    def _release_host_memory(self) -> None:
        if self.execution.tune_host_allocator:
            release_host_memory()

    def ppo_step(self) -> dict:
        cfg, models = self.cfg, self.models
        timings: dict[str, float] = defaultdict(float)
        t_start = time.perf_counter()
        # 1-2. rollout and scoring, one micro-batch at a time
        models.policy.eval()
        models.value.eval()
        self.dp.reseed(self.step, self.generator)
        prompts = self.dp.shard(self.batch_prompts(self.step))  # this process's slice of the global batch
        chunks = []
        with Meter(-(-len(prompts) // cfg.rollout_micro_batch_size), f"step {self.step + 1} rollout", "chunk",
                   enabled=self.dp.is_main) as meter:
            for i in range(0, len(prompts), cfg.rollout_micro_batch_size):
                with self.autocast:
                    chunks.append(collect_chunk(models, cfg, self.execution,
                                                prompts[i:i + cfg.rollout_micro_batch_size], self.generator,
                                                self.device, timings))
                self._release_host_memory()
                meter.update()
        ro = concat(chunks, models.tokenizer.pad_token_id)
        if not torch.isfinite(ro.scores).all():
            raise ValueError(f"PPO step {self.step + 1}: the reward is not finite for "
                             f"{int((~torch.isfinite(ro.scores)).sum())} of {ro.scores.numel()} responses "
                             f"(reward={cfg.reward!r}); training stopped with the last checkpoint intact")
        mask = ro.mask.float()
        # 3. shape rewards
        kl_coef = self.kl_ctl.kl_coef
        shaped, non_score = ppo.shape_rewards(ro.scores, ro.penalties, kl_coef, mask)
        # 4. advantages
        rewards = self.dp.whiten(shaped, mask, shift_mean=False) if cfg.whiten_rewards else shaped
        advantages, returns = ppo.gae_advantages(rewards * mask, ro.values * mask, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages:
            advantages = self.dp.whiten(advantages, mask)
        # 5. update
        lr = self.scheduler.get_last_lr()[0]  # the rate of this step's first optimiser step
        t_train = time.perf_counter()
        stats = self.update(ro, advantages, returns)
        if cfg.lr_schedule_unit == "ppo_step":
            self.scheduler.step()
        timings["train"] = time.perf_counter() - t_train
        self._release_host_memory()
        # 6. record
        self.step += 1
        penalty_sum = self.dp.mean((ro.penalties * mask).sum(1).mean().item())  # the global batch's mean
        self.kl_ctl.update(penalty_sum, cfg.rollout_batch_size)
        step_time = time.perf_counter() - t_start
        n_tokens = mask.sum().item()
        peak, peak_kind = peak_memory(self.device)
        scores = self.dp.gather(ro.scores)  # every rank's scores, for their spread
        record = {
            "step": self.step,
            "objective/scores": ro.scores.mean().item(),
            "objective/scores_std": scores.std().item() if scores.numel() > 1 else 0.0,
            "objective/raw_scores": ro.raw_scores.mean().item(),
            "objective/shaped_reward": shaped.sum(1).mean().item(),
            "objective/non_score_reward": non_score.sum(1).mean().item(),
            "objective/regularizer": penalty_sum,
            "objective/regularizer_per_token": ppo.masked_mean(ro.penalties, mask).item(),
            "objective/kl_sampled": ((ro.logprobs - ro.ref_logprobs) * mask).sum(1).mean().item(),
            "objective/true_kl": ppo.masked_mean(ro.true_kl, mask).item(),
            "objective/entropy": ppo.masked_mean(ro.entropy, mask).item(),
            "objective/kl_coef": kl_coef,
            "rollout/response_length": mask.sum(1).mean().item(),
            "rollout/ended_rate": ro.ended.float().mean().item(),
            "ppo/learning_rate": lr,
            "ppo/returns/mean": ppo.masked_mean(returns, mask).item(),
            "ppo/val/mean": ppo.masked_mean(ro.values, mask).item(),
            **stats,
            "time/rollout": timings["rollout"],
            "time/score": timings["score"],
            "time/train": timings["train"],
            "time/step": step_time,
            "time/tokens_per_s": n_tokens / step_time,
            "time/rollout_tokens_per_s": ro.tokens.numel() / max(timings["rollout"], 1e-9),
            "memory/peak_bytes": peak,
            "memory/kind": peak_kind,
        }
        return self.dp.reduce_record(record, n_tokens)

    def update(self, ro: Rollout, advantages: torch.Tensor, returns: torch.Tensor) -> dict:
        cfg, models = self.cfg, self.models
        models.policy.train()
        models.value.train()
        params = models.trainable_parameters()
        totals: dict[str, float] = defaultdict(float)
        n_minibatches = 0
        meter = Meter(cfg.optimizer_steps_per_ppo_step, f"step {self.step + 1} update", "minibatch",
                      enabled=self.dp.is_main)
        for _ in range(cfg.noptepochs):
            order = torch.randperm(self.local_rollout_size, generator=self.generator, device=self.generator.device)
            for start in range(0, self.local_rollout_size, self.local_step_size):
                mb = order[start:start + self.local_step_size].to(ro.tokens.device)
                denom = self.dp.token_denominator(ro.mask[mb])
                self.optimizer.zero_grad(set_to_none=True)
                # The minibatch's gradient is a sum over its tokens, whatever the split into micro-batches:
                # splitting it by length only spares padding.
                lengths = ro.query_mask[mb].sum(1) + ro.mask[mb].sum(1)
                for rows in length_groups(lengths, cfg.micro_batch_size, self.execution.group_by_length):
                    idx = mb[rows]
                    for k, v in self._micro_step(ro, advantages, returns, idx, denom).items():
                        totals[k] += v
                self.dp.average_gradients(params)
                grad_norm = self.dp.clip_grad_norm(params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf"))
                if not torch.isfinite(grad_norm):  # before the step: NaN weights must never reach a checkpoint
                    raise ValueError(f"PPO step {self.step + 1}: the gradient norm is {grad_norm.item()}; training "
                                     "stopped before the update, with the last checkpoint intact (lower lr?)")
                totals["ppo/grad_norm"] += grad_norm.item()
                self.optimizer.step()
                if cfg.lr_schedule_unit == "optimizer_step":
                    self.scheduler.step()
                n_minibatches += 1
                meter.update()
        meter.close()
        return {k: v / n_minibatches for k, v in totals.items()}

    def _micro_step(self, ro: Rollout, advantages, returns, idx: torch.Tensor, denom: float) -> dict[str, float]:
        """Forward and backward of one micro-batch; losses are sums over its tokens / the minibatch's tokens."""
        cfg, models = self.cfg, self.models
        query_ids, qmask = trim_query(ro.query_ids[idx], ro.query_mask[idx])
        n = int(ro.mask[idx].sum(1).max())  # drop response padding after the longest response
        tokens, mask = ro.tokens[idx, :n], ro.mask[idx, :n].float()
        ids = torch.cat([query_ids, tokens], 1)
        amask = torch.cat([qmask, torch.ones_like(tokens)], 1)
        pos = position_ids_from_mask(amask)
        start = query_ids.size(1) - 1
        old_logprobs, old_values = ro.logprobs[idx, :n], ro.values[idx, :n]
        if cfg.value_model == "policy_head":
            # one forward of the policy gives logits and values; the value loss's gradient reaches its adapters
            with self.autocast:
                logits, vpred = models.value.logits_and_values(ids, amask, pos, start, n)
                logprobs = ppo.sequence_logprobs(logits, tokens, cfg.temperature)
                del logits
            pg_loss, pg_stats = ppo.policy_loss(logprobs, old_logprobs, advantages[idx, :n], mask, cfg.cliprange,
                                                denom)
            vf_loss, vf_stats = ppo.value_loss(vpred.float(), old_values, returns[idx, :n], mask,
                                               cfg.cliprange_value, denom)
            (pg_loss + cfg.vf_coef * vf_loss).backward()
            return self._loss_stats(pg_loss, vf_loss, pg_stats, vf_stats)
        with self.autocast:
            logits = response_logits(models.policy, ids, amask, pos, n)
            logprobs = ppo.sequence_logprobs(logits, tokens, cfg.temperature)
            del logits
        pg_loss, pg_stats = ppo.policy_loss(logprobs, old_logprobs, advantages[idx, :n], mask, cfg.cliprange, denom)
        # Policy and value share no trainable tensor: two backward passes give the same gradients as one
        # on their sum, and the policy's activations are freed before the value forward (half the peak).
        pg_loss.backward()
        with models.value_context():  # one_base: the value adapter runs, in the forward and in its backward
            with self.autocast:
                vpred = models.value.values(ids, amask, pos, start=start, length=n).float()
            vf_loss, vf_stats = ppo.value_loss(vpred, old_values, returns[idx, :n], mask, cfg.cliprange_value, denom)
            (cfg.vf_coef * vf_loss).backward()
        return self._loss_stats(pg_loss, vf_loss, pg_stats, vf_stats)

    def _loss_stats(self, pg_loss, vf_loss, pg_stats, vf_stats) -> dict[str, float]:
        cfg = self.cfg
        return {
            "ppo/loss/policy": pg_loss.item(),
            "ppo/loss/value": vf_loss.item(),
            "ppo/loss/total": (pg_loss + cfg.vf_coef * vf_loss).item(),
            "ppo/policy/clipfrac": pg_stats["clipfrac"].item(),
            "ppo/policy/approxkl": pg_stats["approxkl"].item(),
            "ppo/val/clipfrac": vf_stats["clipfrac"].item(),
        }
