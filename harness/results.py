"""The results store: one JSON record per (run, checkpoint, evaluator), written atomically, validated on read.

Layout under a results root (default `results/`):

    results/records/<record_id>.json      one evaluation of one checkpoint (or one paper number)
    results/runs/<run_id>/manifest.json   a run's resolved config, library versions, git commit, host, timings

Record schema, version `SCHEMA` (every field present; `null` where it does not apply):

    schema        "harness.record/1"
    record_id     sha256 prefix of everything that changes the result: source, run_id, step, evaluator, the judge's
                  name and model, the eval set's hash, and (evaluations run here) the judge's version and
                  `settings`; found from its content, so a differing evaluation never takes another's file
    source        "harness" (measured here) | "paper" (a number read from the paper, ../shared/PAPER.md)
    preset        "smoke" | "tiny" | "paper" | a user preset name (letters, digits, "_", "-", "."; a folder name
                  of the report, so never a path)
    run_id        the run's stable id (hash of its resolved config), or a baseline name ("sft")
    label         {"regularizer": ..., "lora": bool|None, "seed": int|None, "baseline": "sft"|"full"|None}
    step          PPO step of the checkpoint (0 = the SFT policy)
    evaluator     "winrate" | "factuality" | "efficiency" | "proxy_rm" (the proxy reward model against the judge) |
                  "judge_check" (a judge against a reference judge's annotations, `harness judge-check`)
    judge         {"name", "model", "version"} of the judge / verifier (null for efficiency)
    eval_set      {"name", "hash", "n"} (null for efficiency)
    metrics       flat {name: number}: win_rate, standard_error, n, true_kl, ... / factscore, answered, facts
    per_item      list of {"id", "preference"} (win rate) or {"id", "score", "facts"} (factuality), for paired stats;
                  judge_check: {"id", "model", "index", "preference"} per annotated pair (the reference judge's
                  preference is read from the annotation file the record names by hash)
    details       free-form (generation settings, checkpoint path, lengths, wall time)
    created       ISO time
    harness       {"version", "git_commit"}
    settings      (optional) generation settings, order, limit...: the evaluation's inputs beyond judge and set

A record whose id exists already is replaced only when its results are the same, or with `force=True`.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
import math
import re
import subprocess
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from harness.errors import UserError, check_preset_name
from trainers.io import atomic_write_text

SCHEMA = "harness.record/1"
SOURCES = ("harness", "paper")
EVALUATORS = ("winrate", "factuality", "efficiency", "proxy_rm", "judge_check")
REQUIRED = ("schema", "record_id", "source", "preset", "run_id", "label", "step", "evaluator", "judge",
            "eval_set", "metrics", "per_item", "details", "created", "harness")
LABEL_KEYS = ("regularizer", "lora", "seed", "baseline")
BASELINES = (None, "sft", "full")
PERCENT_METRICS = ("win_rate", "lc_win_rate", "factscore", "factscore_no_penalty", "answered", "trainable_pct", "agreement",
                   "agreement_shorter_preferred", "longer_share", "order_consistency", "probe_correct",
                   "unparsed_answers_pct", "gold_agreement", "noisy_agreement", "gold_agreement_cv_mean")
NONNEGATIVE_METRICS = ("standard_error", "lc_standard_error", "n", "true_kl_train", "facts_per_answer", "gpus", "processes",
                       "trainable_params", "total_params", "peak_memory_gib", "seconds_per_step", "tokens_per_s",
                       "steps", "train_pairs", "heldout_pairs", "gold_agreement_cv_sd")


class RecordError(UserError):
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


def record_id(source: str, run_id: str, step: int, evaluator: str, judge: dict | None, eval_set: dict | None,
              settings: dict | None = None) -> str:
    """Records without settings (the paper's numbers, efficiency) keep the ids they always had."""
    parts = [source, run_id, int(step), evaluator, (judge or {}).get("name"), (judge or {}).get("model"),
             (eval_set or {}).get("hash")]
    if settings is not None:
        parts += [(judge or {}).get("version"), settings]
    key = json.dumps(parts, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def make_record(*, source: str = "harness", preset: str, run_id: str, label: dict, step: int, evaluator: str,
                metrics: dict[str, float], judge: dict | None = None, eval_set: dict | None = None,
                per_item: list[dict] | None = None, details: dict | None = None,
                created: str | None = None, settings: dict | None = None) -> dict[str, Any]:
    rec = {
        "schema": SCHEMA,
        "record_id": record_id(source, run_id, step, evaluator, judge, eval_set, settings),
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
    if settings is not None:
        rec["settings"] = json.loads(json.dumps(settings, sort_keys=True))
    validate(rec)
    return rec


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _optional(value: object, kind: type) -> bool:
    if value is None or kind is bool:
        return value is None or isinstance(value, bool)
    return isinstance(value, kind) and not isinstance(value, bool)


def _problems(rec: dict) -> list[str]:
    """Every schema violation of a record that has all its fields, each naming the field and value."""
    found = []
    if not isinstance(rec["record_id"], str) or not re.fullmatch(r"[0-9a-f]{16}", rec["record_id"]):
        found.append(f"record_id={rec['record_id']!r} must be 16 hex digits")
    try:
        check_preset_name(rec["preset"])
    except UserError as e:
        found.append(str(e))
    if not isinstance(rec["run_id"], str) or not rec["run_id"]:
        found.append(f"run_id={rec['run_id']!r} must be a non-empty string")
    if isinstance(rec["step"], bool) or not isinstance(rec["step"], int) or rec["step"] < 0:
        found.append(f"step={rec['step']!r} must be an integer >= 0")
    lab = rec["label"]
    if not isinstance(lab, dict) or set(lab) != set(LABEL_KEYS):
        found.append(f"label must have exactly the keys {LABEL_KEYS}; got {lab!r:.200}")
    elif not (_optional(lab["regularizer"], str) and _optional(lab["lora"], bool) and _optional(lab["seed"], int)
              and lab["baseline"] in BASELINES):
        found.append(f"label={lab!r}: regularizer is a string, lora a boolean, seed an integer (or null), baseline "
                     "one of sft, full, null")
    judge = rec["judge"]
    if judge is not None and not (isinstance(judge, dict) and all(isinstance(judge.get(k), str)
                                                                  for k in ("name", "model", "version"))):
        found.append(f"judge={judge!r:.200} must be null or {{name, model, version}} strings")
    es = rec["eval_set"]
    if es is not None and not (isinstance(es, dict) and isinstance(es.get("name"), str) and isinstance(es.get("hash"), str)
                               and isinstance(es.get("n"), int) and not isinstance(es.get("n"), bool) and es["n"] >= 0):
        found.append(f"eval_set={es!r:.200} must be null or {{name: string, hash: string, n: integer >= 0}}")
    metrics = rec["metrics"]
    if not isinstance(metrics, dict):
        found.append(f"metrics must be an object of numbers; got {type(metrics).__name__}")
    else:
        for k, v in metrics.items():
            if v is None:
                continue
            if not _number(v):
                found.append(f"metrics.{k}={v!r} must be a finite number or null")
            elif k in PERCENT_METRICS and not 0 <= v <= 100:
                found.append(f"metrics.{k}={v!r} must be a percentage in [0, 100]")
            elif k in NONNEGATIVE_METRICS and v < 0:
                found.append(f"metrics.{k}={v!r} must be >= 0")
    found += _per_item_problems(rec["per_item"])
    for key in ("details", "harness"):
        if not isinstance(rec[key], dict):
            found.append(f"{key} must be an object; got {type(rec[key]).__name__}")
    if not isinstance(rec["created"], str):
        found.append(f"created={rec['created']!r} must be an ISO time string")
    if "settings" in rec and not isinstance(rec["settings"], dict):
        found.append(f"settings must be an object; got {type(rec['settings']).__name__}")
    return found


def _per_item_problems(items: object) -> list[str]:
    if not isinstance(items, list) or not all(isinstance(i, dict) and isinstance(i.get("id"), (str, int)) for i in items):
        return ["per_item must be a list of objects, each with an 'id'"]
    ids = [str(i["id"]) for i in items]
    dupes = sorted(i for i, n in Counter(ids).items() if n > 1)
    found = [f"per_item repeats the id(s) {dupes[:5]}: paired statistics need one item per id"] if dupes else []
    for i in items:
        pref, score = i.get("preference"), i.get("score")
        if pref is not None and not (_number(pref) and 1 <= pref <= 2):
            found.append(f"per_item id {i['id']!r}: preference={pref!r} must be null or a number in [1, 2]")
        if score is not None and not (_number(score) and 0 <= score <= 1):
            found.append(f"per_item id {i['id']!r}: score={score!r} must be null or a number in [0, 1]")
    return found[:5]


def validate(rec: object, where: str = "record") -> dict:
    if not isinstance(rec, dict):
        raise RecordError(f"{where}: a record is a JSON object, not {type(rec).__name__}")
    missing = [k for k in REQUIRED if k not in rec]
    if missing:
        raise RecordError(f"{where}: missing field(s) {missing}; a record has {list(REQUIRED)}")
    if rec["schema"] != SCHEMA:
        raise RecordError(f"{where}: schema={rec['schema']!r} is not supported; expected {SCHEMA!r}")
    if rec["source"] not in SOURCES:
        raise RecordError(f"{where}: source={rec['source']!r}; allowed: {', '.join(SOURCES)}")
    if rec["evaluator"] not in EVALUATORS:
        raise RecordError(f"{where}: evaluator={rec['evaluator']!r}; allowed: {', '.join(EVALUATORS)}")
    problems = _problems(rec)
    if problems:
        raise RecordError(f"{where}: " + "; ".join(problems))
    return rec


def same_results(a: dict, b: dict) -> bool:
    """Two records of one id that agree on what they measured (timings, dates and code version aside)."""
    return all(a.get(k) == b.get(k) for k in ("metrics", "per_item", "judge", "eval_set", "label", "settings"))


class ResultsStore:
    """Records and run manifests under one root; every write atomic, every read validated."""

    def __init__(self, root: str | Path = "results") -> None:
        self.root = Path(root)

    def record_path(self, rid: str) -> Path:
        return self.root / "records" / f"{rid}.json"

    def put(self, rec: dict, force: bool = False) -> Path:
        """Write `rec`; an existing record of its id with other results is kept unless `force`."""
        validate(rec)
        path = self.record_path(rec["record_id"])
        if not force and path.exists():
            old = self._read(path)
            if not same_results(old, rec):
                raise UserError(f"{path} holds a record of the same evaluation with other results (created "
                                f"{old['created']}); pass --force to replace it")
        atomic_write_text(path, json.dumps(rec, indent=1, sort_keys=True) + "\n")
        return path

    def get(self, rid: str) -> dict | None:
        path = self.record_path(rid)
        return self._read(path) if path.exists() else None

    def has(self, rid: str) -> bool:
        return self.record_path(rid).exists()

    def _read(self, path: Path) -> dict:
        try:
            rec = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise RecordError(f"{path}: not valid JSON ({exc})") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise RecordError(f"{path}: cannot be read ({exc})") from None
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

    def add_reproduction(self, preset: str, entry: dict) -> Path:
        """Append how one `harness reproduce` went (command, wall time, machine) to the preset's list."""
        path = self.root / "reproductions" / f"{preset}.json"
        entries = self.reproductions(preset)
        atomic_write_text(path, json.dumps([*entries, entry], indent=1, sort_keys=True) + "\n")
        return path

    def reproductions(self, preset: str) -> list[dict]:
        path = self.root / "reproductions" / f"{preset}.json"
        return json.loads(path.read_text()) if path.is_file() else []

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
