"""The report's three tables: built from `harness.report_data.ReportData`, written as Markdown, LaTeX and CSV.

A `Table` is rows of `Cell`s; each cell keeps its number, standard error, source ("harness" = ours, "paper")
and the record it came from, so the CSV has one line per cell and the Markdown / LaTeX are views of the same
cells. Empty cells read "—" (and have no value in the CSV).

- Table 1, efficiency: rows LoRA / full fine-tune; our GPUs, trainable parameters (% of total), peak memory per
  device, seconds and tokens per PPO step, with the paper's GPUs and trainable share beside them.
- Table 2, win rate: one row per run (SFT, full fine-tune, LoRA per regulariser; the paper's Figure 1 series get
  a row even when we have no run for them), a block of our PPO steps (raw and length-controlled win rate side by
  side), then a block of the paper's Figure 1 values
  at its own steps and its horizontal lines. The two blocks have different judges: side by side, never merged.
- Table 3, factuality: the share of supported facts (primary), FActScore and facts per answer, each with a 95%
  bootstrap interval over entities, and % answered, at each run's latest step.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from evals import stats
from harness.report_data import (DASH, PAPER_JUDGE_TEXT, Series, csv_text, item_scores, item_supported, md_text,
                                 one_line, pick_efficiency, win_rate_of)

if TYPE_CHECKING:
    from harness.report_data import ReportData


@dataclass
class Cell:
    text: str = DASH
    value: float | None = None
    se: float | None = None
    n: int | None = None
    source: str | None = None
    metric: str | None = None
    step: int | None = None
    run_id: str | None = None
    record_id: str | None = None
    ci_low: float | None = None  # a 95% interval of `value`, where the table gives one
    ci_high: float | None = None


@dataclass
class Table:
    name: str
    title: str
    caption: str
    row_header: str
    columns: list[str]
    rows: list[tuple[str, list[Cell]]] = field(default_factory=list)
    groups: list[tuple[str, int]] | None = None  # (label, span) over `columns`, for the LaTeX header


# ---------------------------------------------------------------- writers

def markdown(t: Table) -> str:
    esc = md_text
    number = t.name.removeprefix("table")  # the paper's tables by number, others by their title alone
    lines = [f"**Table {number}. {t.title}**" if number.isdigit() else f"**{t.title}**", "",
             "| " + " | ".join(esc(c) for c in [t.row_header, *t.columns]) + " |",
             "|---" + "|---:" * len(t.columns) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in [label, *(c.text for c in cells)]) + " |" for label, cells in t.rows]
    return "\n".join([*lines, "", t.caption, ""])


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
_TEX_UNICODE = {"±": r"$\pm$", "—": "---", "–": "--", "×": r"$\times$", "≈": r"$\approx$", "·": r"$\cdot$"}


def tex_escape(s: str) -> str:
    """LaTeX-escape text on one line (control characters as a space, specials, then the few non-ASCII symbols the
    report uses)."""
    out = "".join(_TEX.get(ch, ch) for ch in one_line(s))
    for k, v in _TEX_UNICODE.items():
        out = out.replace(k, v)
    return out


def latex(t: Table) -> str:
    n = len(t.columns)
    lines = [r"% booktabs table; needs \usepackage{booktabs}", r"\begin{table}[t]", r"\centering", r"\small",
             rf"\caption{{{tex_escape(t.title)}. {tex_escape(t.caption)}}}", rf"\label{{tab:{t.name}}}",
             r"\begin{tabular}{l" + "r" * n + "}", r"\toprule"]
    if t.groups:
        heads, rules, col = [""], [], 2
        for label, span in t.groups:
            heads.append(rf"\multicolumn{{{span}}}{{c}}{{{tex_escape(label)}}}")
            rules.append(rf"\cmidrule(lr){{{col}-{col + span - 1}}}")
            col += span
        lines += [" & ".join(heads) + r" \\", "".join(rules)]
    lines += [" & ".join(tex_escape(c) for c in [t.row_header, *t.columns]) + r" \\", r"\midrule"]
    lines += [" & ".join(tex_escape(c) for c in [label, *(c.text for c in cells)]) + r" \\" for label, cells in t.rows]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)


CSV_FIELDS = ("table", "row", "column", "source", "metric", "value", "standard_error", "ci_low", "ci_high", "n",
              "step", "run_id", "record_id", "text")


def write_csv(t: Table, path: Path) -> None:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(CSV_FIELDS)
        for label, cells in t.rows:
            for col, c in zip(t.columns, cells):
                w.writerow([csv_text(x) for x in (
                    t.name, label, col, c.source or "", c.metric or "", _num(c.value), _num(c.se),
                    _num(c.ci_low), _num(c.ci_high), "" if c.n is None else c.n, "" if c.step is None else c.step, c.run_id or "",
                    c.record_id or "", c.text)])


def _num(v: float | None) -> str:
    return "" if v is None else repr(float(v))


def write_table(t: Table, out_dir: Path) -> list[Path]:
    paths = [out_dir / f"{t.name}.md", out_dir / f"{t.name}.tex", out_dir / f"{t.name}.csv"]
    paths[0].write_text(markdown(t))
    paths[1].write_text(latex(t))
    write_csv(t, paths[2])
    return paths


# ---------------------------------------------------------------- builders

def _value(v: float | None, fmt: str, **kw) -> Cell:
    if v is not None and fmt == "d":
        v = int(v)
    return Cell(text=DASH if v is None else format(v, fmt), value=v, **kw)


def _decoding_text(series) -> str:
    """How the records' answers were decoded, e.g. "greedy, 96 new tokens" (each distinct setting once)."""
    texts = []
    for s in series:
        for rec in s.points.values():
            details = rec.get("details") or {}
            g = details.get("generation") or {}
            if "temperature" in g:
                mode = "greedy" if g["temperature"] == 0 else f"sampled at temperature {g['temperature']:g}"
                samples = details.get("samples_per_instruction") or 1
                mode += f" ({samples} answers per instruction, averaged)" if samples > 1 else ""
                text = f"{mode}, {g.get('max_new_tokens')} new tokens"
                texts += [text] if text not in texts else []
    return "; ".join(texts) or "decoding not recorded"


