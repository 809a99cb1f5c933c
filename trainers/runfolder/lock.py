"""Who may write a run folder.

- `RunLock`: an advisory `flock` on `RUN/.lock`, taken without waiting, so that a second `harness train` on the
  same folder fails at once instead of appending every step a second time. The kernel drops it when the process
  dies, so a killed run never blocks its resumption; the holder's pid and host, written into the file while it
  holds the lock and cleared on release, tell a killed run (`lock_state` "stale") from one that stopped.
- `check_out`: the `--out` text names a folder we can create and write (checked before any model loads).
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from pathlib import Path

from trainers.errors import UserError
from trainers.io import check_output_folder
from trainers.runfolder.names import LOCK


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
