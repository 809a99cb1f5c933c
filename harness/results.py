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
    label         {"regularizer": ..., "lora": bool|None, "seed": int|None, "baseline": "sft"|"sft-best"|"full"|None}
    step          PPO step of the checkpoint (0 = the SFT policy)
    evaluator     a registered evaluator (`evals.evaluators`, listed by `harness evaluators`): winrate, factuality,
                  efficiency, proxy_rm (the proxy reward model against the judge), judge_check (a judge against a
                  reference judge's annotations)
    judge         {"name", "model", "version"} of the judge / verifier (null for efficiency)
    eval_set      {"name", "hash", "n"} (null for efficiency)
    metrics       flat {name: number or null}: the metrics its evaluator declares (win_rate, standard_error, n,
                  true_kl, ... / factscore, answered, ...), each inside the range declared with it
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

from evals.evaluators import evaluator_names, metric_problems
from harness.errors import UserError, check_preset_name
from trainers.io import atomic_write_text, parse_json

SCHEMA = "harness.record/1"
SOURCES = ("harness", "paper")
REQUIRED = ("schema", "record_id", "source", "preset", "run_id", "label", "step", "evaluator", "judge",
            "eval_set", "metrics", "per_item", "details", "created", "harness")
LABEL_KEYS = ("regularizer", "lora", "seed", "baseline")
BASELINES = (None, "sft", "sft-best", "full")  # sft-best: SFT at its best decoding (harness.decoding_choice)
MAX_STEP = 10**9  # PPO steps; a step beyond it is a typo or an attack, not a run
MAX_MAGNITUDE = 1e15  # any metric: parameter counts and token rates stay far below
MAX_INT = 2**63 - 1  # seeds, item ids
# text that reaches Markdown, LaTeX, CSV and figure labels: one line, none of the characters that make structure
# there (table cells, code spans, maths, HTML, escapes)
TEXT = re.compile(r"[^\x00-\x1f\x7f-\x9f\u2028\u2029|`$<>\\]{0,300}")
REGULARIZER = re.compile(r"[A-Za-z0-9_.+-]{1,64}")


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


def check_record_fields(*, preset: str, run_id: str, label: dict, step: int, evaluator: str) -> None:
    """Refuse now what `make_record` would refuse at the end: the fields a record takes from its request, known
    before any model loads (an evaluation is never thrown away for its name)."""
    make_record(preset=preset, run_id=run_id, label=label, step=step, evaluator=evaluator, metrics={})


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _optional(value: object, kind: type) -> bool:
    if value is None or kind is bool:
        return value is None or isinstance(value, bool)
    return isinstance(value, kind) and not isinstance(value, bool)


def _text(value: object) -> bool:
    return isinstance(value, str) and TEXT.fullmatch(value) is not None


def _int(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


TEXT_RULE = "at most 300 characters on one line, without | ` $ < > \\"


def check_run_id(value: str, where: str = "--run-id") -> str:
    """A run id given by hand, checked before any work: what a record's run_id must be."""
    if not value or not _text(value):
        raise UserError(f"{where} {value!r:.200} must be a non-empty string of {TEXT_RULE}")
    return value


def _problems(rec: dict) -> list[str]:
    """Every schema violation of a record that has all its fields, each naming the field and value."""
    found = []
    if not isinstance(rec["record_id"], str) or not re.fullmatch(r"[0-9a-f]{16}", rec["record_id"]):
        found.append(f"record_id={rec['record_id']!r} must be 16 hex digits")
    try:
        check_preset_name(rec["preset"])
    except UserError as e:
        found.append(str(e))
    if not _text(rec["run_id"]) or not rec["run_id"]:
        found.append(f"run_id={rec['run_id']!r:.200} must be a non-empty string of {TEXT_RULE}")
    if not _int(rec["step"], 0, MAX_STEP):
        found.append(f"step={rec['step']!r:.60} must be an integer in [0, {MAX_STEP}]")
    lab = rec["label"]
    if not isinstance(lab, dict) or set(lab) != set(LABEL_KEYS):
        found.append(f"label must have exactly the keys {LABEL_KEYS}; got {lab!r:.200}")
    elif not ((lab["regularizer"] is None or (isinstance(lab["regularizer"], str)
                                               and REGULARIZER.fullmatch(lab["regularizer"])))
              and _optional(lab["lora"], bool) and (lab["seed"] is None or _int(lab["seed"], -MAX_INT, MAX_INT))
              and lab["baseline"] in BASELINES):
        found.append(f"label={lab!r:.200}: regularizer is null or 1-64 letters, digits, '_', '.', '+', '-'; lora a "
                     f"boolean; seed an integer of at most 64 bits (or null); baseline one of sft, sft-best, full, null")
    judge = rec["judge"]
    if judge is not None and not (isinstance(judge, dict) and all(_text(judge.get(k))
                                                                  for k in ("name", "model", "version"))):
        found.append(f"judge={judge!r:.200} must be null or {{name, model, version}}, each a string of {TEXT_RULE}")
    es = rec["eval_set"]
    if es is not None and not (isinstance(es, dict) and _text(es.get("name")) and _text(es.get("hash"))
                               and _int(es.get("n"), 0, MAX_STEP)):
        found.append(f"eval_set={es!r:.200} must be null or {{name, hash: strings of {TEXT_RULE}; n: an integer "
                     f"in [0, {MAX_STEP}]}}")
    metrics = rec["metrics"]
    if not isinstance(metrics, dict):
        found.append(f"metrics must be an object of numbers; got {type(metrics).__name__}")
    else:
        for k, v in metrics.items():
            if v is None:
                continue
            if not _number(v) or abs(v) > MAX_MAGNITUDE:
                found.append(f"metrics.{k}={v!r:.60} must be a finite number of magnitude <= {MAX_MAGNITUDE:g}, "
                             "or null")
        found += metric_problems(rec["evaluator"], metrics)  # names and ranges the evaluator declares
    found += _per_item_problems(rec["per_item"])
    for key in ("details", "harness"):
        if not isinstance(rec[key], dict):
            found.append(f"{key} must be an object; got {type(rec[key]).__name__}")
    if not isinstance(rec["created"], str):
        found.append(f"created={rec['created']!r} must be an ISO time string")
    if "settings" in rec and not isinstance(rec["settings"], dict):
        found.append(f"settings must be an object; got {type(rec['settings']).__name__}")
    return found


def _item_id(value: object) -> bool:
    return (isinstance(value, str) and len(value) <= 1000) or _int(value, -MAX_INT, MAX_INT)


def _per_item_problems(items: object) -> list[str]:
    if not isinstance(items, list) or not all(isinstance(i, dict) and _item_id(i.get("id")) for i in items):
        return ["per_item must be a list of objects, each with an 'id' (a string of at most 1000 characters, or an "
                "integer of at most 64 bits)"]
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
    if not isinstance(rec["evaluator"], str) or rec["evaluator"] not in evaluator_names():
        raise RecordError(f"{where}: evaluator={rec['evaluator']!r:.100}; allowed: {', '.join(evaluator_names())}")
    problems = _problems(rec)
    if problems:
        raise RecordError(f"{where}: " + "; ".join(problems))
    return rec


def _read_json(path: Path, error: type[UserError] = UserError) -> object:
    """A results file's JSON (NaN, Infinity and duplicate keys refused), or an error naming the file."""
    try:
        return parse_json(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise error(f"{path}: cannot be read (not UTF-8 at byte {exc.start})") from None
    except OSError as exc:
        raise error(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise error(f"{path}: not valid JSON ({exc})") from None


def _read_manifest(path: Path) -> dict:
    """A run manifest: an object whose `command` (when present) is one line of text and `harness` an object."""
    data = _read_json(path)
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a JSON object (a run's manifest), not {type(data).__name__}")
    for key, kind in (("command", str), ("argv", list), ("harness", dict), ("git_commit", str)):
        if data.get(key) is not None and not isinstance(data[key], kind):
            raise UserError(f"{path}: {key}={data[key]!r:.100} must be a {kind.__name__} (or absent)")
    if isinstance(data.get("command"), str) and re.search(r"[\x00-\x1f\x7f]", data["command"]):
        raise UserError(f"{path}: command={data['command']!r:.100} must be one line without control characters")
    return data


def _reproduction_problem(entry: dict) -> str | None:
    """What is wrong with one entry of a reproductions file (None: nothing), naming the field and value."""
    minutes = entry.get("minutes")
    if not _number(minutes) or not 0 <= minutes <= MAX_MAGNITUDE:
        return f"minutes={minutes!r:.60} must be a finite number >= 0"
    for key in ("command", "finished", "machine"):
        value = entry.get(key)
        if value is not None and not (isinstance(value, str) and not re.search(r"[\x00-\x1f\x7f]", value)):
            return f"{key}={value!r:.100} must be one line of text (or absent)"
    for key in ("runs_trained", "evaluations"):
        if entry.get(key) is not None and not _int(entry[key], 0, MAX_STEP):
            return f"{key}={entry[key]!r:.60} must be an integer in [0, {MAX_STEP}] (or absent)"
    failed = entry.get("failed")
    if failed is not None and not (isinstance(failed, list) and all(isinstance(f, str) for f in failed)):
        return f"failed={failed!r:.100} must be a list of run ids (or absent)"
    return None


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
        """A record file, validated; its name must be its record_id (so one id is one file, never two results)."""
        rec = validate(_read_json(path, RecordError), str(path))
        if path.stem != rec["record_id"]:
            raise RecordError(f"{path}: record_id={rec['record_id']!r} does not match the file name; a record lives "
                              f"in records/<record_id>.json (rename it to {rec['record_id']}.json, or remove it)")
        return rec

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
        return _read_manifest(path) if path.exists() else None

    def manifests(self) -> dict[str, dict]:
        folder = self.root / "runs"
        if not folder.exists():
            return {}
        return {p.parent.name: _read_manifest(p) for p in sorted(folder.glob("*/manifest.json"))}

    def add_reproduction(self, preset: str, entry: dict) -> Path:
        """Append how one `harness reproduce` went (command, wall time, machine) to the preset's list."""
        path = self.root / "reproductions" / f"{preset}.json"
        entries = self.reproductions(preset)
        atomic_write_text(path, json.dumps([*entries, entry], indent=1, sort_keys=True) + "\n")
        return path

    def reproductions(self, preset: str) -> list[dict]:
        path = self.root / "reproductions" / f"{preset}.json"
        if not path.is_file():
            return []
        entries = _read_json(path)
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise UserError(f"{path} must hold a JSON list of objects (one per `harness reproduce`), not "
                            f"{type(entries).__name__}")
        for i, entry in enumerate(entries):
            problem = _reproduction_problem(entry)
            if problem:
                raise UserError(f"{path}, entry {i}: {problem}")
        return entries

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