def _rec_kw(rec: dict | None, source: str, metric: str) -> dict:
    if rec is None:
        return {"source": source, "metric": metric}
    return {"source": rec["source"], "metric": metric, "step": rec["step"], "run_id": rec["run_id"],
            "record_id": rec["record_id"]}


def _win_cell(rec: dict | None, source: str, metric: str = "win_rate") -> Cell:
    wr, se, n = win_rate_of(rec, metric)
    if wr is None:
        return Cell(source=source, metric=metric)
    text = f"{wr:.1f}" + (f" ± {se:.1f}" if se is not None else "")
    return Cell(text=text, value=wr, se=se, n=n, **_rec_kw(rec, source, metric))


def table1(data: ReportData) -> Table:
    t = Table("table1", "Efficiency of PPO: LoRA vs full fine-tune",
              "", "PPO", ["GPUs", "paper GPUs", "trainable params", "paper trainable", "peak GiB / device",
                          "s / step", "tokens / s"],
              groups=[("ours", 1), ("paper", 1), ("ours", 1), ("paper", 1), ("ours", 3)])
    notes = []
    for lora, name in ((True, "LoRA"), (False, "full fine-tune")):
        rec = pick_efficiency(data.efficiency, lora)
        prec = pick_efficiency(data.paper_efficiency, lora)
        m, pm = (rec or {}).get("metrics", {}), (prec or {}).get("metrics", {})
        kw, pkw = (lambda k: _rec_kw(rec, "harness", k)), (lambda k: _rec_kw(prec, "paper", k))
        params, pct = m.get("trainable_params"), m.get("trainable_pct")
        if pct is None and params is not None and m.get("total_params"):
            pct = 100.0 * params / m["total_params"]
        ptext = DASH if params is None and pct is None else " ".join(
            x for x in (f"{params / 1e6:.2f}M" if params is not None else "",
                        f"({pct:.3g}%)" if pct is not None else "") if x)
        cells = [
            Cell(text=DASH if m.get("gpus") is None else f"{m['gpus']:g}" if m["gpus"] else
                 f"0 (CPU, {m.get('processes') or 1} proc.)", value=m.get("gpus"), **kw("gpus")),
            _value(pm.get("gpus"), "g", **pkw("gpus")),
            Cell(text=ptext, value=pct, **kw("trainable_pct")),
            Cell(text=DASH if pm.get("trainable_pct") is None
                 else f"{'~' if pm['trainable_pct'] < 100 else ''}{pm['trainable_pct']:.3g}%",
                 value=pm.get("trainable_pct"), **pkw("trainable_pct")),
            _value(m.get("peak_memory_gib"), ".2f", **kw("peak_memory_gib")),
            _value(m.get("seconds_per_step"), ".3g", **kw("seconds_per_step")),
            _value(m.get("tokens_per_s"), ".4g", **kw("tokens_per_s")),
        ]
        t.rows.append((name, cells))
        if rec is not None:
            dev = (rec.get("details") or {}).get("device")
            notes.append(f"{name}: run {rec['run_id']} ({rec['label'].get('regularizer')}), step {rec['step']}"
                         + (f", {dev}" if dev else ""))
    t.caption = (f"Ours at preset {data.preset}: " + ("; ".join(notes) if notes else "no efficiency records")
                 + ". Trainable params: every trained parameter (policy and value model); the % is the policy's "
                 "trained share (trainable_pct). Peak memory: the largest per-device peak; s / step and tokens / s: "
                 "medians over the PPO steps after the first (as `harness reproduce` records them). Paper: A100-80GB GPUs and the share of trained parameters, from its "
                 "abstract; it reports no per-step memory or time.")
    return t


