"""A run's one identity: `<regularizer>-<lora|full>-s<seed>-<digest>`, derived from its resolved configuration.

The digest covers every field of `TrainConfig`, what a run computes (where and how fast it computes it is
`trainers.execution.ExecutionConfig`, which the id never sees; a setting added later is left out at the value that
computes what runs did before it existed: `LATER_SETTINGS`), with each file input named by its content instead of
its path:
- `prompts`: a local file by the sha256 of its bytes; a dataset id as written;
- `policy`, `reward`: a builtin model by its name, a directory (a prepared reward model included) by the sha256 of
  its files' names and contents; a Hub id as written. A prepared reward model that is not there yet is named
  `absent:<spec>`: the id of a run whose reward model is still to be prepared changes once it is (`is_provisional`
  says so), and so does the id of a run whose local model directory appears later.
The same experiment therefore has the same id on every machine, in every folder, and a retrained reward model or an
edited prompt file gives new ids. Directory digests are cached by (path, size, mtime) under $HARNESS_CACHE.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from trainers.config import TrainConfig
from trainers.specs import BUILTINS, PREPARED, cache_dir, resolve_reward_spec

ABSENT = "absent:"
_CHUNK = 1 << 20
# Settings added after runs were recorded, at the value that computes exactly what those runs computed: left out of
# the digest at that value, so that earlier runs keep their ids (tests/test_committed_ids.py checks the tiny grid).
LATER_SETTINGS = {"value_model": "separate"}


def run_id(cfg: TrainConfig) -> str:
    """The id of the run `cfg` describes (module docstring)."""
    return f"{cfg.regularizer}-{'lora' if cfg.lora else 'full'}-s{cfg.seed}-{run_digest(cfg)}"


def run_digest(cfg: TrainConfig) -> str:
    values = without_later_defaults(cfg.to_dict())
    values["prompts"] = file_fingerprint(cfg.prompts)
    values["policy"] = model_fingerprint(cfg.policy)
    if not cfg.reward_is_rule:
        values["reward"] = model_fingerprint(cfg.reward)
    blob = json.dumps(values, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def without_later_defaults(values: dict) -> dict:
    """`values` without the settings of `LATER_SETTINGS` that hold the value runs computed before they existed."""
    return {k: v for k, v in values.items() if not (k in LATER_SETTINGS and v == LATER_SETTINGS[k])}


def is_provisional(cfg: TrainConfig) -> bool:
    """True when an input named by content does not exist yet (its id will change once it does)."""
    return (not cfg.reward_is_rule and model_fingerprint(cfg.reward).startswith(ABSENT)) \
        or model_fingerprint(cfg.policy).startswith(ABSENT)


def file_fingerprint(spec: str) -> str:
    path = Path(spec).expanduser()
    return f"sha256:{_file_sha256(path)[:16]}" if path.is_file() else spec


def model_fingerprint(spec: str) -> str:
    """A builtin's name, a directory's content digest, or the spec itself (a Hub id, a `head:` reward)."""
    if spec in BUILTINS or spec.startswith("head:"):
        return spec
    path = Path(resolve_reward_spec(spec)).expanduser()
    if path.is_dir():
        return f"sha256:{directory_sha256(path)[:16]}"
    return ABSENT + spec if spec.startswith(PREPARED) else spec


def directory_sha256(path: Path) -> str:
    """sha256 over the sorted relative names and contents of every file under `path` (cached by size and mtime)."""
    files = sorted(p for p in path.rglob("*") if p.is_file())
    stamp = [[str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]  # JSON-comparable
    cache_path = cache_dir() / "fingerprints.json"
    cache = _read_cache(cache_path)
    key = str(path.resolve())
    if cache.get(key, {}).get("stamp") == stamp:
        return cache[key]["sha256"]
    digest = hashlib.sha256()
    for p in files:
        digest.update(str(p.relative_to(path)).encode() + b"\0" + _file_sha256(p).encode())
    cache[key] = {"stamp": stamp, "sha256": digest.hexdigest()}
    _write_cache(cache_path, cache)
    return cache[key]["sha256"]


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(path: Path, cache: dict) -> None:
    # a lost or raced cache only costs a rehash; write through a temporary file so a reader never sees half of it
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{id(cache)}.tmp")
        tmp.write_text(json.dumps(cache))
        tmp.replace(path)
    except OSError:
        pass
