"""The README's main command, timed as a fresh machine runs it, in a clone of the committed repository.

    harness reproduce --preset miniature --table 2 --only kl --seeds 1

Two modes, each in its own clone of HEAD and an empty `$HARNESS_CACHE` (so the SmolLM2 dequantisation, the MiniLM
load and every cached answer and judgement count):

- `fresh`: the clone's `results/` removed. Everything the command needs is made: the SFT policy's references, its
  three candidate decodings on the validation instructions and the best one on the evaluation instructions, greedy
  SFT, the LoRA kl run at seed 1 and its 5 checkpoint evaluations.
- `recompute`: the committed `results/` kept and `--recompute all` added: the run is trained again and its
  checkpoints evaluated again (the SFT rows are reused). Each record it rewrites is compared with the committed
  one: its metrics and per-instruction preferences either match exactly or they do not.

Set-up (`scripts/setup.sh`) is not timed. The clone runs its own code: `python -m harness` from the clone's root
imports the clone's package, and so do the jobs it starts.

  python -m benchmarks.main_command --mode fresh|recompute [--out benchmarks/results/main_command-miniature.json]

appends one entry per call to the output file (a JSON list), with the wall time, the CPU time and peak memory of
the command's processes, the machine and the commit.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMAND = ("reproduce", "--preset", "miniature", "--table", "2", "--only", "kl", "--seeds", "1")
MODES = ("fresh", "recompute")


def _git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def compare_records(clone: Path) -> dict:
    """The records the command rewrote in the clone against the committed ones: how many keep their metrics and
    per-item preferences exactly."""
    changed = [line for line in _git("diff", "--name-only", "--", "results/records", cwd=clone).splitlines() if line]
    same = 0
    for rel in changed:
        new = json.loads((clone / rel).read_text())
        old = json.loads(_git("show", f"HEAD:{rel}", cwd=clone))
        same += new["metrics"] == old["metrics"] and new.get("per_item") == old.get("per_item")
    return {"rewritten": len(changed), "metrics_and_items_identical": same}


def measure(mode: str) -> dict:
    from harness.machine import describe

    if mode not in MODES:
        raise SystemExit(f"--mode {mode!r}: allowed {', '.join(MODES)}")
    work = Path(tempfile.mkdtemp(prefix="main-command-"))
    clone, cache = work / "repo", work / "cache"
    try:
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        shared = ROOT.parent / "shared"
        if shared.is_dir():
            (work / "shared").symlink_to(shared)
        argv = [sys.executable, "-m", "harness", *COMMAND]
        if mode == "fresh":
            shutil.rmtree(clone / "results")
        else:
            argv += ["--recompute", "all"]
        env = {**os.environ, "HARNESS_CACHE": str(cache)}
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.time()
        rc = subprocess.run(argv, cwd=clone, env=env).returncode
        wall = time.time() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        reproductions = clone / "results" / "reproductions" / "miniature.json"
        entry = {
            "mode": mode, "command": "harness " + " ".join(argv[3:]), "exit_status": rc,
            "commit": _git("rev-parse", "HEAD", cwd=clone), "machine": describe(),
            "wall_minutes": round(wall / 60, 1),
            "cpu_user_s": round(after.ru_utime - before.ru_utime), "cpu_system_s": round(after.ru_stime - before.ru_stime),
            "peak_rss_gib_largest_process": round(after.ru_maxrss / 2**20, 2),
            "reproduction": json.loads(reproductions.read_text())[-1] if reproductions.is_file() else None,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if mode == "recompute":
            entry["records"] = compare_records(clone)
        return entry
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=MODES, required=True)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "main_command-miniature.json"))
    args = ap.parse_args(argv)
    entry = measure(args.mode)
    out = Path(args.out)
    entries = json.loads(out.read_text()) if out.is_file() else []
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps([*entries, entry], indent=1) + "\n")
    tmp.replace(out)
    print(f"main command ({args.mode}): {entry['wall_minutes']} min wall, exit {entry['exit_status']}"
          + (f", records {entry['records']}" if "records" in entry else "") + f" -> {out}")
    return 0 if entry["exit_status"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