def _paper_for(data: ReportData, s: Series) -> Series | None:
    for p in data.paper_fig1:
        if p.kind == s.kind and (s.kind != "lora" or p.regularizer == s.regularizer):
            return p
    return None


def table2(data: ReportData) -> Table:
    rows = list(data.winrate)
    have = {s.key for s in rows} | {s.kind for s in rows if s.kind != "lora"}
    rows += [p for p in data.paper_fig1 if (p.key if p.kind == "lora" else p.kind) not in have]
    rows.sort(key=Series.sort_key)
    steps = sorted({st for s in data.winrate for st in s.points})
    pseries = [p for p in data.paper_fig1 if p.kind == "lora"]
    psteps = sorted({st for p in pseries for st in p.points})
    raw_cols = [f"step {st}" for st in steps] or ["ours"]
    ours_cols = [*raw_cols, *(f"LC {c}" for c in raw_cols)]  # raw block, then the length-controlled block
    pcols = [f"paper {st}" for st in psteps] + ["paper line"]
    t = Table("table2", "Win rate (%) by PPO step", "", "run", [*ours_cols, *pcols],
              groups=[(f"ours: {data.judge['name'] if data.judge else 'no records'}", len(raw_cols)),
                      ("ours, length-controlled", len(raw_cols)),
                      ("paper, Figure 1 (other judge)", len(pcols))])
    ours_ids = {s.run_id for s in data.winrate}
    for s in rows:
        mine = s.run_id in ours_ids
        cells = [_win_cell(s.points.get(st) if mine else None, "harness", metric)
                 for metric in ("win_rate", "lc_win_rate") for st in (steps or [None])]
        p = _paper_for(data, s)
        line = p is not None and p.kind != "lora"
        cells += [_win_cell(p.points.get(st) if p is not None and not line else None, "paper") for st in psteps]
        cells.append(_win_cell(p.points.get(0) if line else None, "paper"))
        t.rows.append((s.label, cells))
    ns = sorted({c.n for _, cells in t.rows for c in cells if c.source == "harness" and c.n is not None})
    ntext = DASH if not ns else str(ns[0]) if len(ns) == 1 else f"{ns[0]}-{ns[-1]}"
    t.caption = (
        f"Ours (preset {data.preset}): win rate against the evaluation set's reference outputs, ± one standard "
        f"error, judge {data.judge_text}, n = {ntext} instructions, answers "
        f"{_decoding_text([s for s in data.winrate if s.kind != 'sft_best'])}; step 0 is the SFT policy."
        f"{_best_decoding_text(data)} LC: the length-"
        "controlled win rate, the win rate predicted at equal output lengths by alpaca-eval's "
        "length_controlled_minimal model (evals/length_control.py); — where a record predates it or has under 5 "
        "judged pairs. Paper: read off its "
        f"Figure 1 (±0.2 points), judge {PAPER_JUDGE_TEXT}, against text-davinci-003; 'paper line' holds Figure 1's "
        "horizontal lines (SFT10k, and the public AlpacaFarm PPO checkpoint, a full fine-tune). The judges, "
        "references and model scale differ: compare directions within a block, not numbers across blocks.")
    return t


