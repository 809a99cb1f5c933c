"""Torch-free file I/O shared by run folders, checkpoints, the results store and the report: atomic writes of one
file or of a folder of files, output folders checked before work starts, JSON objects, and paths as committed
results store them."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
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


def make_tree_readable(folder: str | Path) -> None:
    """`make_readable` on a folder and everything under it (safetensors writes its files 0600)."""
    folder = Path(folder)
    for path in [folder, *folder.rglob("*")]:
        make_readable(path)


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
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and not e.filename:  # a full disk names no file: say which one was being written
            raise UserError(f"{path}: cannot be written ({e.strerror or e}); the file was left as it was") from None
        raise


def check_output_folder(text: str, option: str = "--out") -> Path:
    """The folder an `--out`-like option names, refused with one line when it is empty, the current folder (or one
    above it: outputs would land among unrelated files), or an existing file."""
    if not text.strip():
        raise UserError(f"{option} is empty; give the folder to write (e.g. {option} runs/smoke)")
    path = Path(text).expanduser()
    here = Path.cwd().resolve()
    if path.resolve() == here or path.resolve() in here.parents:
        raise UserError(f"{option} {text!r} is the current folder or one above it; give a folder of its own "
                        f"(e.g. {option} {Path(text) / 'out'})")
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {text!r} is a file; give a folder")
    return path


def replace_folder(new: Path, dest: Path) -> None:
    """Put the complete folder `new` at `dest` (same filesystem), replacing any folder there: rename cannot replace
    a folder, so the old one is parked beside, the new one renamed in, then the old one deleted. Its files get the
    mode a plain write would give them."""
    make_tree_readable(new)
    if not dest.exists():
        new.rename(dest)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
    old.rmdir()
    dest.rename(old)
    new.rename(dest)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged_folder(dest: str | Path) -> Iterator[Path]:
    """A temporary folder beside `dest` to write a set of files into; when the block ends without error, each file
    replaces its namesake under `dest` (files of `dest` that the set lacks stay). So `dest` shows the old set or
    the new one whole, never a half-written file; on any error nothing under `dest` changed, and a failed write
    names the path it was writing (as under `dest`)."""
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    except OSError as e:
        raise UserError(f"{dest}: cannot be written ({e.strerror or e})") from None
    try:
        yield tmp
        _publish(tmp, dest)
    except OSError as e:
        shown = str(e.filename).replace(str(tmp), str(dest)) if e.filename else str(dest)
        raise UserError(f"{shown}: cannot be written ({e.strerror or e}); nothing in {dest} was changed") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _publish(tmp: Path, dest: Path) -> None:
    make_tree_readable(tmp)
    if not dest.exists():
        tmp.rename(dest)
        return
    if not dest.is_dir():
        raise UserError(f"{dest} is a file; give a folder")
    for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
        target = dest / path.relative_to(tmp)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def _unique_pairs(pairs: list[tuple]) -> dict:
    keys = [k for k, _ in pairs]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise ValueError(f"duplicate key(s) {repeated[:5]}: each key may appear once")
    return dict(pairs)


def parse_json(text: str) -> object:
    """JSON as the run folders and settings files allow it: NaN, Infinity and duplicate keys refused (ValueError)."""
    return json.loads(text, parse_constant=_refuse_constant, object_pairs_hook=_unique_pairs)


def parse_yaml(text: str) -> object:
    """YAML through the safe loader (no tags that build objects), duplicate keys refused (yaml.YAMLError)."""
    import yaml

    return yaml.load(text, Loader=_unique_key_loader())


@functools.cache
def _unique_key_loader():
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        """yaml.SafeLoader that refuses a mapping naming one key twice (SafeLoader keeps the last silently)."""

    def mapping(loader, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = loader.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: SafeLoader says so itself
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}: each key may appear once",
                                                        key_node.start_mark)
        return loader.construct_mapping(node, deep)

    UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return UniqueKeyLoader


def read_utf8(path: Path, where: str, missing_hint: str = "", error: type[Exception] = UserError) -> str:
    """The text of the UTF-8 file at `path`; a missing or unreadable file is `error` naming `where` (`missing_hint`:
    what the file should have been)."""
    if not path.is_file():
        raise error(f"{where}: no such file" + (f"; {missing_hint}" if missing_hint else ""))
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{where} cannot be read as UTF-8 text ({exc})") from None


def read_json_file(path: Path, where: str, missing_hint: str, error: type[Exception] = UserError) -> object:
    """`parse_json_file_text` of the UTF-8 file at `path` (`read_utf8`'s refusals)."""
    return parse_json_file_text(read_utf8(path, where, missing_hint, error), path.suffix, where)


def parse_json_file_text(text: str, suffix: str, where: str) -> object:
    """A JSON document, or for a `.jsonl` suffix the list of its lines' documents (blank lines skipped); a
    UserError naming `where` and the line (of the file, not of the document) otherwise."""
    if suffix != ".jsonl":
        try:
            return parse_json(text)
        except ValueError as e:
            raise UserError(f"{where} is not valid JSON ({e})") from None
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(parse_json(line))
            except ValueError as e:
                raise UserError(f"{where}, line {number}: not valid JSON ({e})") from None
    return rows


def read_json_object(path: Path) -> dict:
    """A JSON object from a run folder's file, or a clear error naming it."""
    try:
        data = parse_json(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
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
