"""The report's data: records grouped into one series per run, read from the results store (no rendering).

The lowest of the report's modules: `report_tables` and `report_figures` draw from it, `report` tests the claims
and writes everything.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from evals import stats
from harness.results import ResultsStore

DASH = "—"
REG_ORDER = ("kl", "none", "jensen_shannon", "dropout_only", "bregman", "squared_error", "clamped_kl", "negative_kl")
KIND_ORDER = ("sft", "sft_best", "full", "lora")
PAPER_JUDGE_TEXT = "AlpacaFarm annotator pool of 2023 (GPT-4/GPT-3.5/davinci-003, retired), n=805"


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


def one_line(text: object) -> str:
    """Text with its control characters (newlines too) as one space: a value never starts a row of its own."""
    return _CONTROL.sub(" ", str(text))


def md_text(text: object) -> str:
    """Text as one Markdown table cell or line: on one line, '|' escaped."""
    return one_line(text).replace("|", "\\|")


def md_code(text: object) -> str:
    """Text as a Markdown code span on one line (a backtick inside would end it early)."""
    return "`" + md_text(text).replace("`", "'") + "`"


def csv_text(text: object) -> str:
    """Text as one CSV cell: on one line, and never read as a formula by a spreadsheet (=, +, -, @ first)."""
    out = one_line(text)
    if out[:1] in ("=", "+", "-", "@"):
        try:
            float(out)
        except ValueError:
            return "'" + out
    return out


def _kind(label: Mapping) -> str:
    if label.get("baseline") == "sft":
        return "sft"
    if label.get("baseline") == "sft-best":
        return "sft_best"
    if label.get("baseline") == "full" or label.get("lora") is False:
        return "full"
    return "lora"


@dataclass
class Series:
    """One run's records of one evaluator, by step."""

    run_id: str
    kind: str  # "sft" | "sft_best" (SFT at its best decoding) | "full" | "lora"
    regularizer: str | None
    seed: int | None
    points: dict[int, dict] = field(default_factory=dict)
    tag: str = ""  # disambiguation (seed or run id), set when two series would read the same

    @property
    def key(self) -> tuple[str, str | None]:
        return (self.kind, self.regularizer)

    @property
    def label(self) -> str:
        base = {"sft": "SFT", "sft_best": "SFT, best decoding", "full": "full FT", "lora": "LoRA"}[self.kind]
        if self.kind in ("full", "lora") and self.regularizer:
            base += f" {self.regularizer}"
        return f"{base} ({self.tag})" if self.tag else base

    @property
    def steps(self) -> list[int]:
        return sorted(self.points)

    @property
    def last(self) -> dict:
        return self.points[max(self.points)]

    def sort_key(self) -> tuple:
        reg = (REG_ORDER.index(self.regularizer), "") if self.regularizer in REG_ORDER else (99, str(self.regularizer))
        return (KIND_ORDER.index(self.kind), reg, self.seed if self.seed is not None else -1, self.run_id)


def group_series(records: list[dict]) -> list[Series]:
    """Records -> one Series per run_id (the latest-created record where a run has two at one step)."""
    by_run: dict[str, Series] = {}
    for rec in sorted(records, key=lambda r: str(r.get("created"))):
        lab = rec["label"]
        s = by_run.setdefault(rec["run_id"], Series(rec["run_id"], _kind(lab), lab.get("regularizer"), lab.get("seed")))
        s.points[rec["step"]] = rec
    series = sorted(by_run.values(), key=Series.sort_key)
    clash = Counter(s.key for s in series)
    for s in series:
        if clash[s.key] > 1:
            same = [t for t in series if t.key == s.key]
            seeds_unique = len({t.seed for t in same}) == len(same)
            s.tag = f"seed {s.seed}" if seeds_unique and s.seed is not None else s.run_id[:10]
    return series


