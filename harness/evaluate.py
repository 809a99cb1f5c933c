"""`harness eval`: evaluate a run, checkpoint or model with `evals.evaluation` and store its records.

Cheap checks first, so bad input fails before any model loads: the target (run, checkpoint or model; a
checkpoint's files against its manifest), the eval set (readable, with the needed fields), the judge (an API key
is checked by constructing it). The evaluators run in the order asked, each as its module in `evals.evaluators`
says; each record is stored as soon as its evaluator finishes: a crash during factuality keeps the win-rate
record.
"""

from __future__ import annotations

import time

from evals.evaluation import EvalResult, PolicyEvaluation
from evals.evaluators import EvalInputs, evaluator_spec
from evals.generate import Target, resolve_target
from evals.judges import make_judge
from harness.eval_request import EvalRequest, open_eval_set
from harness.results import ResultsStore, check_record_fields, make_record
from trainers.runfolder import RunFolder
from trainers.specs import cache_dir
from trainers.trackers import log_evaluation


def say(msg: str) -> None:
    print(msg, flush=True)  # progress must reach a log file as it happens


def _label_for(target: Target) -> dict:
    if target.run_dir is None:
        return {"regularizer": None, "lora": None, "seed": None, "baseline": "sft"}
    cfg = RunFolder(target.run_dir).read_config()
    return {"regularizer": cfg["regularizer"], "lora": cfg["lora"], "seed": cfg["seed"],
            "baseline": None if cfg["lora"] else "full"}


class Evaluator:
    """Runs one EvalRequest; `store` receives the records, `log` the progress lines."""

    def __init__(self, request: EvalRequest, store: ResultsStore, log=None) -> None:
        self.req, self.store, self.log = request, store, log or say
        self.run_dir: str | None = None  # the evaluated run's folder, once resolved

    def run(self) -> list[dict]:
        req, cfg = self.req, self.req.config
        started = time.time()
        target = resolve_target(req.target, req.step)  # a checkpoint's files checked before any model loads
        if cfg.proxy_reward and not cfg.proxy_reward.startswith("rule:"):
            from trainers.preflight import reward_model_problem

            if (problem := reward_model_problem("--proxy-reward", cfg.proxy_reward)) is not None:
                raise ValueError(problem)
        eval_set = open_eval_set(req.eval_set, cfg.limit) if req.uses("eval_set") else None
        judge = make_judge(cfg.judge, cfg.judge_options, device=cfg.device, seed=cfg.seed) if req.uses("judge") \
            else None
        inputs = EvalInputs(eval_set=eval_set, judge=judge, references_dir=self.store.root / "references")
        run_id = req.run_id or (target.run_id if target.run_dir else f"sft:{target.policy}")
        label = req.label or _label_for(target)
        for evaluator in req.evaluators:
            check_record_fields(preset=req.preset, run_id=run_id, label=label, step=target.step, evaluator=evaluator)
        evaluation = PolicyEvaluation(cfg, target, cache_dir=cache_dir(), log=self.log, started=started)
        self.run_dir = target.run_dir  # a run's evaluations also go to the trackers its training reported to
        return [self._store(evaluator_spec(name).run(evaluation, inputs), run_id, label) for name in req.evaluators]

    def _store(self, result: EvalResult, run_id: str, label: dict) -> dict:
        rec = make_record(preset=self.req.preset, run_id=run_id, label=label, **result.record_fields())
        self.store.put(rec, force=self.req.force)
        self.log(result.summary)
        if self.run_dir is not None:
            log_evaluation(self.run_dir, rec["evaluator"], rec["step"], rec["metrics"], log=self.log)
        return rec


def evaluate(req: EvalRequest, results: str | Path) -> int:
    """Run `req`, store its records under `results` and name each on stdout."""
    store = ResultsStore(results)
    for rec in Evaluator(req, store).run():
        print(f"record {store.record_path(rec['record_id'])}: {rec['evaluator']} "
              + ", ".join(f"{k}={v:.4g}" for k, v in rec["metrics"].items() if isinstance(v, (int, float))))
    return 0
