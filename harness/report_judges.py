"""The report's "Judges against GPT-4" table, rendered from the store's judge_check records alone.

One row per record (`harness judge-check`, and `harness fit-judge`'s held-out record of the learned judge), grouped
by annotation file, with the published agreement of GPT-4 and of humans with human labels as context: those are
alpaca-eval's figures (agreement with the majority of 4 other human annotations on 2.5K cross-annotated pairs),
not ours and not against GPT-4, so they sit in the caption rather than in the table.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from harness.judge_check import COLUMNS, row

# alpaca-eval's evaluator leaderboard (src/alpaca_eval/evaluators_configs/README.md in alpaca-eval 0.6.6, the
# "Human agreement" column), and the older table in src/alpaca_eval/configs/README.md for the longest-output rule
PUBLISHED = (("alpaca_eval_gpt4 (the annotator of these GPT-4 judgements)", 69.2),
             ("humans (one annotator against the others)", 65.7),
             ("longest output wins", 62.2))
SOURCE = ("alpaca-eval's evaluator leaderboard, \"Human agreement [%]\" (tatsu-lab/alpaca_eval, "
          "src/alpaca_eval/evaluators_configs/README.md; the longest-output row from src/alpaca_eval/configs/README.md)")

_ORDER = {"learned": 0, "simulated": 1, "reward-model": 2, "openai": 3, "longer": 4, "model-wins": 5}


def judge_rows(records: list[dict]) -> list[dict]:
    found = [r for r in records if r["evaluator"] == "judge_check"]
    return sorted(found, key=lambda r: (r["eval_set"]["name"], r["eval_set"]["hash"],
                                        _ORDER.get(r["judge"]["name"], 9), r["record_id"]))


def _settings(rec: dict) -> str:
    s = rec.get("settings") or {}
    # the version tells two fits of one judge apart (a refit keeps its name and model description)
    parts = [f"version `{rec['judge'].get('version')}`", f"{len(s.get('models') or [])} models"]
    if s.get("heldout"):
        parts.append(f"{s.get('folds')}-fold by model, held out")
    elif rec["judge"]["name"] == "learned":
        parts.append("the fitted weights themselves (in-sample where the file is the one they were fitted on)")
    if s.get("sample_instructions"):
        parts.append(f"{s['sample_instructions']} instructions sampled (seed {s.get('seed')})")
    if s.get("order"):
        parts.append(f"order {s['order']}")
    return ", ".join(parts)


def judges_md(records: list[dict]) -> str:
    rows = judge_rows(records)
    out = ["# Judges against GPT-4", "",
           "Each judge scored against the reference judge's own pairwise judgements (`harness judge-check "
           "--annotations FILE --judge NAME`; the learned judge's row from `harness fit-judge`, every pair judged by "
           "a head fitted without that pair's model). Agreement: alpaca-eval's zero-one agreement, a draw counting "
           "half, ± SE; Spearman and Kendall: the judge's per-model win rates against the reference judge's, over "
           "all models and over those the reference judge scores under 70%, [95% bootstrap interval over "
           "instructions]; \"longer wins, same pairs\": the length rule on the same pairs; correctness probe: the "
           "share of (answer, the same answer with numbers, dates or names altered) pairs where the judge prefers "
           "the original.", "",
           "For context, agreement with human labels (not with GPT-4), as published by " + SOURCE + ": "
           + "; ".join(f"{name} {value:.1f}%" for name, value in PUBLISHED) + ".", ""]
    if not rows:
        return "\n".join(out + ["No judge_check records in the store.", ""])
    key = None
    for rec in rows:
        es = rec["eval_set"]
        if (es["name"], es["hash"]) != key:
            key = (es["name"], es["hash"])
            out += ["", f"## `{es['name']}` (sha256 {es['hash']}…)", "",
                    "| " + " | ".join((*COLUMNS, "settings", "record")) + " |", "|" + "---|" * (len(COLUMNS) + 2)]
        out.append("| " + " | ".join((*row(rec), _settings(rec), f"`{rec['record_id']}`")) + " |")
    return "\n".join(out) + "\n"


def judges_csv(records: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["annotations", "annotations_hash", *COLUMNS, "settings", "record"])
    for rec in judge_rows(records):
        w.writerow([rec["eval_set"]["name"], rec["eval_set"]["hash"], *row(rec), _settings(rec), rec["record_id"]])
    return buf.getvalue()


def write_judges(records: list[dict], out_dir: Path) -> list[Path]:
    """judges.md and judges.csv when the store holds judge_check records; nothing otherwise."""
    if not judge_rows(records):
        return []
    md, table = out_dir / "judges.md", out_dir / "judges.csv"
    md.write_text(judges_md(records))
    table.write_text(judges_csv(records))
    return [md, table]