def seed_means(series: list[Series]) -> list[Series]:
    """`series` with each PPO run that has several seeds (same kind and regulariser) replaced by one series of their
    mean, at the steps every seed has: each instruction's preference averaged over the seeds, the win rate and its
    standard error over those averages (the unit the claims' paired tests resample), true KL and proxy reward
    averaged over the seeds, and the length-controlled rate as the seeds' mean (no standard error). Series of one
    seed, and the SFT baselines, are kept as they are."""
    groups: dict[tuple, list[Series]] = {}
    for s in series:
        groups.setdefault((s.kind, s.regularizer) if s.kind in ("full", "lora") else (s.run_id,), []).append(s)
    out = []
    for group in groups.values():
        if len(group) == 1:
            out.append(group[0])
            continue
        mean = Series(group[0].run_id, group[0].kind, group[0].regularizer, None, tag=f"mean of {len(group)} seeds")
        for step in sorted(set.intersection(*(set(s.points) for s in group))):
            recs = [s.points[step] for s in group]
            prefs = [preferences(r) for r in recs]
            common = sorted(set.intersection(*(set(p) for p in prefs)))
            if not common:
                continue
            averaged = [sum(p[k] for p in prefs) / len(prefs) for k in common]
            metrics = {"win_rate": stats.win_rate(averaged), "standard_error": stats.standard_error(averaged),
                       "n": len(common)}
            for key in ("true_kl", "proxy_reward", "lc_win_rate"):
                values = [r["metrics"].get(key) for r in recs]
                if all(isinstance(v, (int, float)) for v in values):
                    metrics[key] = sum(values) / len(values)
            mean.points[step] = {"step": step, "metrics": metrics, "details": recs[0].get("details"),
                                 "per_item": [{"id": k, "preference": v} for k, v in zip(common, averaged)]}
        out.append(mean if mean.points else group[0])
    return sorted(out, key=Series.sort_key)


# a win-rate record's two rates, each with the name of its standard error
WIN_RATE_METRICS = {"win_rate": "standard_error", "lc_win_rate": "lc_standard_error"}


def win_rate_of(rec: dict | None, metric: str = "win_rate") -> tuple[float | None, float | None, int | None]:
    """(win rate, standard error, n) of a win-rate record: its metrics, or computed from its per-item prefs.
    metric "lc_win_rate": the length-controlled rate (None in records older than it: they lack the lengths)."""
    if rec is None:
        return None, None, None
    m, prefs = rec["metrics"], list(preferences(rec).values())
    wr, se, n = m.get(metric), m.get(WIN_RATE_METRICS[metric]), m.get("n")
    if wr is None and prefs and metric == "win_rate":
        wr = stats.win_rate(prefs)
    if se is None and len(prefs) > 1 and metric == "win_rate":
        se = stats.standard_error(prefs)
    if n is None:
        n = len(prefs) or (rec.get("eval_set") or {}).get("n")
    return wr, se, (int(n) if n is not None else None)


def per_item(rec: dict | None, key: str) -> dict[str, float]:
    """A record's per-item values {id: value} ("preference" in [1, 2] for win rate, "score" for factuality);
    items whose value is None (an unparsed judgement, an unscored entity) are dropped."""
    items = (rec or {}).get("per_item") or []
    return {str(i["id"]): float(i[key]) for i in items if "id" in i and isinstance(i.get(key), (int, float))}


def preferences(rec: dict | None) -> dict[str, float]:
    return per_item(rec, "preference")


def item_scores(rec: dict | None) -> dict[str, float]:
    return per_item(rec, "score")


def item_answered(rec: dict | None) -> dict[str, float]:
    """A factuality record's 1.0 / 0.0 per entity: answered with at least one atomic fact, or not (empty, abstained)."""
    items = (rec or {}).get("per_item") or []
    return {str(i["id"]): float(i["answered"]) for i in items if "id" in i and isinstance(i.get("answered"), bool)}


