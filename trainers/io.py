"""Torch-free file I/O shared by run folders, checkpoints and the results store: atomic writes, JSON objects, and
paths as committed results store them."""

from __future__ import annotations

import functools
import json
import os
import tempfile
from pathlib import Path

from trainers.errors import UserError

REPOSITORY = Path(__file__).resolve().parents[1]


@functools.cache
def _umask() -> int:
    mask = os.umask(0)  # reading the mask means setting it: put it straight back
    os.umask(mask)
    return mask


def make_readable(path: str | Path) -> None:
    """Give a file or folder made by `tempfile` (0600 / 0700) the mode a plain open would: 0644 / 0755 under the
    usual umask, so that the group can read run folders and records."""
    path = Path(path)
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~_umask())


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        make_readable(tmp)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json_object(path: Path) -> dict:
    """A JSON object from a run folder's file, or a clear error naming it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path} cannot be read as JSON ({e})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a JSON object, not {type(data).__name__}")
    return data


def repository_path(path: str | Path) -> str:
    """An absolute path inside the repository as a path relative to it, so that committed results name no machine's
    folders; any other path (a relative one, a dataset id, a file elsewhere) as given."""
    if not Path(path).is_absolute():
        return str(path)
    try:
        return Path(path).resolve().relative_to(REPOSITORY).as_posix()
    except ValueError:
        return str(path)
