"""The report's two figures, each as PNG and PDF: our panel on the left, the paper's on the right.

The panels never share a y-axis: our judge and the paper's (AlpacaFarm's retired annotator pool) differ, so
their win rates are on separate axes with the judge in each title. Colours and markers are fixed per
regulariser across both figures and panels. An empty store draws the paper's panel and a note in ours.

- Our panels draw a run with several seeds as their mean (`report_data.seed_means`: preferences averaged per
  instruction over the seeds, ± one standard error over instructions); Tables 2 and 3 keep a row per seed.
- Figure 1: win rate (raw, or length-controlled when `data.metric` is "lc_win_rate"; the paper's panel is raw: it
  reports no LC rate) vs PPO step, one line per run with ± one standard error bars; SFT as a horizontal line with
  its standard error as a band; the full fine-tune as a horizontal line when it has one evaluated step (the
  paper's public checkpoint), else as a dash-dot black curve, since its steps are as informative as LoRA's.
- Figure 2: win rate vs token-level true KL (`metrics.true_kl`), one point per checkpoint, one marker per
  regulariser, points of one run joined in step order.
- Figure 3: the judge's win rate vs the proxy reward model's mean score of the same answers
  (`metrics.proxy_reward`), one point per checkpoint labelled with its step, points of one run joined in step
  order: over-optimisation shows as a run whose proxy reward keeps rising while its win rate falls. Ours only: the
  paper reports no proxy reward.

Drawn with matplotlib's object API on an Agg canvas (no pyplot, no global backend switch).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from harness.report_data import REG_ORDER, Series, seed_means, win_rate_of

YLABELS = {"win_rate": "win rate (%)", "lc_win_rate": "length-controlled win rate (%)"}

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from harness.report_data import ReportData

_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
COLORS = dict(zip(REG_ORDER, _PALETTE))
MARKERS = dict(zip(REG_ORDER, ("o", "s", "^", "v", "D", "P", "X", "*")))
SFT_COLOR, FULL_COLOR = "#7f7f7f", "#000000"


def _style(s: Series) -> dict:
    return {"color": COLORS.get(s.regularizer, "#bcbd22"), "marker": MARKERS.get(s.regularizer, "h")}


def _save(fig: Figure, out_dir: Path, name: str) -> list[Path]:
    FigureCanvasAgg(fig)
    png, pdf = out_dir / f"{name}.png", out_dir / f"{name}.pdf"
    fig.savefig(png, dpi=150, metadata={"Software": None})
    fig.set_layout_engine("none")  # keep the layout just computed: the PDF need not redo it
    fig.savefig(pdf, metadata={"CreationDate": None, "Creator": None, "Producer": None})
    return [png, pdf]


def _empty(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=10, color="#555555",
            wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def _legend(ax: Axes, title: str | None = None, strip: str = "") -> None:
    """Below the axes, never over the data; `strip` drops a prefix every label shares (named in `title`)."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        labels = [lab.removeprefix(strip) for lab in labels]
        ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.17), ncol=3, fontsize=8,
                  frameon=False, title=title, title_fontsize=8)


def _baseline(ax: Axes, s: Series, label: str, color: str, ls: str, metric: str = "win_rate") -> None:
    rec = s.last
    wr, se, _ = win_rate_of(rec, metric)
    if wr is None:
        return
    ax.axhline(wr, color=color, ls=ls, lw=1.3, label=label, zorder=1)
    if se:
        ax.axhspan(wr - se, wr + se, color=color, alpha=0.12, lw=0, zorder=0)


def _curves(ax: Axes, series: list[Series], metric: str = "win_rate") -> bool:
    drawn = False
    for s in series:
        if s.kind == "sft":
            _baseline(ax, s, "SFT (step 0)" if s.last["step"] == 0 else s.label, SFT_COLOR, "--", metric)
            drawn = True
        elif s.kind == "sft_best":
            _baseline(ax, s, s.label, SFT_COLOR, ":", metric)
            drawn = True
        elif s.kind == "full" and len(s.points) == 1:
            _baseline(ax, s, f"{s.label} (step {s.last['step']})" if s.last["step"] else "full fine-tune",
                      FULL_COLOR, "-.", metric)
            drawn = True
        else:
            pts = [(st, *win_rate_of(s.points[st], metric)[:2]) for st in s.steps]
            pts = [p for p in pts if p[1] is not None]
            if not pts:
                continue
            steps, wr, se = zip(*pts)
            style = _style(s) if s.kind == "lora" else {"color": FULL_COLOR, "marker": "o"}
            ax.errorbar(steps, wr, yerr=[e or 0.0 for e in se], capsize=3, lw=1.4, ms=5, label=s.label,
                        ls="-" if s.kind == "lora" else "-.", **style)
            drawn = True
    return drawn


def _step_ticks(ax: Axes, series: list[Series]) -> None:
    """Ticks at the evaluated steps when they are few, else integer ticks."""
    steps = sorted({st for s in series if s.kind not in ("sft", "sft_best") for st in s.points})
    if 0 < len(steps) <= 12:
        ax.set_xticks(steps)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _our_panel(ax: Axes, data: ReportData, *, drawn: bool, xlabel: str, missing: str,
               ylabel: str = YLABELS["win_rate"]) -> None:
    """Labels, grid, legend and title of our panel (or a 'no records' note)."""
    if drawn:
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        _legend(ax)
    else:
        _empty(ax, f"{missing} at preset '{data.preset}'")
    judge = data.judge["name"] if data.judge else "none (no records)"
    ax.set_title(f"ours: preset {data.preset}, judge {judge}", fontsize=10)


