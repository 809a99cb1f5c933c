"""The report's training-curves figure (PNG and PDF): reward, true KL, the regulariser, entropy and value loss
against PPO step, one panel each, one line per run (colour by regulariser as in the other figures; the full
fine-tune black; seeds told apart by line style). Drawn from the curves `harness reproduce` copies into the
results store (`harness.curves`); a preset with none gets no figure."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from harness.curves import CURVE_METRICS, read_curves
from harness.report_figures import COLORS, FULL_COLOR, _save

NAME = "curves"
SEED_STYLES = ("-", "--", ":", "-.")


def _label(curves: dict) -> str:
    lab = curves["label"]
    kind = "full" if lab.get("baseline") == "full" or lab.get("lora") is False else "LoRA"
    return f"{lab.get('regularizer')} {kind} seed {lab.get('seed')}"


def curves_figure(results_root: str | Path, preset: str, out_dir: Path, leave_out: frozenset[str] = frozenset()
                  ) -> list[Path]:
    """The figure of the preset's curves, without the runs in `leave_out` (those of a settings sweep)."""
    runs = [c for c in read_curves(results_root, preset) if c["run_id"] not in leave_out]
    return _save(draw(runs, preset), Path(out_dir), NAME) if runs else []


def draw(runs: list[dict], preset: str) -> Figure:
    """One panel per metric of `CURVE_METRICS`, one line per run (steps with a null value skipped)."""
    runs = sorted(runs, key=lambda c: (c["label"].get("lora") is False, str(c["label"].get("regularizer")),
                                       c["label"].get("seed") or 0, c["run_id"]))
    seeds = sorted({c["label"].get("seed") or 0 for c in runs})
    fig = Figure(figsize=(4.0 * len(CURVE_METRICS), 3.6), layout="constrained")
    axes = fig.subplots(1, len(CURVE_METRICS))
    for ax, (metric, ylabel) in zip(axes, CURVE_METRICS.items()):
        for c in runs:
            points = [(s, v) for s, v in zip(c["steps"], c["metrics"][metric]) if v is not None]
            if not points:
                continue
            full = c["label"].get("lora") is False
            color = FULL_COLOR if full else COLORS.get(c["label"].get("regularizer"), "#bcbd22")
            style = SEED_STYLES[seeds.index(c["label"].get("seed") or 0) % len(SEED_STYLES)]
            ax.plot(*zip(*points), color=color, linestyle=style, linewidth=1.3, label=_label(c))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("PPO step")
        ax.set_ylabel(ylabel)
        ax.set_title(metric, fontsize=9)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 4), fontsize=8, frameon=False)
    fig.suptitle(f"Training curves, preset {preset}: one line per run (metrics.jsonl of each run)", fontsize=10)
    return fig
