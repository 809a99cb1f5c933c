"""The report: tables, figures and a claims summary, rendered from the results store and nothing else.

    harness report --results results --out report --preset tiny      (harness/cli.py; `reproduce` ends with it)

`render_report(results_root, out_dir, preset)` reads the records and run manifests under `results_root` and
writes into `out_dir`:

    table1.{md,tex,csv}   efficiency: LoRA vs full fine-tune PPO (GPUs, trainable params, memory, time)
    table2.{md,tex,csv}   win rate by PPO step, one row per run, the paper's Figure 1 values in their own columns
    table3.{md,tex,csv}   factuality: supported facts, FActScore, facts per answer at each run's latest step
    validation.{md,tex,csv} settings chosen on the validation instructions (when the store holds such records)
    figure1.{png,pdf}     win rate vs PPO step: our panel and the paper's panel, never one axis for two judges
    figure2.{png,pdf}     win rate vs token-level true KL, one point per checkpoint: ours and the paper's
    figure3.{png,pdf}     win rate vs the proxy reward of the same answers, one point per checkpoint (ours only)
    judges.{md,csv}       judges against GPT-4, from the store's judge_check records (when it holds any)
    summary.md            the paper's four claims, tested with paired statistics on the records' per-item data
    index.md              links to everything, the results' git commits and the commands that produced them

Which records: ours are source "harness" at `preset`; the paper's are source "paper" in the store, or, when the
store holds none, `harness.paper_numbers.paper_records()` (code data, the same numbers). Win-rate records of one
judge only (the judge with the most records, or `judge=`), so no table or figure mixes judges, and of one eval set
(validation records go to their own table). One row / series per
run (a run_id); a regulariser with several runs (seeds, settings) gets one row each, told apart by seed or id.
Missing data never raises: cells read "—", claims "not measured at this preset".
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evals import stats
from harness.errors import UserError
from harness.report_data import (DASH, PAPER_JUDGE_TEXT, WIN_RATE_METRICS, ReportData, Series,
                                 item_answered, item_scores, item_supported, load, md_code, md_text,
                                 is_validation, pick_efficiency, preferences)
from harness.results import ResultsStore
from trainers.io import staged_folder

# ---------------------------------------------------------------- claims

def paired_bootstrap(a: Mapping[str, float], b: Mapping[str, float], *, scale: float = 100.0,
                     confidence: float = 0.95, n_bootstrap: int = 10_000, seed: int = 0) -> dict:
    """A minus B on their common ids, for any scores (e.g. FActScore in [0, 1]): mean difference * scale, a
    percentile bootstrap interval (ids resampled) and the exact sign test. `evals.stats.paired_comparison` does the
    same for preferences in [1, 2] only."""
    keys = sorted(set(a) & set(b))
    if not keys:
        raise ValueError("no common ids to pair")
    x, y = np.array([a[k] for k in keys]), np.array([b[k] for k in keys])
    d = x - y
    boot = scale * d[np.random.default_rng(seed).integers(0, d.size, size=(n_bootstrap, d.size))].mean(axis=1)
    lo, hi = np.quantile(boot, [(1 - confidence) / 2, 1 - (1 - confidence) / 2])
    ab, bb = int((d > 0).sum()), int((d < 0).sum())
    return {"n": len(keys), "mean_a": scale * float(x.mean()), "mean_b": scale * float(y.mean()),
            "difference": scale * float(d.mean()), "ci_low": float(lo), "ci_high": float(hi),
            "a_better": ab, "b_better": bb, "sign_test_p": stats.sign_test(ab, bb)}


# Claim 2 ("removing the KL penalty does not hurt") as equivalence: a win-rate difference under 5 points either way
# is read as no difference. Fixed in the code before the runs it judges, so the margin cannot follow the data.
CLAIM2_MARGIN = 5.0


def verdict(ci_low: float, ci_high: float, direction: int = +1) -> str:
    """The rule: 'holds' if the 95% CI excludes 0 in the claimed direction, 'contradicted' if it excludes 0 the
    other way, 'not detected' if it includes 0."""
    lo, hi = (ci_low, ci_high) if direction > 0 else (-ci_high, -ci_low)
    return "holds" if lo > 0 else "contradicted" if hi < 0 else "not detected"


@dataclass
class Test:
    """One paired test behind a claim."""

    what: str
    result: dict | None = None  # paired_bootstrap / PairedComparison.as_dict()
    verdict: str = "not measured at this preset"
    why: str = ""

    def line(self, unit: str = "points") -> str:
        if self.result is None:
            return f"- {self.what}: **{self.verdict}**" + (f" ({self.why})" if self.why else "")
        r = self.result
        return (f"- {self.what}: {r['difference']:+.2f} {unit} (A {r['mean_a']:.1f} vs B {r['mean_b']:.1f}), "
                f"95% CI [{r['ci_low']:+.2f}, {r['ci_high']:+.2f}], sign test p = {r['sign_test_p']:.3g} "
                f"(A better on {r['a_better']}, B on {r['b_better']} of n = {r['n']}): **{self.verdict}**"
                + (f"; {self.why}" if self.why else ""))


def _seeds_text(runs: list[Series]) -> str:
    return f" ({len(runs)} seeds averaged per instruction)" if len(runs) > 1 else ""


def averaged_preferences(runs: list[Series], step: int) -> dict[str, float]:
    """Each instruction's preference at `step`, averaged over `runs` (one regulariser's seeds), on the
    instructions every run has: the unit a paired interval resamples."""
    prefs = [preferences(r.points[step]) for r in runs]
    common = set.intersection(*(set(p) for p in prefs)) if prefs else set()
    return {k: sum(p[k] for p in prefs) / len(prefs) for k in common}


def compare_winrate(a: list[Series], b: list[Series], what: str, direction: int = +1,
                    margin: float | None = None) -> Test:
    """A vs B paired on per-item preferences (evals.stats.paired_comparison), each side's seeds averaged per
    instruction: at their last common step > 0, or, where B is the SFT policy (step 0 only), A's last step common
    to its seeds against step 0. With `margin`, the verdict is equivalence within +-margin points
    (`evals.stats.equivalence_verdict`) instead of a difference in `direction`."""
    if not a or not b:
        return Test(what, why=f"no {'A' if not a else 'B'} run")
    steps = lambda runs: set.intersection(*(set(r.points) for r in runs))  # noqa: E731
    if all(r.kind in ("sft", "sft_best") for r in b):
        step_a, step_b = max(steps(a) - {0}, default=None), 0
        label = f"{what}{_seeds_text(a)}" + (f" (step {step_a} vs 0)" if step_a is not None else "")
    else:
        step_a = step_b = max(steps(a) & steps(b) - {0}, default=None)
        label = f"{what}{_seeds_text(a) or _seeds_text(b)}" + (f" at step {step_a}" if step_a is not None else "")
    if step_a is None or step_b not in steps(b):
        return Test(what, why="no common PPO step > 0")
    pa, pb = averaged_preferences(a, step_a), averaged_preferences(b, step_b)
    keys = set(pa) & set(pb)
    if len(keys) < 2:
        return Test(label, why="records lack per-item preferences on common instructions")
    r = stats.paired_comparison({k: pa[k] for k in keys}, {k: pb[k] for k in keys}).as_dict()
    r["mean_a"], r["mean_b"] = r["win_rate_a"], r["win_rate_b"]
    if margin is not None:
        found = stats.equivalence_verdict(r["ci_low"], r["ci_high"], margin)
        side = ("; A better by more than the margin" if r["ci_low"] >= margin else
                "; A worse by more than the margin" if r["ci_high"] <= -margin else "")
        return Test(label, r, found, why=f"equivalence margin +-{margin:g} win-rate points{side}")
    return Test(label, r, verdict(r["ci_low"], r["ci_high"], direction))


def compare_scores(a: Series | None, b: Series | None, what: str, direction: int, measure: str = "factscore") -> Test:
    """Factuality: A's latest step vs B's latest step, paired by entity (paired_bootstrap). measure: "factscore"
    (per-entity FActScore, length penalty included) or "supported" (supported / facts), both on the entities both
    answered; or "answered" (1 if the entity got at least one atomic fact, else 0), on every common entity."""
    if a is None or b is None:
        return Test(what, why=f"no {'A' if a is None else 'B'} factuality record")
    scores = {"factscore": item_scores, "supported": item_supported, "answered": item_answered}[measure]
    sa, sb = scores(a.last), scores(b.last)
    if len(set(sa) & set(sb)) < 2:
        return Test(what, why=f"fewer than 2 entities answered by both (A {len(sa)}, B {len(sb)}, "
                              f"common {len(set(sa) & set(sb))})")
    r = paired_bootstrap(sa, sb, scale=100.0)  # per-entity scores are fractions (evals/factuality.py)
    return Test(f"{what} (steps {max(a.points)} vs {max(b.points)})", r, verdict(r["ci_low"], r["ci_high"], direction))


def efficiency_test(data: ReportData) -> Test:
    """GPUs x peak memory per device, LoRA vs full fine-tune: a measured comparison, no interval."""
    lora, full = pick_efficiency(data.efficiency, True), pick_efficiency(data.efficiency, False)
    what = "memory: LoRA devices x peak GiB per device vs full fine-tune's"
    if lora is None or full is None:
        return Test(what, why=f"no {'LoRA' if lora is None else 'full fine-tune'} efficiency record")
    tl, tf = ((r["metrics"].get("gpus") or r["metrics"].get("processes") or 1) * r["metrics"]["peak_memory_gib"]
              if r["metrics"].get("peak_memory_gib") is not None else None for r in (lora, full))
    if tl is None or tf is None:
        return Test(what, why="peak_memory_gib missing")
    pct = lora["metrics"].get("trainable_pct")
    return Test(what, verdict="holds" if tl < tf else "contradicted" if tl > tf else "not detected",
                why=f"LoRA {tl:.2f} GiB in all vs full {tf:.2f} GiB"
                + (f"; LoRA trains {pct:.3g}% of the parameters" if pct is not None else ""))


def claims(data: ReportData) -> list[tuple[str, str, list[Test]]]:
    """The paper's four claims (PAPER.md "Claims") with the tests that bear on each."""
    w, f = data.winrate, data.factuality
    lora = lambda reg: data.find_all(w, "lora", reg)  # noqa: E731
    full_w = data.find_all(w, "full", data.full_regularizer(w))
    full_f = next((s for s in f if s.kind == "full"), None)
    lora_f = data.find(f, "lora", "kl") or next((s for s in f if s.kind == "lora"), None)
    sft_f = data.find(f, "sft")
    lora_name = f"LoRA {lora_f.regularizer}" if lora_f else "LoRA"
    return [
        ("1", "LoRA PPO needs far less GPU memory than full fine-tuning (2 vs 8 A100s, ~0.2% of the parameters) "
              "and beats the full fine-tune in win rate.",
         [efficiency_test(data),
          compare_winrate(lora("kl"), data.find_all(w, "sft"), "PPO helps: A = LoRA kl, B = SFT"),
          compare_winrate(full_w, data.find_all(w, "sft"), "PPO helps: A = full fine-tune, B = SFT"),
          *([compare_winrate(lora("kl"), data.find_all(w, "sft_best"),
                             "PPO helps beyond decoding: A = LoRA kl, B = SFT at its best decoding")]
            if data.find_all(w, "sft_best") else []),
          compare_winrate(lora("kl"), full_w, "win rate: A = LoRA kl, B = full fine-tune")]),
        ("2", "Under LoRA, removing the KL penalty does not hurt win rate.",
         [compare_winrate(lora("none"), lora("kl"), "A = LoRA none, B = LoRA kl", margin=CLAIM2_MARGIN)]),
        ("3", "Other regularisers, such as Jensen-Shannon, improve win rate.",
         [compare_winrate(lora("jensen_shannon"), lora("kl"), "A = LoRA jensen_shannon, B = LoRA kl")]),
        ("4", "PPO hurts factuality (FActScore); LoRA largely mitigates this.",
         [compare_scores(x, y, f"{label} {what}", sign, measure)
          for measure, label in (("factscore", "FActScore,"),
                                 ("supported", "supported facts before the length penalty,"),
                                 ("answered", "bios answered,"))
          for x, y, what, sign in ((full_f, sft_f, "PPO hurts (full FT): A = full fine-tune, B = SFT", -1),
                                   (lora_f, sft_f, f"PPO hurts (LoRA): A = {lora_name}, B = SFT", -1),
                                   (lora_f, full_f, f"LoRA mitigates: A = {lora_name}, B = full fine-tune", +1))]),
    ]