def figure1(data: ReportData, out_dir: Path) -> list[Path]:
    metric = data.metric
    fig = Figure(figsize=(11, 4.6), layout="constrained")
    ours, paper = fig.subplots(1, 2)
    drawn = _curves(ours, seed_means(data.winrate), metric)
    if drawn:
        _step_ticks(ours, data.winrate)
    missing = "no win-rate records" + (" with a length-controlled win rate" if metric == "lc_win_rate" else "")
    _our_panel(ours, data, drawn=drawn, xlabel="PPO step", missing=missing, ylabel=YLABELS[metric])
    # the paper's lines carry their own labels
    lines = [s for s in data.paper_fig1 if s.kind != "lora"]
    for s in lines:
        s_label = "SFT10k" if s.kind == "sft" else "AlpacaFarm PPO (full FT)"
        _baseline(paper, s, s_label, SFT_COLOR if s.kind == "sft" else FULL_COLOR, "--" if s.kind == "sft" else "-.")
    _curves(paper, [s for s in data.paper_fig1 if s.kind == "lora"])
    _step_ticks(paper, [s for s in data.paper_fig1 if s.kind == "lora"])
    paper.set_xlabel("PPO step")
    paper.set_ylabel("win rate (%)")
    paper.grid(alpha=0.3)
    paper.set_title("paper, Figure 1: AlpacaFarm pool judge (retired), n=805", fontsize=10)
    _legend(paper)
    what = "Length-controlled win rate (ours; the paper's: raw)" if metric == "lc_win_rate" else "Win rate"
    fig.suptitle(f"{what} vs PPO step (separate judges: compare shapes, not levels)", fontsize=11)
    return _save(fig, out_dir, "figure1")


def _kl_points(ax: Axes, series: list[Series]) -> bool:
    drawn = False
    for s in series:
        pts = [(s.points[st]["metrics"].get("true_kl"), *win_rate_of(s.points[st])[:2]) for st in s.steps]
        pts = [p for p in pts if p[0] is not None and p[1] is not None]
        if not pts:
            continue
        kl, wr, se = zip(*pts)
        style = _style(s) if s.kind == "lora" else {"color": FULL_COLOR if s.kind == "full" else SFT_COLOR,
                                                      "marker": "o"}
        ax.errorbar(kl, wr, yerr=[e or 0.0 for e in se], capsize=2, lw=0.8, ms=6, alpha=0.9, label=s.label,
                    ls=":", **style)
        drawn = True
    return drawn


def figure2(data: ReportData, out_dir: Path) -> list[Path]:
    fig = Figure(figsize=(11, 4.6), layout="constrained")
    ours, paper = fig.subplots(1, 2)
    _our_panel(ours, data, drawn=_kl_points(ours, seed_means(data.winrate)),
               xlabel="token-level true KL(policy || reference)",
               missing="no win-rate records with true_kl")
    if _kl_points(paper, data.paper_fig2):
        paper.set_xscale("log")  # the paper's points crowd below KL 0.05 on a linear axis
    paper.set_xlabel("token-level true KL (log scale)")
    paper.set_ylabel("win rate (%)")
    paper.grid(alpha=0.3)
    paper.set_title("paper, Figure 2: AlpacaFarm pool judge (retired), n=805", fontsize=10)
    _legend(paper, title="LoRA PPO, regulariser", strip="LoRA ")
    fig.suptitle("Win rate vs true KL, one point per checkpoint (separate judges)", fontsize=11)
    return _save(fig, out_dir, "figure2")



def _proxy_points(ax: Axes, series: list[Series], metric: str) -> bool:
    drawn = False
    for s in series:
        pts = [(st, s.points[st]["metrics"].get("proxy_reward"), *win_rate_of(s.points[st], metric)[:2])
               for st in s.steps]
        pts = [p for p in pts if p[1] is not None and p[2] is not None]
        if not pts:
            continue
        steps, proxy, wr, se = zip(*pts)
        style = _style(s) if s.kind == "lora" else {"color": FULL_COLOR if s.kind == "full" else SFT_COLOR,
                                                      "marker": "o"}
        ax.errorbar(proxy, wr, yerr=[e or 0.0 for e in se], capsize=2, lw=1.0, ms=6, alpha=0.9, label=s.label,
                    ls="-", **style)
        # the first and last step only: a run's middle checkpoints crowd together where the proxy barely moves
        for i in sorted({0, len(steps) - 1}):
            ax.annotate(str(steps[i]), (proxy[i], wr[i]), textcoords="offset points", xytext=(4, 4), fontsize=7,
                        color=style["color"])
        drawn = True
    return drawn


def figure3(data: ReportData, out_dir: Path) -> list[Path]:
    metric = data.metric
    fig = Figure(figsize=(6.5, 4.8), layout="constrained")
    ax = fig.subplots(1, 1)
    _our_panel(ax, data, drawn=_proxy_points(ax, seed_means(data.winrate), metric),
               xlabel="proxy reward (the reward model PPO optimises; mean over the evaluated answers)",
               missing="no win-rate records with proxy_reward", ylabel=YLABELS[metric])
    fig.suptitle("Judge win rate vs proxy reward per checkpoint (labels: first and last step)", fontsize=11)
    return _save(fig, out_dir, "figure3")
