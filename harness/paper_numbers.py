"""The paper's numbers (Sun, Gupta & Iyyer 2023, arXiv 2309.09055) as data, and as results records.

Everything here is transcribed from ../shared/PAPER.md; each constant carries its provenance tag:
[abstract] the abstract, [code] the authors' repository, [figure] read off the repository's figure images
(about +-0.2 win-rate points, +-0.005 KL), [assumption] a choice of ours where the paper says nothing.

The paper's win rates come from AlpacaFarm's retired simulated-annotator pool (GPT-4 / GPT-3.5 / davinci-003)
against text-davinci-003 references on the 805-instruction `alpaca_farm_evaluation` set. Our judges differ, so
the report shows these numbers beside ours, never mixed with them.

Records (`paper_records()`), all with source="paper", preset="paper":
- Figure 1: run_id `paper:<regularizer>` (kl, none, jensen_shannon), one "winrate" record per PPO step
  20/60/100/140/180, `details.figure = 1`.
- Figure 1's horizontal lines: `paper:sft` (label.baseline "sft", SFT10k, 37.0) and `paper:full` (label.baseline
  "full", lora False: the public AlpacaFarm PPO checkpoint, a full fine-tune, 46.7). Both at step 0, since they are
  lines without a step [assumption]; `details.horizontal_line = True` says so.
- Figure 2: run_id `paper:<regularizer>:figure2`, one "winrate" record per point with `metrics.true_kl`, and
  `details = {"figure": 2, "point": i}`. The paper gives no step for these points and their win rates do not
  line up with Figure 1's, so they are kept as their own runs (never merged with Figure 1's series). Their step is
  20 * (i + 1) [assumption: one point per 20-step checkpoint, the code's save interval, in plotting order]; the
  report uses them only for Figure 2, where the step plays no part.
- Efficiency: run_id `paper:lora` / `paper:full-ft`, evaluator "efficiency", step 0, metrics `gpus` and
  `trainable_pct` (only what the paper states).
"""

from __future__ import annotations

from harness.results import ResultsStore, make_record

PAPER_ID = "arXiv:2309.09055"

JUDGE = {"name": "alpacafarm-pool", "model": "GPT-4/GPT-3.5/davinci-003 pool (retired)", "version": "paper"}
"""The paper's judge: AlpacaFarm's simulated annotator pool of 2023 [code]; no longer available."""

EVAL_SET = {"name": "alpaca_farm_evaluation", "hash": "paper", "n": 805}
"""The paper's evaluation set: 805 AlpacaFarm instructions, text-davinci-003 references [code]."""

# Figure 1 [figure]: win rate (%) against text-davinci-003 by PPO step, LoRA PPO runs.
FIGURE1_STEPS = (20, 60, 100, 140, 180)
FIGURE1: dict[str, tuple[float, ...]] = {
    "kl": (35.6, 41.9, 46.7, 48.1, 47.6),
    "none": (34.5, 43.8, 48.2, 48.3, 48.2),
    "jensen_shannon": (34.5, 44.8, 49.8, 49.8, 48.7),
}

# Figure 1's horizontal lines [figure].
ALPACAFARM_PPO = 46.7
"""The public AlpacaFarm PPO checkpoint (full fine-tune, 8 GPUs): the paper's full fine-tune baseline [figure]."""
SFT10K = 37.0
"""AlpacaFarm sft10k, the policy every PPO run starts from [figure]."""

# Figure 2 [figure]: (token-level true KL, win rate %) per checkpoint, in plotting order.
FIGURE2: dict[str, tuple[tuple[float, float], ...]] = {
    "kl": ((0.005, 34.3), (0.005, 36.9), (0.009, 42.0), (0.02, 46.8), (0.028, 47.1), (0.031, 49.7)),
    "none": ((0.006, 34.3), (0.013, 36.2), (0.018, 43.0), (0.069, 48.7), (0.107, 49.2), (0.153, 48.9),
             (0.177, 46.7)),
    "dropout_only": ((0.003, 33.9), (0.014, 44.2), (0.044, 47.3), (0.086, 49.1), (0.124, 50.2)),
    "jensen_shannon": ((0.012, 39.6), (0.022, 46.9), (0.060, 51.9), (0.093, 51.2), (0.129, 47.9)),
    "bregman": ((0.01, 35.2), (0.018, 41.4), (0.079, 49.9), (0.203, 47.9), (0.273, 45.4)),
    "squared_error": ((0.006, 33.7), (0.012, 36.6), (0.021, 40.5), (0.042, 46.5), (0.058, 50.3), (0.067, 49.3)),
    "negative_kl": ((0.005, 35.2), (0.024, 34.5), (0.031, 44.4), (0.165, 48.7), (0.390, 43.8), (0.504, 45.7),
                    (0.568, 37.3), (0.575, 38.3)),
}
FIGURE2_STEP_INTERVAL = 20
"""[assumption] Figure 2 point i is stored at step 20 * (i + 1) (the code's checkpoint interval)."""

