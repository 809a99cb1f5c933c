"""Module seams: reading results and planning a grid never load torch; project imports form layers without cycles."""

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("trainers", "evals", "harness")

TORCH_FREE = textwrap.dedent("""
    import sys
    from harness import grid, results
    from harness.cli import main

    store = results.ResultsStore(sys.argv[1])
    prefs = [2.0, 1.0, 2.0, 1.5]
    store.put(results.make_record(
        preset="tiny", run_id="kl-lora-s0-test", label={"regularizer": "kl", "lora": True, "seed": 0,
        "baseline": None}, step=10, evaluator="winrate", metrics={"win_rate": 62.5, "standard_error": 20.0, "n": 4},
        judge={"name": "fake", "model": "fake", "version": "1"}, eval_set={"name": "e", "hash": "h", "n": 4},
        per_item=[{"id": f"q{i}", "preference": p} for i, p in enumerate(prefs)]))
    assert main(["report", "--results", sys.argv[1], "--out", sys.argv[2]]) == 0
    assert grid.build_grid(("table2",), "smoke").runs
    print("torch loaded:", "torch" in sys.modules)
""")


def test_report_and_grid_planning_never_import_torch(tmp_path):
    out = subprocess.run([sys.executable, "-c", TORCH_FREE, str(tmp_path / "results"), str(tmp_path / "report")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "torch loaded: False" in out.stdout


GRID_COMMAND = textwrap.dedent("""
    import sys
    from harness.cli import main

    assert main(["grid", "--all", "--preset", "smoke", "--runs", sys.argv[1], "--results", sys.argv[2]]) == 0
    print("torch loaded:", "torch" in sys.modules)
""")


def test_the_grid_command_never_imports_torch(tmp_path):
    """Listing a grid's state names the records it needs (judge, eval set, settings) without loading a model."""
    out = subprocess.run([sys.executable, "-c", GRID_COMMAND, str(tmp_path / "runs"), str(tmp_path / "results")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "sft:tiny-random-llama" in out.stdout and "0/2" in out.stdout  # the SFT baseline's winrate + factuality
    assert "torch loaded: False" in out.stdout


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The project modules `path` imports, at any depth in the file (a deferred import still forms a cycle)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n for n in names if n in modules}
    return found


def import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}
    modules = set(files)
    return {name: _imports(path, modules) - {name} - set(PACKAGES) for name, path in files.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_project_imports_have_no_cycle():
    graph = import_graph()
    assert {"harness.report", "trainers.trainer", "evals.stats"} <= set(graph)
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_trainers_and_evals_never_import_harness():
    offending = {name: sorted(m for m in deps if m.startswith("harness"))
                 for name, deps in import_graph().items() if name.startswith(("trainers", "evals"))}
    assert not {k: v for k, v in offending.items() if v}


def test_trainers_never_import_evals():
    offending = {name: sorted(m for m in deps if m.startswith("evals"))
                 for name, deps in import_graph().items() if name.startswith("trainers")}
    assert not {k: v for k, v in offending.items() if v}
