"""The committed results stay this code's results: the tiny grid's run ids, derived now from the presets and the
shipped proxy reward model, are the ids of the run folders under `results/runs`. A new setting that changes every
id would orphan the committed records (and a fresh clone would retrain instead of reusing them)."""

from __future__ import annotations

import json
import shlex
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


def _proxy_of_the_committed_miniature_study() -> str:
    """The content digest of the proxy the committed miniature runs were trained against: that of the `proxy_rm`
    record of `prepared:miniature` labelled by the judge of the committed miniature win-rate records."""
    from harness.results import ResultsStore

    records = list(ResultsStore(ROOT / "results").records())
    judges = {json.dumps(r["judge"], sort_keys=True) for r in records
              if r["evaluator"] == "winrate" and r.get("preset") == "miniature"}
    assert len(judges) == 1, f"the committed miniature study is judged by one judge, not {sorted(judges)}"
    [proxy] = [r for r in records if r["evaluator"] == "proxy_rm" and r["run_id"] == "prepared:miniature"
               and json.dumps(r["judge"], sort_keys=True) in judges]
    return proxy["settings"]["reward_model"]


def test_the_committed_miniature_runs_keep_their_ids(tmp_path, monkeypatch):
    """Each committed miniature run (the validation sweep's and the grid's) is a run that the command in its manifest
    would ask for today, against the proxy the study was made with: rebuilding that command's grid from the code
    derives the folder's id again. That proxy is the shipped one until the judge is refitted; a refit ships a proxy of
    the new judge (new ids: `harness reproduce` then trains afresh), and the study keeps the record of its own."""
    from harness.cli import build_parser, reproduce_config
    from trainers import identity
    from trainers.identity import directory_sha256

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    shutil.copytree(SHIPPED.parent / "miniature", tmp_path / "prepared" / "miniature")
    studied = _proxy_of_the_committed_miniature_study()
    shipped = f"sha256:{directory_sha256(SHIPPED.parent / 'miniature' / 'reward-model')[:16]}"
    fingerprint = identity.model_fingerprint
    monkeypatch.setattr(identity, "model_fingerprint",
                        lambda spec: (studied if spec == "prepared:miniature" and fingerprint(spec) == shipped
                                      else fingerprint(spec)))
    commands = {p.name: json.loads((p / "manifest.json").read_text())["command"]
                for p in (ROOT / "results" / "runs").iterdir() if (p / "manifest.json").is_file()}
    parser = build_parser()
    miniature = {}
    for run_id, command in commands.items():
        args = parser.parse_args(shlex.split(command)[1:])
        args.command_line = command
        if args.preset == "miniature":
            miniature[run_id] = args
    assert miniature, "no committed run of the miniature preset"
    for run_id, args in miniature.items():
        grid = reproduce_config(args).build_grid()
        assert not grid.provisional
        derived = {r.run_id for r in grid.runs}
        assert run_id in derived, f"{run_id} ({commands[run_id]}): that command derives {sorted(derived)} now"
