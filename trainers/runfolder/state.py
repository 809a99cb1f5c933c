"""A checkpoint's `state.json`: step, KL coefficient, run id, resume hash, the sha256 of every other file of the
checkpoint (`files`) and `state_sha256`, the sha256 of all its other fields, so that an edited field is refused.

Read without torch (the grid, the runs table and the evaluator's target check ask about checkpoints); the tensors
themselves are `trainers.checkpoint`'s. Every refusal is a UserError naming the file and the field.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

from trainers.errors import UserError
from trainers.io import atomic_write_text, read_json_object
from trainers.runfolder.names import STATE, checkpoint_name

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
    """{relative path: sha256} of every file of a checkpoint folder but its state.json."""
    return {p.relative_to(folder).as_posix(): sha256_of(p)
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != STATE}


def state_digest(state: dict) -> str:
    """sha256 of a state's fields other than the seal, in canonical JSON."""
    fields = {k: v for k, v in state.items() if k != SEAL}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def seal_state(state: dict) -> dict:
    """`state` with its seal: what `write_state` writes, and what `read_state` checks."""
    return {**{k: v for k, v in state.items() if k != SEAL}, SEAL: state_digest(state)}


def write_state(folder: Path, state: dict) -> dict:
    """Seal `state` with the manifest of `folder`'s other files and write it as `folder`'s state.json (the last
    file of a checkpoint); returns what was written."""
    sealed = seal_state({**state, MANIFEST: file_manifest(folder)})
    atomic_write_text(folder / STATE, json.dumps(sealed, indent=2))
    return sealed


def has_state(folder: Path) -> bool:
    """Whether `folder` is a complete checkpoint (its state.json, written last, exists)."""
    return (folder / STATE).is_file()


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
    """state.json, checked field by field and against its seal."""
    path = folder / STATE
    try:
        state = read_json_object(path)
    except UserError as e:
        raise UserError(f"{e}; the checkpoint is damaged") from None
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
    if folder.name != checkpoint_name(state["step"]):
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
            if name == DROPPED:  # removed on purpose once a newer checkpoint is complete (`checkpoint.save`)
                continue
            raise UserError(f"{path} is missing from the checkpoint")
        if sha256_of(path) != digest:
            raise UserError(f"{path} does not match the sha256 recorded in {folder / STATE}: the file was changed "
                            "or damaged after the checkpoint was written")
    return state
