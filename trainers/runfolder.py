"""Who may write a run folder, and whether its checkpoint belongs to the run about to continue it.

- `RunLock`: an advisory `flock` on `RUN/.lock`, taken without waiting, so that a second `harness train` on the
  same folder fails at once instead of appending every step a second time. The kernel drops it when the process
  dies, so a killed run never blocks its resumption; the holder's pid and host, written into the file while it
  holds the lock and cleared on release, tell a killed run (`lock_state` "stale") from one that stopped.
- `check_out`: the `--out` text names a folder we can create and write (checked before any model loads).
- `resume_hash` / `check_resume`: a checkpoint's state.json against the configuration and the metrics log.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import socket
from pathlib import Path

from trainers.errors import UserError
from trainers.io import check_output_folder, read_json_object  # noqa: F401  (re-exported)

LOCK = ".lock"


class RunLock:
    """An exclusive, non-blocking advisory lock on a run folder; `release` is safe to call when not held."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self._fd: int | None = None

    def acquire(self) -> None:
        if self._fd is not None:
            return
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise UserError(f"run folder {self.run_dir}: cannot be created or written ({e.strerror or e})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise UserError(f"run folder {self.run_dir} is in use by another process (lock {self.run_dir / LOCK}); "
                                "wait for it to finish or use another --out") from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def lock_state(run_dir: str | Path) -> str:
    """"held" (a live process has the folder), "stale" (its holder died without releasing it: killed), or "free"."""
    path = Path(run_dir) / LOCK
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return "free"
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return "held"
            raise
        fcntl.flock(fd, fcntl.LOCK_UN)
        return "stale" if os.fstat(fd).st_size else "free"
    finally:
        os.close(fd)


def check_out(text: str) -> Path:
    """The run folder `--out` names, refused if empty, the current folder, a file, unwritable or in use."""
    path = check_output_folder(text)
    with RunLock(path):  # creates it, proves it writable and not in use
        pass
    if not os.access(path, os.W_OK):
        raise UserError(f"--out {text!r} is not writable")
    return path


def read_run_facts(path: Path) -> dict:
    """A run's `run.json` (what the trainer measured of the run: parameter counts, device, processes), checked
    field by field."""
    facts = read_json_object(path)
    counts = facts.get("parameters")
    keys = ("trainable", "total", "policy_trainable", "policy_total")
    if not isinstance(counts, dict) or not all(
            isinstance(counts.get(k), int) and not isinstance(counts.get(k), bool) and counts[k] >= 0 for k in keys):
        raise UserError(f"{path}: parameters={counts!r:.120} must hold the integers >= 0 {', '.join(keys)}")
    if counts["policy_total"] < 1 or counts["policy_trainable"] > counts["policy_total"]:
        raise UserError(f"{path}: parameters.policy_trainable={counts['policy_trainable']} and policy_total="
                        f"{counts['policy_total']} must satisfy 0 <= trainable <= total, total >= 1")
    world = facts.get("world_size", 1)
    if isinstance(world, bool) or not isinstance(world, int) or not 1 <= world <= 100_000:
        raise UserError(f"{path}: world_size={world!r:.40} must be an integer in [1, 100000]")
    for key in ("device", "frozen_dtype", "run_id"):
        if facts.get(key) is not None and not isinstance(facts[key], str):
            raise UserError(f"{path}: {key}={facts[key]!r:.60} must be a string")
    return facts


def resume_hash(values: dict, resumable: set[str] | frozenset[str]) -> str:
    """Hash of the settings a resumed run must share with its checkpoint (the config minus `resumable`)."""
    kept = {k: v for k, v in values.items() if k not in resumable}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:12]


def check_resume(folder: Path, state: dict, expected_hash: str, steps_logged: list[int], metrics: Path) -> None:
    """The checkpoint must have been written by this configuration, and the metrics log must hold its steps."""
    where = folder / "state.json"
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