def _temperature(rec: dict) -> float | None:
    return ((rec.get("details") or {}).get("generation") or {}).get("temperature")


def _best_decoding_text(data: ReportData) -> str:
    """The 'SFT, best decoding' row's decoding, and the SFT policy's validation win rates it was chosen from."""
    best = data.find(data.winrate, "sft_best")
    if best is None:
        return ""
    sft = [r for r in data.validation if r["label"].get("baseline") == "sft" and _temperature(r) is not None]
    rates = {}
    for rec in sorted(sft, key=lambda r: str(r.get("created"))):  # the latest record of each decoding
        rates[_temperature(rec)] = rec
    decode = lambda t: "greedy" if t == 0 else f"temperature {t:g}"  # noqa: E731
    chosen = _temperature(best.last)
    found = ", ".join(f"{decode(t)} {r['metrics']['win_rate']:.1f}" for t, r in sorted(rates.items()))
    n = next((r["eval_set"].get("n") for r in rates.values()), None)
    return (f" 'SFT, best decoding': the SFT policy {decode(chosen) if chosen is not None else '(decoding not recorded)'}"
            + (f", the best of its validation win rates ({found}; n = {n} validation instructions, disjoint from "
               "the evaluation instructions)." if rates else "."))


def _interval_cell(value: float | None, items: dict[str, float], scale: float, **kw) -> Cell:
    """`value` (the record's metric) with the 95% bootstrap interval of its per-entity `items` (times `scale`)."""
    if value is None:
        return Cell(**kw)
    if len(items) < 2:
        return Cell(text=f"{value:.1f}", value=value, n=len(items) or None, **kw)
    _, low, high = stats.mean_interval([scale * v for v in items.values()])
    return Cell(text=f"{value:.1f} [{low:.1f}, {high:.1f}]", value=value, n=len(items), ci_low=low, ci_high=high,
                **kw)


def table3(data: ReportData) -> Table:
    t = Table("table3", "Factuality after PPO: supported facts, FActScore, facts per answer", "", "run",
              ["step", "supported (%)", "FActScore (%)", "facts / answer", "answered (%)", "n"])
    series = list(data.factuality) or [Series("", k, r, None) for k, r in (("sft", None), ("full", "kl"),
                                                                          ("lora", "kl"))]
    for s in series:
        rec = s.last if s.points else None
        m = (rec or {}).get("metrics", {})
        kw = lambda k: _rec_kw(rec, "harness", k)  # noqa: E731
        n = m.get("n", len((rec or {}).get("per_item") or []) or None)
        facts = m.get("facts_per_answer", m.get("facts"))
        answered = [i for i in (rec or {}).get("per_item") or []
                    if i.get("answered") and isinstance(i.get("facts"), int)]
        t.rows.append((s.label, [
            _value(None if rec is None else rec["step"], "d", **kw("step")),
            _interval_cell(m.get("factscore_no_penalty"), item_supported(rec), 100.0, **kw("factscore_no_penalty")),
            _interval_cell(m.get("factscore"), item_scores(rec), 100.0, **kw("factscore")),
            _interval_cell(facts, {str(i["id"]): float(i["facts"]) for i in answered}, 1.0, **kw("facts_per_answer")),
            _value(m.get("answered"), ".1f", **kw("answered")),
            _value(n, "d", **kw("n")),
        ]))
    verifier = next((s.last.get("judge") for s in data.factuality if s.points and s.last.get("judge")), None)
    vtext = f"{verifier.get('name')} ({verifier.get('model')})" if verifier else DASH
    t.caption = (f"Ours (preset {data.preset}), each run's latest step, with 95% bootstrap intervals over the "
                 "entities (10,000 draws, seed 0): supported = % of an answer's atomic facts the knowledge source "
                 "supports, averaged over answered entities (the primary measure: no length penalty); FActScore = "
                 "the same with FActScore's length penalty, which marks down answers of few facts; facts per "
                 "answered prompt; answered = % of prompts answered; n = entities asked. "
                 f"Verifier {vtext}; bios {_decoding_text(data.factuality)}. The paper reports only the direction "
                 "(PPO lowers FActScore, LoRA keeps most of it), so it has no column here.")
    return t


def build_tables(data: ReportData) -> list[Table]:
    return [table1(data), table2(data), table3(data)]
