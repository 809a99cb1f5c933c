"""Training curves in the results store: the per-step metrics of a run the report plots, copied from its run
folder's metrics.jsonl when `harness reproduce` records the run, so that the report stays a function of results/.

    results/runs/<run_id>/curves.json

Schema `SCHEMA`: {"schema", "run_id", "preset", "label" (as a record's), "steps": [int, increasing],
"metrics": {name: [number or null, one per step]}} with the names of `CURVE_METRICS` (a metric a run does not log
is all null). Written atomically, validated on read.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from harness.errors import UserError
from harness.results import LABEL_KEYS
from trainers.io import atomic_write_text

SCHEMA = "harness.curves/1"
# what the report's curves figure draws, in its panel order, with each panel's axis label
CURVE_METRICS = {"objective/scores": "reward (proxy RM score)", "objective/true_kl": "true KL (per token)",
                 "objective/regularizer": "regulariser (per sequence)", "objective/entropy": "entropy (per token)",
                 "ppo/loss/value": "value loss"}
FILE = "curves.json"


def make_curves(run_id: str, preset: str, label: dict, rows: list[dict]) -> dict:
    """The curves of a run from its metrics.jsonl rows."""
    curves = {"schema": SCHEMA, "run_id": run_id, "preset": preset, "label": {k: label.get(k) for k in LABEL_KEYS},
              "steps": [r["step"] for r in rows],
              "metrics": {k: [r.get(k) for r in rows] for k in CURVE_METRICS}}
    return validate_curves(curves)


def validate_curves(curves: object, where: str = "curves") -> dict:
    if not isinstance(curves, dict) or curves.get("schema") != SCHEMA:
        raise UserError(f"{where}: not a curves file of schema {SCHEMA!r}")
    missing = [k for k in ("run_id", "preset", "label", "steps", "metrics") if k not in curves]
    if missing:
        raise UserError(f"{where}: missing field(s) {missing}")
    steps = curves["steps"]
    if not (isinstance(steps, list) and all(isinstance(s, int) and not isinstance(s, bool) for s in steps)
            and all(a < b for a, b in zip(steps, steps[1:]))):
        raise UserError(f"{where}: steps must be a list of increasing integers")
    metrics = curves["metrics"]
    if not isinstance(metrics, dict) or set(metrics) != set(CURVE_METRICS):
        raise UserError(f"{where}: metrics must have exactly the keys {list(CURVE_METRICS)}")
    for name, values in metrics.items():
        if not isinstance(values, list) or len(values) != len(steps) or not all(
                v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))
                for v in values):
            raise UserError(f"{where}: metrics.{name} must hold one finite number or null per step")
    return curves


def put_curves(results_root: str | Path, curves: dict) -> Path:
    validate_curves(curves)
    path = Path(results_root) / "runs" / curves["run_id"] / FILE
    atomic_write_text(path, json.dumps(curves, indent=1, sort_keys=True) + "\n")
    return path


def has_curves(results_root: str | Path, run_id: str) -> bool:
    return (Path(results_root) / "runs" / run_id / FILE).is_file()


def read_curves(results_root: str | Path, preset: str) -> list[dict]:
    """Every run's curves of `preset` in the store, sorted by run id."""
    folder = Path(results_root) / "runs"
    found = []
    for path in sorted(folder.glob(f"*/{FILE}")) if folder.is_dir() else ():
        try:
            curves = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UserError(f"{path}: cannot be read as JSON ({e})") from None
        if validate_curves(curves, str(path))["preset"] == preset:
            found.append(curves)
    return found