def summary_md(data: ReportData) -> str:
    out = [f"# Summary: the paper's claims at preset `{data.preset}`", "",
           f"Win-rate judge: {data.judge_text}. The paper's judge ({PAPER_JUDGE_TEXT}) differs, so only the "
           "direction of each claim is tested, never the paper's numbers.", "",
           *([f"Made by {data.made_by[0]}."] + [f"Then {line}." for line in data.made_by[1:]] + [""]
             if data.made_by else []),
           "Rule: a paired 95% bootstrap interval (instructions or entities resampled, 10,000 draws, seed 0) of "
           "A - B; **holds** if it excludes 0 in the claimed direction, **contradicted** if it excludes 0 the other "
           "way, **not detected** if it includes 0. The sign test p is given beside it. Claim 2 ('does not hurt') is "
           f"an equivalence test with a margin of +-{CLAIM2_MARGIN:g} win-rate points, fixed before any run: "
           "**holds** if the interval lies inside the margin, **contradicted** if it lies wholly outside it, "
           "**inconclusive** otherwise. "
           "Claim 1's memory test compares GPUs x peak memory per device. Win rates are paired at the two runs' "
           "last common PPO step (against the SFT policy: at A's last step); where a regulariser has several runs (seeds), "
           "each instruction's preference is averaged over them before the instructions are resampled. Claim 4 "
           "pairs the entities both policies answered, on FActScore (points of %) and on the share of supported "
           "facts before the length penalty (points of %), which short answers would otherwise scale down; and "
           "all entities on the share answered at all (a policy that answers nothing has no FActScore).", ""]
    for num, text, tests in claims(data):
        out += [f"## Claim {num}: {text}", ""]
        out += [t.line("points" if num == "4" else "win-rate points") for t in tests]
        out.append("")
    return "\n".join(out)


