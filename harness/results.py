"""The results store: one JSON record per (run, checkpoint, evaluator), written atomically, validated on read.

Layout under a results root (default `results/`):

    results/records/<record_id>.json      one evaluation of one checkpoint (or one paper number)
    results/runs/<run_id>/manifest.json   a run's resolved config, library versions, git commit, host, timings

Record schema, version `SCHEMA` (every field present; `null` where it does not apply):

    schema        "harness.record/1"
    record_id     sha256 prefix of (source, run_id, step, evaluator, judge, eval_set hash): found from its content
    source        "harness" (measured here) | "paper" (a number read from the paper, ../shared/PAPER.md)
    preset        "smoke" | "tiny" | "paper" | a user preset name
    run_id        the run's stable id (hash of its resolved config), or a baseline name ("sft")
    label         {"regularizer": ..., "lora": bool|None, "seed": int|None, "baseline": "sft"|"full"|None}
    step          PPO step of the checkpoint (0 = the SFT policy)
    evaluator     "winrate" | "factuality" | "efficiency"
    judge         {"name", "model", "version"} of the judge / verifier (null for efficiency)
    eval_set      {"name", "hash", "n"} (null for efficiency)
    metrics       flat {name: number}: win_rate, standard_error, n, true_kl, ... / factscore, answered, facts
    per_item      list of {"id", "preference"} (win rate) or {"id", "score", "facts"} (factuality), for paired stats
    details       free-form (generation settings, checkpoint path, lengths, wall time)
    created       ISO time
    harness       {"version", "git_commit"}
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from trainers.runlog import atomic_write_text

SCHEMA = "harness.record/1"
SOURCES = ("harness", "paper")
EVALUATORS = ("winrate", "factuality", "efficiency")
REQUIRED = ("schema", "record_id", "source", "preset", "run_id", "label", "step", "evaluator", "judge",
            "eval_set", "metrics", "per_item", "details", "created", "harness")
LABEL_KEYS = ("regularizer", "lora", "seed", "baseline")


class RecordError(ValueError):
    """A record that does not follow the schema (names the file and the field)."""


def git_commit(cwd: str | Path | None = None) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd or Path(__file__).parent, capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


@functools.lru_cache(maxsize=1)
def _identity() -> tuple[str | None, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("harness-lora-rlhf")
    except PackageNotFoundError:
        v = None
    return v, git_commit()


def harness_identity() -> dict[str, str | None]:
    """Package version and git commit of this process's code (looked up once per process)."""
    v, commit = _identity()
    return {"version": v, "git_commit": commit}


