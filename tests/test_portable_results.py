"""Committed results name no machine's folders: paths inside the repository are stored relative to it."""

import re
from pathlib import Path

from evals.retrieval import BundledKnowledge
from trainers.io import REPOSITORY, repository_path

ROOT = Path(__file__).resolve().parents[1]
ABSOLUTE = re.compile(r'"(/work/|/root/|/home/|/tmp/|/Users/)')


def test_repository_paths_are_stored_relative_and_others_as_given(tmp_path):
    assert repository_path(REPOSITORY / "harness" / "data" / "instructions.json") == "harness/data/instructions.json"
    assert repository_path("tatsu-lab/alpaca_farm") == "tatsu-lab/alpaca_farm"
    assert repository_path(tmp_path / "p.json") == str(tmp_path / "p.json")
    assert BundledKnowledge().identity()["source"] == "harness/data/people.json"


def test_committed_results_hold_no_absolute_paths():
    files = [p for d in ("results", "benchmarks/results") for p in (ROOT / d).rglob("*")
             if p.is_file() and p.suffix in (".json", ".md", ".csv")]
    assert files
    assert [str(p.relative_to(ROOT)) for p in files if ABSOLUTE.search(p.read_text(encoding="utf-8"))] == []


def test_a_run_manifest_names_the_bundled_prompts_relative_to_the_repository(tmp_path):
    from harness import grid, reproduce

    run = grid.build_grid(("table2",), "tiny").runs[0]
    assert Path(run.config.prompts).is_absolute()
    assert reproduce.manifest(run, tmp_path)["config"]["prompts"] == "harness/data/instructions.json"
