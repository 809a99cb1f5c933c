"""The report's table of settings chosen on the validation instructions: `validation.{md,tex,csv}`.

Its rows are the win-rate records on validation instructions (eval sets named `...:val`, never the evaluation
set): the SFT policy at each candidate decoding (`harness.decoding_choice`), and every run evaluated there by
`harness reproduce --validation` (a sweep of learning rates, steps or coefficients, each run's settings read from
its manifest), by PPO step. Nothing is rendered where the store holds no such records.
"""

from __future__ import annotations

from pathlib import Path

from harness.report_data import ReportData, group_series
from harness.report_tables import Table, _value, _win_cell, write_table

SETTINGS = ("lr", "kl_coef", "steps")  # what a sweep on the validation instructions chooses, shown per run


def _decoding(rec: dict) -> str:
    t = ((rec.get("details") or {}).get("generation") or {}).get("temperature")
    return "decoding not recorded" if t is None else "greedy" if t == 0 else f"temperature {t:g}"


def validation_table(data: ReportData) -> Table | None:
    if not data.validation:
        return None
    runs = group_series([r for r in data.validation if r["label"].get("baseline") != "sft"])
    steps = sorted({st for s in runs for st in s.points})
    t = Table("validation", "Settings chosen on the validation instructions", "", "policy",
              [*SETTINGS, "step 0", *(f"step {st}" for st in steps)])
    latest: dict[str, dict] = {}
    for rec in sorted((r for r in data.validation if r["label"].get("baseline") == "sft"),
                      key=lambda r: str(r.get("created"))):
        latest[_decoding(rec)] = rec  # one row per decoding: its latest record
    for decoding, rec in sorted(latest.items()):
        t.rows.append((f"SFT, {decoding}", [_win_cell(None, "harness")] * len(SETTINGS)
                       + [_win_cell(rec, "harness")] + [_win_cell(None, "harness")] * len(steps)))
    for s in runs:
        config = (data.manifests.get(s.run_id) or {}).get("config") or {}
        settings = [_value(config.get(k), "d" if k == "steps" else "g", source="harness", metric=k) for k in SETTINGS]
        t.rows.append((s.label, settings + [_win_cell(None, "harness")]
                       + [_win_cell(s.points.get(st), "harness") for st in steps]))
    n = sorted({r["eval_set"].get("n") for r in data.validation if r.get("eval_set")})
    names = sorted({r["eval_set"].get("name") for r in data.validation if r.get("eval_set")})
    t.caption = (f"Ours (preset {data.preset}): win rate (%) ± one standard error on the validation instructions "
                 f"({', '.join(map(str, names))}; n = {', '.join(map(str, n))}), disjoint from the evaluation set, "
                 f"judge {data.judge_text}. The SFT rows are the candidates for 'SFT, best decoding' in Table 2; the "
                 "run rows are `harness reproduce --validation` runs, with the settings each was trained at "
                 "(from its manifest). Settings of the evaluation grid are chosen from this table, never from the "
                 "evaluation set.")
    return t


def write_validation(data: ReportData, out_dir: Path) -> list[Path]:
    table = validation_table(data)
    return [] if table is None else write_table(table, out_dir)