# Efficiency [abstract].
EFFICIENCY: dict[str, dict[str, float]] = {
    "lora": {"gpus": 2, "trainable_pct": 0.2},   # 2 x A100-80GB, ~0.2% of parameters tuned [abstract]
    "full": {"gpus": 8, "trainable_pct": 100.0},  # 8 x A100-80GB [abstract]; a full fine-tune tunes everything
}
GPU_MODEL = "A100-80GB"
WALL_HOURS_LORA = 10
"""~10 hours to the published results (PAPER.md "Numbers"); kept in the LoRA record's details only: it is not per
step, and which run it times is not stated."""


def _label(regularizer: str | None, lora: bool | None, baseline: str | None = None) -> dict:
    return {"regularizer": regularizer, "lora": lora, "seed": None, "baseline": baseline}


def _winrate(run_id: str, label: dict, step: int, metrics: dict, details: dict) -> dict:
    return make_record(source="paper", preset="paper", run_id=run_id, label=label, step=step, evaluator="winrate",
                       metrics=metrics, judge=dict(JUDGE), eval_set=dict(EVAL_SET),
                       details={"paper": PAPER_ID, **details}, created="2023-09-16T00:00:00+00:00")


def paper_records() -> list[dict]:
    """Every number of the paper as a results record (deterministic: same ids and contents on every call)."""
    recs: list[dict] = []
    for reg, values in FIGURE1.items():
        for step, wr in zip(FIGURE1_STEPS, values):
            recs.append(_winrate(f"paper:{reg}", _label(reg, True), step, {"win_rate": wr},
                                 {"figure": 1, "provenance": "figure"}))
    recs.append(_winrate("paper:sft", _label(None, None, "sft"), 0, {"win_rate": SFT10K},
                         {"figure": 1, "horizontal_line": True, "model": "alpaca_farm sft10k",
                          "provenance": "figure"}))
    recs.append(_winrate("paper:full", _label("clamped_kl", False, "full"), 0, {"win_rate": ALPACAFARM_PPO},
                         {"figure": 1, "horizontal_line": True, "model": "AlpacaFarm PPO (public checkpoint)",
                          "provenance": "figure"}))
    for reg, points in FIGURE2.items():
        for i, (kl, wr) in enumerate(points):
            recs.append(_winrate(f"paper:{reg}:figure2", _label(reg, True), FIGURE2_STEP_INTERVAL * (i + 1),
                                 {"win_rate": wr, "true_kl": kl},
                                 {"figure": 2, "point": i, "provenance": "figure",
                                  "step_assumed": True}))
    for kind, metrics in EFFICIENCY.items():
        recs.append(make_record(
            source="paper", preset="paper", run_id="paper:lora" if kind == "lora" else "paper:full-ft",
            label=_label(None, kind == "lora", None if kind == "lora" else "full"), step=0,
            evaluator="efficiency", metrics=dict(metrics), judge=None, eval_set=None,
            details={"paper": PAPER_ID, "gpu_model": GPU_MODEL, "provenance": "abstract",
                     **({"wall_hours": WALL_HOURS_LORA} if kind == "lora" else {})},
            created="2023-09-16T00:00:00+00:00"))
    return recs


def store_paper_records(store: ResultsStore) -> list[str]:
    """Write the paper's records into `store` (idempotent: same record ids, same bytes); returns their ids."""
    ids = []
    for rec in paper_records():
        if store.get(rec["record_id"]) != rec:
            store.put(rec, force=True)  # code data: a corrected number replaces the stored one
        ids.append(rec["record_id"])
    return ids
