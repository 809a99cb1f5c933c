"""Whether a run folder's checkpoint belongs to the run about to continue it, and what its log says when it has none.

- `resume_hash`: the hash of the settings a resumed run must share with its checkpoint;
- `check_resume`: a checkpoint's state.json against the configuration, and the metrics log against its step;
- `check_no_checkpoint`: a run with no checkpoint restarts from step 0, unless its log shows checkpoints were lost.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from trainers.errors import UserError
from trainers.runfolder.names import STATE


def resume_hash(values: dict, resumable: set[str] | frozenset[str]) -> str:
    """Hash of the settings a resumed run must share with its checkpoint (the config minus `resumable`)."""
    kept = {k: v for k, v in values.items() if k not in resumable}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:12]


def check_resume(folder: Path, state: dict, expected_hash: str, steps_logged: list[int], metrics: Path) -> None:
    """The checkpoint must have been written by this configuration, and the metrics log must hold its steps."""
    where = folder / STATE
    saved = state.get("resume_hash")
    if saved is None:
        raise UserError(f"{where} has no 'resume_hash': it cannot be matched to this configuration; "
                        "resume from a checkpoint written by this version, or start a new run")
    if saved != expected_hash:
        raise UserError(f"{where} was written by another configuration (resume hash {saved}, this run's "
                        f"{expected_hash}); use the original settings or another --out")
    step = state["step"]
    covered = [s for s in steps_logged if s <= step]
    if covered != list(range(1, step + 1)):
        raise UserError(f"{metrics} does not hold steps 1..{step} exactly once (found {len(covered)} rows up to step "
                        f"{step}); the checkpoint {folder.name} and the log disagree, so resuming would lose or "
                        "repeat steps")


def check_no_checkpoint(run_dir: Path, steps_logged: list[int], checkpoint_every: int) -> str:
    """With --resume and no checkpoint: the line to print, or an error if the log shows checkpoints were lost.

    A run killed before its first checkpoint has logged at most `checkpoint_every` steps (a step is logged just
    before its checkpoint is written): it restarts from step 0. More logged steps mean a checkpoint was deleted."""
    if not steps_logged:
        return f"no checkpoint in {run_dir}; starting fresh"
    if max(steps_logged) > checkpoint_every:
        raise UserError(f"{run_dir} has {len(steps_logged)} logged steps (up to {max(steps_logged)}) but no "
                        f"checkpoint, though one is written every {checkpoint_every} steps; the checkpoints were "
                        "removed, so it cannot be resumed: use another --out")
    return (f"no checkpoint in {run_dir}; starting from step 0 (the {len(steps_logged)} logged step(s) before the "
            "first checkpoint are redone)")
