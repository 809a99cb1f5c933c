"""Multi-process training: a real 2-process CPU (gloo) run through `accelerate launch`, and the collectives'
exactness against one process holding the whole batch."""

import json
import os
import socket
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.multiprocessing as mp

from harness.executors import Job, LocalExecutor, launch_argv
from trainers import checkpoint, ppo
from trainers.config import TrainConfig
from trainers.distributed import DataParallel, config_errors, parameter_digest
from trainers.runfolder import RunFolder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_cpu_processes_train_in_step_resume_and_rank_0_writes_once(tmp_path, prompt_file):
    out = tmp_path / "run"

    def job(steps: int, *extra: str) -> Job:
        argv = (sys.executable, "-m", "harness", "train", "--preset", "smoke", "--set", f"steps={steps}",
                "--set", "checkpoint_every=1", "--set", "threads=1", "--set", f"prompts={prompt_file}",
                "--set", "prompt_split=unlabeled", "--out", str(out), *extra)
        return Job("dp", argv, str(tmp_path / "dp.log"), processes=2, env=(("HF_HUB_OFFLINE", "1"),))

    command, argv = launch_argv(job(1)), job(1).argv
    assert command[1:3] == ["-m", "accelerate.commands.launch"] and "cpu_gloo_2proc.yaml" in command[4]
    assert command[command.index("--num_processes") + 1] == "2" and command[-len(argv) + 1:] == list(argv[1:])

    # step 1, then a second launch that resumes from its checkpoint for step 2
    for j in (job(1), job(2, "--resume")):
        outcome = LocalExecutor(retries=0).run([j])["dp"]
        log = (tmp_path / "dp.log").read_text()
        assert outcome.status == "done" and outcome.returncode == 0, log[-3000:]
    assert log.count("step 1/1") == 1 and log.count("step 2/2") == 1 and log.count("resumed from") == 1
    assert log.count("2 processes (allreduce, gloo), 4 sequences each") == 2  # once per launch: rank 0 logs

    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2]  # written once, by rank 0
    facts = json.loads((out / "run.json").read_text())
    assert facts["distributed"] == {"world_size": 2, "backend": "gloo", "strategy": "allreduce"}
    first = json.loads(lines[0])
    assert first["objective/true_kl"] == pytest.approx(0.0, abs=1e-6)  # the policy starts as the reference
    assert first["ppo/learning_rate"] == 1e-3 and first["memory/kind"] == "peak_rss"

    # both ranks held bit-identical trainable weights at every checkpoint, and the checkpoint restores them
    latest = RunFolder(out).latest_checkpoint()
    assert latest is not None and latest.name == "step-000002"
    digests = json.loads((latest / "state.json").read_text())["rank_parameter_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]
    first_ckpt = json.loads((RunFolder(out).checkpoints()[0] / "state.json").read_text())
    assert first_ckpt["rank_parameter_digests"][0] != digests[0]  # training moved them

    from trainers.trainer import PPOTrainer

    cfg = TrainConfig.from_dict(RunFolder(out).read_config())
    fresh = PPOTrainer(cfg, tmp_path / "unused", log=lambda _m: None)
    assert parameter_digest(fresh.models.trainable_parameters()) != digests[0]
    checkpoint.load(latest, fresh.models, fresh.optimizer, fresh.scheduler, fresh.generator)
    assert parameter_digest(fresh.models.trainable_parameters()) == digests[0]


def test_batch_sizes_must_divide_by_the_world_size(smoke):
    cfg = smoke(rollout_batch_size=12, step_batch_size=6, micro_batch_size=2, rollout_micro_batch_size=4)
    assert config_errors(cfg, 1) == []
    assert config_errors(cfg, 2) == ["step_batch_size=6 / WORLD_SIZE=2 = 3 sequences per process must be a "
                                     "multiple of micro_batch_size=2"]
    errors = config_errors(cfg, 5)
    assert len(errors) == 2 and errors[0].startswith("rollout_batch_size=12 must be divisible by the number of "
                                                     "processes (WORLD_SIZE=5)")
    assert errors[1].startswith("step_batch_size=6 must be divisible")
    with pytest.raises(ValueError, match="rollout_batch_size=12 must be divisible"):  # before any process group
        DataParallel(cfg, environ={"WORLD_SIZE": "5", "RANK": "1", "LOCAL_RANK": "1"})
    assert "FSDP path is for the full fine-tune" in " ".join(config_errors(smoke(), 2, fsdp=True))


def test_one_process_is_the_identity(smoke):
    dp = DataParallel(smoke(), environ={})
    x, mask = torch.randn(4, 6), (torch.rand(4, 6) > 0.3).float()
    assert not dp.enabled and dp.is_main and dp.strategy == "single" and dp.facts() == {}
    assert torch.equal(dp.whiten(x, mask), ppo.whiten(x, mask)) and dp.shard([1, 2, 3]) == [1, 2, 3]
    assert dp.token_denominator(mask) == mask.sum().item() and dp.reduce_record({"a": 1.0}, 3.0) == {"a": 1.0}


def _two_processes(rank: int, world: int, port: int, run_dir: str) -> None:
    """One spawn for both checks below (each child pays the imports once)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    environ = {"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)}
    cfg = SimpleNamespace(seed=0, lora=True, rollout_batch_size=8, step_batch_size=8, micro_batch_size=2)
    dp = DataParallel(cfg, "cpu", environ=environ)
    try:
        _check_collectives(dp, rank)
        _check_fsdp_checkpoint(environ, run_dir)
    finally:
        dp.close()


def test_collectives_and_the_fsdp_checkpoint_path_in_two_gloo_processes(tmp_path):
    """Collectives equal one process holding the whole batch. The FSDP path's routing, gathered-state checkpoint
    and broadcast resume, with accelerate's sharding replaced by a stand-in (FSDP itself needs CUDA: untested)."""
    mp.spawn(_two_processes, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)


def _check_collectives(dp: DataParallel, rank: int) -> None:
    gen = torch.Generator().manual_seed(0)  # the same global batch on every rank
    x, feats = torch.randn(8, 6, generator=gen), torch.randn(8, 6, 3, generator=gen)
    mask = (torch.rand(8, 6, generator=gen) > 0.3).float()
    mine = slice(rank * 4, rank * 4 + 4)
    assert torch.equal(torch.stack(dp.shard(list(x))), x[mine])
    # whitening over the global batch
    for shift in (True, False):
        assert torch.allclose(dp.whiten(x[mine], mask[mine], shift_mean=shift),
                              ppo.whiten(x, mask, shift_mean=shift)[mine], atol=1e-6)
    # token-mean loss: averaged gradients = the gradient of one process over the whole batch
    w = torch.nn.Parameter(torch.tensor([0.5, -1.0, 2.0]))
    (((feats[mine] @ w) ** 2 * mask[mine]).sum() / dp.token_denominator(mask[mine])).backward()
    dp.average_gradients([w])
    whole = torch.nn.Parameter(w.detach().clone())
    (((feats @ whole) ** 2 * mask).sum() / mask.sum()).backward()
    assert torch.allclose(w.grad, whole.grad, atol=1e-6), (w.grad, whole.grad)
    # metrics
    local_kl = ppo.masked_mean(x[mine], mask[mine]).item()
    record = {"step": 3, "objective/true_kl": local_kl, "objective/scores": float(rank), "time/step": rank + 1.0,
              "time/tokens_per_s": 10.0, "memory/peak_bytes": 100 * (rank + 1), "memory/kind": "peak_rss"}
    out = dp.reduce_record(record, tokens=mask[mine].sum().item())
    assert out["objective/true_kl"] == pytest.approx(ppo.masked_mean(x, mask).item(), abs=1e-6)
    assert out["objective/scores"] == 0.5 and out["time/step"] == 2.0 and out["time/tokens_per_s"] == 20.0
    assert out["memory/peak_bytes"] == 200 and out["step"] == 3 and out["memory/kind"] == "peak_rss"
    assert dp.gather(torch.tensor([float(rank)])).tolist() == [0.0, 1.0]
    assert dp.mean(float(rank)) == 0.5
    # replicas: rank 0's weights broadcast, digests gathered
    p = torch.nn.Parameter(torch.full((3,), float(rank)))
    dp.sync_parameters([p])
    assert p.tolist() == [0.0, 0.0, 0.0]
    assert dp.parameter_digests([p]) == [parameter_digest([p])] * 2

    def fails():
        raise ValueError("run folder taken")

    try:
        dp.run_on_main(fails)
    except ValueError as e:  # rank 0's error, raised on every rank
        assert str(e) == "run folder taken"
    else:
        raise AssertionError("run_on_main swallowed the error")
    assert dp.run_on_main(lambda: "ok") == "ok"


class _NoShardingAccelerator:
    """Stands in for accelerate's FSDP2 `Accelerator` on CPU: prepares nothing, clips like torch."""

    is_fsdp2 = True

    def prepare(self, model, optimizer):
        return model, optimizer

    def clip_grad_norm_(self, params, max_norm):
        return torch.nn.utils.clip_grad_norm_(params, max_norm)


def _check_fsdp_checkpoint(environ: dict, run_dir: str) -> None:
    from pathlib import Path

    from safetensors.torch import load_file

    from harness import presets
    from trainers.build import build_models

    cfg = TrainConfig(**{**presets.preset("smoke"), "lora": False, "reference": "copy"})
    dp = DataParallel(cfg, environ=environ)  # the process group exists: it is reused
    torch.manual_seed(cfg.seed)
    models = build_models(cfg, torch.device("cpu"), torch.float32)
    optimizer = torch.optim.AdamW(models.trainable_parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1.0)
    routed, optimizer = dp.prepare_fsdp(models, optimizer, accelerator=_NoShardingAccelerator())
    ids = torch.tensor([[1, 40, 41, 42, 43]])
    amask, pos = torch.ones_like(ids), torch.arange(5)[None]
    # calls through the routes are the modules' own
    logits = routed.policy(input_ids=ids, attention_mask=amask, position_ids=pos).logits
    assert torch.equal(logits, models.policy(input_ids=ids, attention_mask=amask, position_ids=pos).logits)
    values = routed.value.values(ids, amask, pos, start=1, length=4)
    assert torch.equal(values, models.value.values(ids, amask, pos, start=1, length=4))
    (logits.mean() + values.sum()).backward()
    dp.clip_grad_norm(list(dp.roles.parameters()), 1.0)
    optimizer.step()
    scheduler.step()
    saved = {n: p.detach().clone() for n, p in dp.roles.named_parameters()}
    exp_avg = [optimizer.state[p]["exp_avg"].clone() for p in dp.roles.parameters()]
    dp.save_fsdp(Path(run_dir), 1, models, scheduler, torch.Generator(), {"kl_coef": 0.02})
    folder = RunFolder(Path(run_dir)).latest_checkpoint()
    # the single-process layout: the policy's safetensors, the value's trainable tensors
    policy = load_file(folder / "policy" / "model.safetensors")
    in_file = {n: p for n, p in saved.items() if n.removeprefix("policy.") in policy}
    assert len(in_file) == len(policy) and all(torch.equal(policy[n.removeprefix("policy.")], p)
                                               for n, p in in_file.items())
    value = load_file(folder / "value.safetensors")
    assert set(value) == {n.removeprefix("value.") for n in saved if n.startswith("value.")}
    with torch.no_grad():  # forget, then resume
        for p in dp.roles.parameters():
            p.add_(1.0)
    for state in optimizer.state.values():
        state["exp_avg"].zero_()
    assert dp.load_fsdp(folder, scheduler)["step"] == 1
    for n, p in dp.roles.named_parameters():
        assert torch.equal(p, saved[n]), n
    assert all(torch.equal(optimizer.state[p]["exp_avg"], e) for p, e in zip(dp.roles.parameters(), exp_avg))