def item_supported(rec: dict | None) -> dict[str, float]:
    """A factuality record's supported / facts per answered entity: its FActScore before the length penalty, which
    at a short generation length (48 tokens: about 3 facts per answer) would otherwise scale every score down."""
    items = (rec or {}).get("per_item") or []
    return {str(i["id"]): i["supported"] / i["facts"] for i in items
            if "id" in i and isinstance(i.get("facts"), int) and i["facts"] > 0
            and isinstance(i.get("supported"), (int, float))}


@dataclass
class ReportData:
    """Everything the renderers see: our series and records at one preset, and the paper's."""

    preset: str
    judge: dict | None
    winrate: list[Series]
    factuality: list[Series]
    efficiency: list[dict]
    paper_fig1: list[Series]
    paper_fig2: list[Series]
    paper_efficiency: list[dict]
    ours: list[dict]
    manifests: dict[str, dict]
    paper_source: str
    notes: list[str] = field(default_factory=list)
    metric: str = "win_rate"  # what Figure 1 plots for our runs: "win_rate" or "lc_win_rate"
    reproductions: list[dict] = field(default_factory=list)  # `harness reproduce` runs at this preset, oldest first
    validation: list[dict] = field(default_factory=list)  # win-rate records on validation instructions (of the judge)

    @property
    def made_by(self) -> list[str]:
        """Each `harness reproduce` at this preset that did work, oldest first: command, wall time and machine."""
        lines = []
        for r in self.reproductions:
            failed = f", with failures: {md_text(', '.join(r['failed']))}" if r.get("failed") else ""
            lines.append(f"{md_code(r.get('command') or 'harness reproduce')} finished {md_text(r.get('finished'))} in "
                         f"{r['minutes']:.1f} min of wall time (trained {r.get('runs_trained')} runs, ran "
                         f"{r.get('evaluations')} evaluations{failed}) on {md_text(r.get('machine'))}")
        return lines

    def find(self, series: list[Series], kind: str, regularizer: str | None = None) -> Series | None:
        return next(iter(self.find_all(series, kind, regularizer)), None)

    @staticmethod
    def find_all(series: list[Series], kind: str, regularizer: str | None = None) -> list[Series]:
        """Every run (seed) of `kind` and `regularizer` (any regulariser for the SFT policy), lowest seed first."""
        return [s for s in series if s.kind == kind and (kind in ("sft", "sft_best") or s.regularizer == regularizer)]

    @staticmethod
    def full_regularizer(series: list[Series]) -> str | None:
        """The full fine-tune's regulariser (kl, or the preset grid's own: clamped_kl at paper scale)."""
        return next((s.regularizer for s in series if s.kind == "full"), None)

    @property
    def judge_text(self) -> str:
        j = self.judge
        return f"{j.get('name')} ({j.get('model')}, {j.get('version')})" if j else "no judge (no win-rate records)"


def _judge_key(j: dict | None) -> tuple:
    return tuple(str((j or {}).get(k)) for k in ("name", "model", "version"))


# an eval set read from a file's validation split is named NAME:val (NAME:val[:N] for its first N)
_VALIDATION_NAME = re.compile(r":(val|validation)(\[:\d+\])?$")


def is_validation(eval_set: dict | None) -> bool:
    """Whether a record's eval set is validation instructions (`harness-bundled:val`, or any file's `val` split)."""
    return bool(_VALIDATION_NAME.search(str((eval_set or {}).get("name", ""))))


def _eval_set_key(e: dict | None) -> tuple:
    return tuple(str((e or {}).get(k)) for k in ("name", "hash"))


def _decoding_key(record: dict) -> tuple:
    g = (record.get("details") or {}).get("generation") or {}
    return tuple(g.get(k) for k in ("temperature", "top_p", "top_k", "max_new_tokens"))


def _decoding_text(key: tuple) -> str:
    temperature, top_p, top_k, max_new_tokens = key
    if temperature is None:
        return "decoding not recorded"
    return (f"{'greedy' if temperature == 0 else f'temperature {temperature:g}, top_p {top_p}, top_k {top_k}'}, "
            f"{max_new_tokens} new tokens")


