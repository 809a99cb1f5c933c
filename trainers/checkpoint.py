"""Checkpoints: `checkpoints/step-NNNNNN/`, written to a temporary folder and renamed when complete.

Contents: `policy/` (the policy's PEFT adapter, loadable with `PeftModel.from_pretrained`; the whole model in full
fine-tune mode), `value.safetensors` (the value model's trainable tensors: head, and adapters or backbone; with
reference='one_base', its adapter "value" of the policy's model), `optimizer.pt`, `scheduler.pt`, `rng.pt` (torch,
CUDA and the sampling generator) and `state.json` (`trainers.runfolder.state`: step, KL coefficient, config hash,
the sha256 of every other file, and a seal over its own fields, so that an edited field is refused), written last.
Optimizer states of older checkpoints are dropped once a newer one is complete: they are only needed to resume,
which uses the latest. Every file is group-readable, like the rest of a run folder.

Loading never unpickles code: `.pt` files are read with `weights_only=True` (tensors and plain containers only),
and `trainers.runfolder.verify` checks the files against the manifest before anything is loaded. Where the
checkpoints of a run are, and which is the latest, is `trainers.runfolder.RunFolder`'s.
"""

from __future__ import annotations

import json
import pickle
import shutil
import tempfile
from pathlib import Path

import torch
from peft import PeftModel, set_peft_model_state_dict
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from trainers.errors import UserError
from trainers.io import make_readable, make_tree_readable
from trainers.runfolder import RunFolder, verify, write_state
from trainers.runfolder.state import DROPPED

def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file, a damaged one reported by name."""
    try:
        return load_file(path)
    except (SafetensorError, OSError) as e:
        raise UserError(f"{path} cannot be read as safetensors ({e})") from None


def load_pt(path: Path):
    """A torch file of tensors and plain containers; anything that would run code while unpickling is refused."""
    if not path.is_file():
        raise UserError(f"{path} is missing")
    try:
        return torch.load(path, weights_only=True)
    except pickle.UnpicklingError as e:
        raise UserError(f"{path} holds objects other than tensors and plain data; refused to load it "
                        f"({str(e).splitlines()[0]})") from None
    except (RuntimeError, OSError, EOFError) as e:
        raise UserError(f"{path} cannot be read ({str(e).splitlines()[0]}); the checkpoint is damaged") from None


def _trainable_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous().cpu() for n, p in module.named_parameters() if p.requires_grad}


def save(run_dir: Path, step: int, models, optimizer, scheduler, generator: torch.Generator, extra: dict) -> Path:
    run = RunFolder(run_dir)
    final = run.checkpoint_dir(step)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        # the policy's adapter only (reference='one_base' keeps the value's, and a reward's, in the same model)
        only_policy = {"selected_adapters": ["default"]} if isinstance(models.policy, PeftModel) else {}
        models.policy.save_pretrained(tmp / "policy", **only_policy)
        models.tokenizer.save_pretrained(tmp / "policy")
        save_file(_trainable_state(models.value), tmp / "value.safetensors")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        rng = {"torch": torch.get_rng_state(), "sampling": generator.get_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(rng, tmp / "rng.pt")
        make_tree_readable(tmp)  # safetensors writes 0600; every file of a run is group-readable
        write_state(tmp, {"step": step, **extra})
        make_readable(tmp)
        if final.exists():  # a stale copy from a run that crashed after renaming: replace it
            shutil.rmtree(final)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for older in run.checkpoints()[:-1]:
        (older / DROPPED).unlink(missing_ok=True)
    return final


def _load_policy(policy: torch.nn.Module, folder: Path) -> None:
    if isinstance(policy, PeftModel):
        weights = folder / "adapter_model.safetensors"
        result = set_peft_model_state_dict(policy, load_tensors(weights))
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise ValueError(f"{weights} has tensors the policy lacks: {unexpected[:5]}")
        return
    index = folder / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else ["model.safetensors"]
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(load_tensors(folder / name))
    missing, unexpected = policy.load_state_dict(state, strict=False)
    tied = {k for k in missing if "lm_head" in k and policy.config.tie_word_embeddings}
    if set(missing) - tied or unexpected:
        raise ValueError(f"{folder}: missing {sorted(set(missing) - tied)[:5]}, unexpected {unexpected[:5]}")


def load(folder: Path, models, optimizer, scheduler, generator: torch.Generator) -> dict:
    """Restore a checkpoint into freshly built models and optimizer; returns its state.json (after `verify`)."""
    state = verify(folder)
    _load_policy(models.policy, folder / "policy")
    value_state = load_tensors(folder / "value.safetensors")
    expected = set(_trainable_state(models.value))
    if set(value_state) != expected:
        raise ValueError(f"{folder / 'value.safetensors'} does not match the value model: "
                         f"missing {sorted(expected - set(value_state))[:5]}, extra {sorted(set(value_state) - expected)[:5]}")
    models.value.load_state_dict(value_state, strict=False)
    optimizer_file = folder / "optimizer.pt"
    if not optimizer_file.is_file():
        raise UserError(f"{optimizer_file} is missing: only the latest checkpoint keeps optimizer state")
    optimizer.load_state_dict(load_pt(optimizer_file))
    scheduler.load_state_dict(load_pt(folder / "scheduler.pt"))
    rng = load_pt(folder / "rng.pt")
    if not isinstance(rng, dict) or not {"torch", "sampling"} <= set(rng):
        raise UserError(f"{folder / 'rng.pt'} lacks the 'torch' and 'sampling' generator states")
    torch.set_rng_state(rng["torch"])
    generator.set_state(rng["sampling"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return state