def index_md(data: ReportData, files: list[Path], results_root: Path, out_dir: Path) -> str:
    commits = Counter((r.get("harness") or {}).get("git_commit") or "unknown" for r in data.ours)
    out = [f"# Report, preset `{data.preset}`", "",
           f"Rendered by `harness report --results {results_root} --out {out_dir} --preset {data.preset}` from "
           f"{len(data.ours)} records of ours and the paper's numbers from {data.paper_source}. Our records come "
           f"from `harness reproduce --all --preset {data.preset}` (or `harness train` and `harness eval` by hand); "
           f"each run's resolved configuration is in `{results_root}/runs/<run>/manifest.json`.", "", "## Files", ""]
    out += [f"- [{p.name}]({p.name})" for p in files if p.name != "index.md"]
    out += ["", "## Provenance", "", f"- win-rate judge: {data.judge_text}; the paper's: {PAPER_JUDGE_TEXT}",
            "- results' git commits (records' `harness.git_commit`): "
            + (", ".join(f"{md_code(c)} ({n} records)" for c, n in sorted(commits.items())) or "none (no records)")]
    out += [f"- note: {md_text(n)}" for n in data.notes]
    out += [f"- made by {line}" for line in data.made_by]  # escaped where made
    runs = sorted({r["run_id"] for r in data.ours})
    if runs:
        out += ["", "| run | label | evaluations (step) | git commit | command |", "|---|---|---|---|---|"]
        for rid in runs:
            m, recs = data.manifests.get(rid) or {}, [r for r in data.ours if r["run_id"] == rid]
            cmd = m.get("command") or " ".join(m.get("argv") or [])
            commit = (m.get("harness") or {}).get("git_commit") or m.get("git_commit") or DASH
            lab = ", ".join(f"{k}={v}" for k, v in recs[0]["label"].items() if v is not None)
            evs = ", ".join(sorted(f"{r['evaluator']} ({r['step']})" for r in recs))
            out.append(f"| {md_code(rid)} | {md_text(lab)} | {md_text(evs)} | {md_text(commit)} | "
                       f"{md_code(cmd) if cmd else DASH} |")
    return "\n".join(out) + "\n"


