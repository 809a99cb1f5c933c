"""The committed report/ is exactly what `harness report --results results --out report --preset miniature` renders
from the committed results/: no table, summary or caption edited by hand, none left behind by older code."""
from pathlib import Path

import pytest

from harness.report import render_report

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "report"
TEXT_SUFFIXES = (".md", ".csv", ".tex")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    out = tmp_path_factory.mktemp("rendered") / "report"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ROOT)  # the committed report names `--results results`, relative to the repository
        render_report("results", out, "miniature")
    return out


def _files(folder: Path) -> list[Path]:
    return sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file())


def test_the_committed_report_has_the_files_a_rendering_makes(rendered):
    assert _files(COMMITTED) == _files(rendered)
    assert {"table2.md", "table3.md", "summary.md", "validation.md", "curves.png", "figure3.pdf"} <= {
        p.name for p in _files(rendered)}


def test_every_committed_table_and_summary_is_the_rendering_of_the_committed_records(rendered):
    for rel in _files(rendered):
        if rel.suffix not in TEXT_SUFFIXES:
            continue
        text = (rendered / rel).read_text().replace(f"--out {rendered} ", "--out report ")
        assert (COMMITTED / rel).read_text() == text, f"report/{rel} differs from its rendering"
