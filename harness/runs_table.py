"""`harness runs`: the run folders under a root and where each stands, read from their files alone (no torch).

A run folder is a folder holding `config.json` (what `harness train` writes first), read through
`trainers.runfolder.RunFolder`. Its state:
- running:    a live process holds its lock (`RunFolder.lock_state`);
- finished:   its checkpoint of the last step exists;
- stale lock: it stopped before its last step and its lock still names the process that held it, which was killed
              (SIGKILL, out of memory, a lost node) before it could release it; `--resume` continues it;
- failed:     it stopped before its last step otherwise (an error, an interruption, or a FAILED marker left by
              `harness reproduce`); `--resume` continues it.
Latest win rate: the winrate record of the highest step in the results store for the run's id.
"""

from __future__ import annotations

import json
from pathlib import Path

from trainers.runfolder import RunFolder

COLUMNS = ("run_id", "state", "steps", "reward", "true_kl", "win_rate", "wall_time")


def state_of(folder: RunFolder, total: int) -> str:
    lock = folder.lock_state()
    if lock == "held":
        return "running"
    if folder.is_finished(total):
        return "finished"
    return "stale lock" if lock == "stale" else "failed"


def latest_win_rates(results: str | Path) -> dict[str, tuple[int, float]]:
    """run_id -> (step, win rate) of its winrate record at the highest step (any judge)."""
    from harness.results import ResultsStore

    best: dict[str, tuple[int, float]] = {}
    for rec in ResultsStore(results).records():
        rate = rec["metrics"].get("win_rate")
        if rec["source"] == "harness" and rec["evaluator"] == "winrate" and rate is not None:
            if rec["run_id"] not in best or rec["step"] > best[rec["run_id"]][0]:
                best[rec["run_id"]] = (rec["step"], rate)
    return best


def describe(folder: RunFolder, win_rates: dict[str, tuple[int, float]]) -> dict:
    config = folder.read_config()
    run_id = folder.run_id()
    rows = folder.read_metrics()
    total = int(config.get("steps", 0))
    done = rows[-1]["step"] if rows else 0
    win = win_rates.get(run_id) or win_rates.get(folder.path.name)
    return {"run_id": run_id, "folder": str(folder.path), "state": state_of(folder, total),
            "steps_done": done, "steps_total": total,
            "reward": rows[-1].get("objective/scores") if rows else None,
            "true_kl": rows[-1].get("objective/true_kl") if rows else None,
            "win_rate": win[1] if win else None, "win_rate_step": win[0] if win else None,
            "wall_time_s": round(sum(r.get("time/step", 0.0) for r in rows), 1)}


def table_rows(root: str | Path, results: str | Path, run_ids: set[str] | None = None) -> list[dict]:
    win_rates = latest_win_rates(results) if Path(results).is_dir() else {}
    rows = [describe(folder, win_rates) for folder in RunFolder.find(root)]
    return [r for r in rows if run_ids is None or r["run_id"] in run_ids or Path(r["folder"]).name in run_ids]


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _number(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def format_table(rows: list[dict]) -> str:
    cells = [("run", "state", "steps", "reward", "true KL", "win rate", "wall time")]
    for r in rows:
        win = "-" if r["win_rate"] is None else f"{r['win_rate']:.1f} (step {r['win_rate_step']})"
        cells.append((r["run_id"], r["state"], f"{r['steps_done']}/{r['steps_total']}", _number(r["reward"], "+.3f"),
                      _number(r["true_kl"], ".4f"), win, _clock(r["wall_time_s"])))
    widths = [max(len(c[i]) for c in cells) for i in range(len(cells[0]))]
    return "\n".join("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
                     .rstrip() for row in cells)


def to_json(rows: list[dict]) -> str:
    return json.dumps(rows, indent=1)