def _keep_most_common(records: list[dict], key, text, what: str, notes: list[str], exempt=lambda r: False
                      ) -> list[dict]:
    """`records` whose `key` is the most common among the non-exempt ones (with the exempt ones); the others are
    left out and named in `notes` ("win-rate records of other WHAT left out: ...")."""
    counts = Counter(key(r) for r in records if not exempt(r))
    if len(counts) <= 1:
        return records
    main = counts.most_common(1)[0][0]
    notes.append(f"win-rate records of other {what} left out: "
                 f"{', '.join(f'{text(k)} ({n})' for k, n in counts.items() if k != main)}")
    return [r for r in records if exempt(r) or key(r) == main]


def load(results_root: str | Path, preset: str, judge: str | None = None) -> ReportData:
    store = ResultsStore(results_root)
    records = list(store.records())
    manifests = store.manifests()
    ours = [r for r in records if r["source"] == "harness" and r["preset"] == preset]
    paper = [r for r in records if r["source"] == "paper"]
    paper_source = "the results store"
    if not paper:
        from harness.paper_numbers import paper_records

        paper, paper_source = paper_records(), "harness.paper_numbers (the store holds no paper records)"
    notes = []
    wr = [r for r in ours if r["evaluator"] == "winrate"]
    judges = Counter(_judge_key(r["judge"]) for r in wr)
    chosen = None
    if judges:
        key = next((k for k in judges if k[0] == judge), None) if judge else judges.most_common(1)[0][0]
        if key is None:
            notes.append(f"no win-rate records of judge {judge!r}; judges present: {sorted(k[0] for k in judges)}")
        else:
            chosen = next(r["judge"] for r in wr if _judge_key(r["judge"]) == key)
            if len(judges) > 1:
                notes.append(f"win-rate records of other judges left out: "
                             f"{', '.join(f'{k[0]} ({n})' for k, n in judges.items() if k != key)}")
    wr = [r for r in wr if chosen is not None and _judge_key(r["judge"]) == _judge_key(chosen)]
    # one eval set per table: validation records (where settings and decodings are chosen) never join a test curve
    validation = [r for r in wr if is_validation(r.get("eval_set"))]
    wr = [r for r in wr if not is_validation(r.get("eval_set"))]
    wr = _keep_most_common(wr, lambda r: _eval_set_key(r.get("eval_set")), lambda k: k[0], "eval sets", notes)
    # one decoding per table, every policy decoded alike; "SFT at its best decoding" is the row that may differ
    wr = _keep_most_common(wr, _decoding_key, _decoding_text, "decodings", notes,
                           exempt=lambda r: r["label"].get("baseline") == "sft-best")
    fig = lambda r, i: r["evaluator"] == "winrate" and (r.get("details") or {}).get("figure") == i  # noqa: E731
    return ReportData(
        preset=preset, judge=chosen, winrate=group_series(wr),
        factuality=group_series([r for r in ours if r["evaluator"] == "factuality"]),
        efficiency=[r for r in ours if r["evaluator"] == "efficiency"],
        paper_fig1=group_series([r for r in paper if fig(r, 1)]),
        paper_fig2=group_series([r for r in paper if fig(r, 2)]),
        paper_efficiency=[r for r in paper if r["evaluator"] == "efficiency"],
        ours=ours, manifests=manifests, paper_source=paper_source, notes=notes,
        reproductions=store.reproductions(preset), validation=validation)


def pick_efficiency(recs: list[dict], lora: bool) -> dict | None:
    """The efficiency record for LoRA (lora=True) or the full fine-tune: the kl run if any, then the latest step."""
    cands = [r for r in recs if (_kind(r["label"]) != "full") == lora and r["label"].get("baseline") != "sft"]
    if not cands:
        return None
    return max(cands, key=lambda r: (r["label"].get("regularizer") == "kl", r["step"], str(r["created"])))