def presets_in(results_root: str | Path) -> list[str]:
    """The presets of our (source "harness") records in the store, sorted."""
    return sorted({r["preset"] for r in ResultsStore(results_root).records() if r["source"] == "harness"
                   and r["evaluator"] != "judge_check"})  # judge checks belong to no preset


def check_results_root(results_root: str | Path) -> None:
    """A results store that exists and holds records of ours (a typo would otherwise render a paper-only report)."""
    root = Path(results_root)
    if not str(results_root).strip():
        raise UserError("--results is empty; give the results store that `harness eval` / `harness reproduce` wrote "
                        "(default results/)")
    if not root.is_dir():
        raise UserError(f"--results {str(results_root)!r}: no such folder; give the results store that "
                        "`harness eval` / `harness reproduce` wrote (default results/)")
    if not presets_in(root):
        raise UserError(f"--results {str(results_root)!r} holds no evaluation records of ours ({root / 'records'} "
                        "has none of source 'harness'); evaluate something first, or give the right folder")


def render_report(results_root: str | Path, out_dir: str | Path, preset: str | None, *,
                  judge: str | None = None, metric: str = "win_rate") -> list[Path]:
    """Render every table, figure and summary of `preset` from the store at `results_root`; returns the paths.

    preset None: every preset with records of ours; one is rendered into `out_dir`, several into `out_dir/<preset>/`
    with an `out_dir/index.md` linking them; none renders the paper-only report under the name "none".
    metric: what Figure 1 plots for our runs, "win_rate" or "lc_win_rate" (Table 2 shows both).
    Everything is rendered into a temporary folder beside `out_dir` first (`trainers.io.staged_folder`): the report
    appears whole or not at all, and a failed write names its file. Then the files that the previous rendering's
    index.md lists and this rendering lacks are removed, so `out_dir` never mixes two reports; any other file there
    stays."""
    if metric not in WIN_RATE_METRICS:
        raise ValueError(f"metric={metric!r} is not known; allowed: {', '.join(WIN_RATE_METRICS)}")
    out_dir = Path(out_dir)
    earlier = rendered_before(out_dir)
    with staged_folder(out_dir) as staging:
        written = _render(Path(results_root), staging, out_dir, preset, judge=judge, metric=metric)
    paths = [out_dir / p.relative_to(staging) for p in written]
    for stale in sorted(earlier - set(paths)):  # an earlier report's file this one lacks would read as part of it
        stale.unlink(missing_ok=True)
    return paths


