"""Checkpoints: `checkpoints/step-NNNNNN/`, written to a temporary folder and renamed when complete.

Contents: `policy/` (the policy's PEFT adapter, loadable with `PeftModel.from_pretrained`; the whole model in full
fine-tune mode), `value.safetensors` (the value model's trainable tensors: head, and adapters or backbone; with
reference='one_base', its adapter "value" of the policy's model), `optimizer.pt`, `scheduler.pt`, `rng.pt` (torch,
CUDA and the sampling generator) and `state.json` (step, KL coefficient, config hash, the sha256 of every other
file, and `state_sha256`, the sha256 of all its other fields, so that an edited field is refused), written last.
Optimizer states of older checkpoints are dropped once a newer one is complete: they are only needed to resume,
which uses the latest. Every file is group-readable, like the rest of a run folder.

Loading never unpickles code: `.pt` files are read with `weights_only=True` (tensors and plain containers only),
and `verify` checks the files against the manifest before anything is loaded.
"""

from __future__ import annotations

import hashlib
import json
import math
import pickle
import re
import shutil
import tempfile
from pathlib import Path

import torch
from peft import PeftModel, set_peft_model_state_dict
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from trainers.checkpoint_paths import STATE, checkpoint_dir, latest_checkpoint, list_checkpoints  # noqa: F401
from trainers.errors import UserError
from trainers.io import atomic_write_text, make_readable, make_tree_readable, parse_json

MANIFEST = "files"  # state.json's key: {relative path: sha256} of every other file of the checkpoint
DROPPED = "optimizer.pt"  # the one listed file an older checkpoint may lack: only resuming needs it
SEAL = "state_sha256"  # state.json's key: sha256 of its other fields (the manifest included)
MAX_STEP = 10**9
SHA256 = re.compile(r"[0-9a-f]{64}")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_manifest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): sha256_of(p)
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != STATE}


def state_digest(state: dict) -> str:
    """sha256 of a state's fields other than the seal, in canonical JSON."""
    fields = {k: v for k, v in state.items() if k != SEAL}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def seal_state(state: dict) -> dict:
    """`state` with its seal: what `save` writes, and what `read_state` checks."""
    return {**{k: v for k, v in state.items() if k != SEAL}, SEAL: state_digest(state)}


def _state_problems(state: dict) -> list[str]:
    """Every field of a state.json that has the wrong type or range, each named with its value."""
    found = []
    step = state.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= MAX_STEP:
        found.append(f"step={step!r} must be an integer in [0, {MAX_STEP}]")
    kl = state.get("kl_coef")
    if isinstance(kl, bool) or not isinstance(kl, (int, float)) or not math.isfinite(kl) or kl < 0:
        found.append(f"kl_coef={kl!r} must be a finite number >= 0")
    for key in ("run_id", "resume_hash"):
        if key in state and not (isinstance(state[key], str) and state[key]):
            found.append(f"{key}={state[key]!r} must be a non-empty string")
    files = state.get(MANIFEST)
    if files is not None and not (isinstance(files, dict) and all(
            isinstance(k, str) and isinstance(v, str) and SHA256.fullmatch(v) for k, v in files.items())):
        found.append(f"'{MANIFEST}' must map file names to sha256 digests (64 hex digits)")
    return found


def read_state(folder: Path) -> dict:
    """state.json, checked field by field and against its seal; a UserError naming the file and field otherwise."""
    path = folder / STATE
    try:
        state = parse_json(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"{path} cannot be read ({e}); the checkpoint is damaged") from None
    if not isinstance(state, dict):
        raise UserError(f"{path} must be a JSON object, not {type(state).__name__}; the checkpoint is damaged")
    problems = _state_problems(state)
    if problems:
        raise UserError(f"{path}: " + "; ".join(problems) + "; the checkpoint is damaged or was edited")
    if SEAL in state and state[SEAL] != state_digest(state):
        raise UserError(f"{path} does not match its '{SEAL}': a field was edited after the checkpoint was written; "
                        "restore the file or resume from another checkpoint")
    return state


def content_digest(state: dict) -> str:
    """A checkpoint's identity by content: the sha256 of its (verified) state, which lists every file's sha256."""
    return state[SEAL][:16]


def verify(folder: Path) -> dict:
    """state.json, after checking its fields, its step against the folder's name and every file against its
    sha256."""
    state = read_state(folder)
    if folder.name != f"step-{state['step']:06d}":
        raise UserError(f"{folder / STATE} says step {state['step']} but the folder is {folder.name}; "
                        "the checkpoint was edited or moved")
    manifest = state.get(MANIFEST)
    if manifest is None or SEAL not in state:
        missing = f"file manifest ('{MANIFEST}')" if manifest is None else f"seal ('{SEAL}')"
        raise UserError(f"{folder / STATE} has no {missing}: the checkpoint cannot be checked; "
                        "use a checkpoint written by this version, or start a new run")
    for name, digest in manifest.items():
        path = folder / name
        if ".." in Path(name).parts or Path(name).is_absolute():
            raise UserError(f"{folder / STATE} lists {name!r}, outside the checkpoint")
        if not path.is_file():
            if name == DROPPED:  # removed on purpose once a newer checkpoint is complete (`save`)
                continue
            raise UserError(f"{path} is missing from the checkpoint")
        if sha256_of(path) != digest:
            raise UserError(f"{path} does not match the sha256 recorded in {folder / STATE}: the file was changed "
                            "or damaged after the checkpoint was written")
    return state


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
    final = checkpoint_dir(run_dir, step)
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
        state = seal_state({"step": step, **extra, MANIFEST: file_manifest(tmp)})
        atomic_write_text(tmp / STATE, json.dumps(state, indent=2))
        make_readable(tmp)
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