def record_id(source: str, run_id: str, step: int, evaluator: str, judge: dict | None, eval_set: dict | None) -> str:
    key = json.dumps([source, run_id, int(step), evaluator, (judge or {}).get("name"), (judge or {}).get("model"),
                      (eval_set or {}).get("hash")], sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def make_record(*, source: str = "harness", preset: str, run_id: str, label: dict, step: int, evaluator: str,
                metrics: dict[str, float], judge: dict | None = None, eval_set: dict | None = None,
                per_item: list[dict] | None = None, details: dict | None = None,
                created: str | None = None) -> dict[str, Any]:
    rec = {
        "schema": SCHEMA,
        "record_id": record_id(source, run_id, step, evaluator, judge, eval_set),
        "source": source,
        "preset": preset,
        "run_id": run_id,
        "label": {k: label.get(k) for k in LABEL_KEYS},
        "step": int(step),
        "evaluator": evaluator,
        "judge": judge,
        "eval_set": eval_set,
        "metrics": dict(metrics),
        "per_item": list(per_item or []),
        "details": dict(details or {}),
        "created": created or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "harness": harness_identity() if source == "harness" else {"version": None, "git_commit": None},
    }
    validate(rec)
    return rec


def validate(rec: dict, where: str = "record") -> dict:
    missing = [k for k in REQUIRED if k not in rec]
    if missing:
        raise RecordError(f"{where}: missing field(s) {missing}; a record has {list(REQUIRED)}")
    if rec["schema"] != SCHEMA:
        raise RecordError(f"{where}: schema={rec['schema']!r} is not supported; expected {SCHEMA!r}")
    if rec["source"] not in SOURCES:
        raise RecordError(f"{where}: source={rec['source']!r}; allowed: {', '.join(SOURCES)}")
    if rec["evaluator"] not in EVALUATORS:
        raise RecordError(f"{where}: evaluator={rec['evaluator']!r}; allowed: {', '.join(EVALUATORS)}")
    if not isinstance(rec["step"], int) or rec["step"] < 0:
        raise RecordError(f"{where}: step={rec['step']!r} must be an integer >= 0")
    if not isinstance(rec["metrics"], dict) or not all(isinstance(v, (int, float)) or v is None
                                                        for v in rec["metrics"].values()):
        raise RecordError(f"{where}: metrics must map names to numbers; got {rec['metrics']!r:.200}")
    if not isinstance(rec["label"], dict) or set(rec["label"]) != set(LABEL_KEYS):
        raise RecordError(f"{where}: label must have exactly the keys {LABEL_KEYS}; got {rec['label']!r}")
    return rec


class ResultsStore:
    """Records and run manifests under one root; every write atomic, every read validated."""

    def __init__(self, root: str | Path = "results") -> None:
        self.root = Path(root)

    def record_path(self, rid: str) -> Path:
        return self.root / "records" / f"{rid}.json"

    def put(self, rec: dict) -> Path:
        validate(rec)
        path = self.record_path(rec["record_id"])
        atomic_write_text(path, json.dumps(rec, indent=1, sort_keys=True) + "\n")
        return path

    def get(self, rid: str) -> dict | None:
        path = self.record_path(rid)
        return self._read(path) if path.exists() else None

    def has(self, rid: str) -> bool:
        return self.record_path(rid).exists()

    def _read(self, path: Path) -> dict:
        try:
            rec = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise RecordError(f"{path}: not valid JSON ({exc})") from None
        return validate(rec, str(path))

    def records(self) -> Iterable[dict]:
        folder = self.root / "records"
        for path in sorted(folder.glob("*.json")) if folder.exists() else ():
            yield self._read(path)

    def put_manifest(self, run_id: str, manifest: dict) -> Path:
        path = self.root / "runs" / run_id / "manifest.json"
        atomic_write_text(path, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        return path

    def manifest(self, run_id: str) -> dict | None:
        path = self.root / "runs" / run_id / "manifest.json"
        return json.loads(path.read_text()) if path.exists() else None

    def manifests(self) -> dict[str, dict]:
        folder = self.root / "runs"
        if not folder.exists():
            return {}
        return {p.parent.name: json.loads(p.read_text()) for p in sorted(folder.glob("*/manifest.json"))}

    def dataframe(self, *, preset: str | None = None, evaluator: str | None = None, source: str | None = None):
        """One row per record: the top-level fields, `label.*` flattened, and `metrics.*` as columns."""
        import pandas as pd

        rows = []
        for rec in self.records():
            if (preset and rec["preset"] != preset) or (evaluator and rec["evaluator"] != evaluator) \
                    or (source and rec["source"] != source):
                continue
            row = {k: rec[k] for k in ("record_id", "source", "preset", "run_id", "step", "evaluator")}
            row.update(rec["label"])
            row["judge"] = (rec["judge"] or {}).get("name")
            row["eval_set"] = (rec["eval_set"] or {}).get("name")
            row.update(rec["metrics"])
            rows.append(row)
        columns = ["record_id", "source", "preset", "run_id", "step", "evaluator", *LABEL_KEYS, "judge", "eval_set"]
        return pd.DataFrame(rows, columns=None if rows else columns)
