"""The docs' module tables name every module: `docs/ppo.md` every module of `trainers/`, `docs/evaluation.md` every
module of `evals/`, `docs/harness.md` every module of `harness/` (a package's modules may be named inside its row)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("package, doc", [("trainers", "ppo.md"), ("evals", "evaluation.md"), ("harness", "harness.md")])
def test_every_module_is_in_its_packages_module_table(package, doc):
    text = (ROOT / "docs" / doc).read_text()
    table = "\n".join(line for line in text.splitlines() if line.startswith("| `"))
    missing = []
    for path in sorted((ROOT / package).rglob("*.py")):
        rel = path.relative_to(ROOT / package)
        if rel.name in ("__init__.py", "__main__.py"):
            if rel.parent != Path(".") and f"`{rel.parent.as_posix()}/`" not in table:
                missing.append(f"{rel.parent.as_posix()}/")
            continue
        if f"`{rel.as_posix()}`" not in table and f"`{rel.name}`" not in table:
            missing.append(rel.as_posix())
    assert not missing, f"docs/{doc}'s module table lacks: {', '.join(missing)}"
