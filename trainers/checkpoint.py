"""Checkpoints: `checkpoints/step-NNNNNN/`, written to a temporary folder and renamed when complete.

Contents: `policy/` (PEFT adapter, loadable with `PeftModel.from_pretrained`; the whole model in full
fine-tune mode), `value.safetensors` (the value model's trainable tensors: head, and adapters or
backbone), `optimizer.pt`, `scheduler.pt`, `rng.pt` (torch, CUDA and the sampling generator) and
`state.json` (step, KL coefficient, config hash), written last. Optimizer states of older checkpoints are
dropped once a newer one is complete: they are only needed to resume, which uses the latest.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch
from peft import PeftModel, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

from trainers.runlog import atomic_write_text

STATE = "state.json"


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step-{step:06d}"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step-*") if (p / STATE).is_file())


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def _trainable_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous().cpu() for n, p in module.named_parameters() if p.requires_grad}


def save(run_dir: Path, step: int, models, optimizer, scheduler, generator: torch.Generator, extra: dict) -> Path:
    final = checkpoint_dir(run_dir, step)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        models.policy.save_pretrained(tmp / "policy")
        models.tokenizer.save_pretrained(tmp / "policy")
        save_file(_trainable_state(models.value), tmp / "value.safetensors")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        rng = {"torch": torch.get_rng_state(), "sampling": generator.get_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(rng, tmp / "rng.pt")
        atomic_write_text(tmp / STATE, json.dumps({"step": step, **extra}, indent=2))
        if final.exists():  # a stale copy from a run that crashed after renaming: replace it
            shutil.rmtree(final)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for older in list_checkpoints(run_dir)[:-1]:
        (older / "optimizer.pt").unlink(missing_ok=True)
    return final


def _load_policy(policy: torch.nn.Module, folder: Path) -> None:
    if isinstance(policy, PeftModel):
        weights = folder / "adapter_model.safetensors"
        result = set_peft_model_state_dict(policy, load_file(weights))
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise ValueError(f"{weights} has tensors the policy lacks: {unexpected[:5]}")
        return
    index = folder / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else ["model.safetensors"]
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(load_file(folder / name))
    missing, unexpected = policy.load_state_dict(state, strict=False)
    tied = {k for k in missing if "lm_head" in k and policy.config.tie_word_embeddings}
    if set(missing) - tied or unexpected:
        raise ValueError(f"{folder}: missing {sorted(set(missing) - tied)[:5]}, unexpected {unexpected[:5]}")


def load(folder: Path, models, optimizer, scheduler, generator: torch.Generator) -> dict:
    """Restore a checkpoint into freshly built models and optimizer; returns its state.json."""
    _load_policy(models.policy, folder / "policy")
    value_state = load_file(folder / "value.safetensors")
    expected = set(_trainable_state(models.value))
    if set(value_state) != expected:
        raise ValueError(f"{folder / 'value.safetensors'} does not match the value model: "
                         f"missing {sorted(expected - set(value_state))[:5]}, extra {sorted(set(value_state) - expected)[:5]}")
    models.value.load_state_dict(value_state, strict=False)
    optimizer_file = folder / "optimizer.pt"
    if not optimizer_file.is_file():
        raise FileNotFoundError(f"{optimizer_file} is missing: only the latest checkpoint keeps optimizer state")
    optimizer.load_state_dict(torch.load(optimizer_file, weights_only=False))
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=False))
    rng = torch.load(folder / "rng.pt", weights_only=False)
    torch.set_rng_state(rng["torch"])
    generator.set_state(rng["sampling"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return json.loads((folder / STATE).read_text())