_INDEX_LINK = re.compile(r"^- \[[^\]]+\]\(([^()/\\]+(?:/index\.md)?)\)$")


def rendered_before(out_dir: Path) -> set[Path]:
    """The files that an earlier rendering into `out_dir` wrote, as its index.md lists them (a preset's files, or
    each preset folder of a several-preset index); nothing else in `out_dir` is ever counted as the report's."""
    index = out_dir / "index.md"
    try:
        lines = index.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return set()
    if not lines or not lines[0].startswith("# Report"):
        return set()
    found = {index}
    for line in lines:
        m = _INDEX_LINK.match(line)
        if m is None or m.group(1).startswith("."):
            continue
        name = m.group(1)
        if name.endswith("/index.md"):
            found |= rendered_before(out_dir / name.split("/")[0])
        elif (out_dir / name).is_file():
            found.add(out_dir / name)
    return found


def _render(results_root: Path, write_dir: Path, out_dir: Path, preset: str | None, *, judge: str | None,
            metric: str) -> list[Path]:
    """`render_report` into `write_dir`, its text naming `out_dir` (where the files will be)."""
    from harness import report_figures, report_tables

    if preset is None:
        found = presets_in(results_root)
        if len(found) > 1:
            files = [p for name in found for p in _render(results_root, write_dir / name, out_dir / name, name,
                                                          judge=judge, metric=metric)]
            top = write_dir / "index.md"
            top.write_text("# Reports\n\n" + "".join(f"- [{n}]({n}/index.md)\n" for n in found))
            return [*files, top]
        preset = found[0] if found else "none"
    write_dir.mkdir(parents=True, exist_ok=True)
    data = load(results_root, preset, judge)
    data.metric = metric
    files: list[Path] = []
    for table in report_tables.build_tables(data):
        files += report_tables.write_table(table, write_dir)
    files += report_figures.figure1(data, write_dir)
    files += report_figures.figure2(data, write_dir)
    files += report_figures.figure3(data, write_dir)
    from harness.report_curves import curves_figure

    # a run evaluated on validation instructions only is a point of a settings sweep: the validation table shows it
    sweep_only = frozenset({r["run_id"] for r in data.validation} - {r.get("run_id") for r in data.ours
                                                                      if not is_validation(r.get("eval_set"))})
    # none where the store holds no curves of the preset
    files += curves_figure(results_root, preset, write_dir, leave_out=sweep_only)
    from harness.report_validation import write_validation

    files += write_validation(data, write_dir)  # none where the store holds no validation records
    from harness.report_judges import write_judges

    files += write_judges(list(ResultsStore(results_root).records()), write_dir)
    (write_dir / "summary.md").write_text(summary_md(data))
    files.append(write_dir / "summary.md")
    index = write_dir / "index.md"
    index.write_text(index_md(data, files, results_root, out_dir))
    return [*files, index]
