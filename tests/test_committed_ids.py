"""The committed results stay this code's results: the tiny grid's run ids, derived now from the presets and the
shipped proxy reward model, are the ids of the run folders under `results/runs`. A new setting that changes every
id would orphan the committed records (and a fresh clone would retrain instead of reusing them)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from harness.grid import build_grid

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "harness" / "data" / "prepared" / "tiny"


def test_the_committed_tiny_runs_keep_their_ids(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    shutil.copytree(SHIPPED, tmp_path / "prepared" / "tiny")
    committed = {p.name: json.loads((p / "manifest.json").read_text()) for p in (ROOT / "results" / "runs").iterdir()
                 if (p / "manifest.json").is_file() and json.loads((p / "manifest.json").read_text())
                 .get("preset", "tiny") == "tiny"}
    grid = build_grid(("table2",), "tiny")
    assert not grid.provisional
    derived = {r.run_id for r in grid.runs}
    assert derived <= set(committed), f"derived now: {sorted(derived)}; committed: {sorted(committed)}"
