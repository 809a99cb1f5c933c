"""`harness eval`: generate on an eval set, judge against references, write result records.

Order of work (cheap checks first, so bad input fails before any model loads):
1. validate the request: judge name and options (an API key is checked by constructing the judge), eval set
   readable with the needed fields, target resolvable (run, checkpoint or model);
2. generate the model's outputs (greedy by default) - cached by (target, eval set, settings), so a re-judge or a
   crashed evaluation costs no generation;
3. references: the eval set's own outputs, or the SFT policy's at temperature 0.7 (cached in `results/references/`);
4. judge (annotations cached in SQLite), measure the outputs' token-level true KL against the SFT policy;
5. one record per evaluator in the results store; optional factuality on "Tell me a bio of <entity>." prompts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path

import torch

from evals.generate import Target, generate, load_policy, resolve_target
from evals.judges import make_judge
from evals.judging import AnnotationCache
from evals.winrate import REFERENCE_TEMPERATURE, REFERENCE_TOP_P, cached_references, check_generations, winrate_result
from harness.eval_request import EvalRequest, generation_settings, judge_options, open_eval_set, record_settings
from harness.results import ResultsStore, make_record
from trainers.io import atomic_write_text
from trainers.specs import cache_dir


def say(msg: str) -> None:
    print(msg, flush=True)  # progress must reach a log file as it happens


def judge_of(req: EvalRequest):
    return make_judge(req.judge, **judge_options(req))


def _label_for(target: Target) -> dict:
    if target.run_dir is None:
        return {"regularizer": None, "lora": None, "seed": None, "baseline": "sft"}
    cfg = json.loads((Path(target.run_dir) / "config.json").read_text())
    return {"regularizer": cfg["regularizer"], "lora": cfg["lora"], "seed": cfg["seed"],
            "baseline": None if cfg["lora"] else "full"}


def _train_kl_at(target: Target) -> float | None:
    if target.run_dir is None or target.step == 0:
        return 0.0
    path = Path(target.run_dir) / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.is_file() else ():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("step") == target.step:
            return row.get("objective/true_kl")
    return None


class Evaluator:
    """Runs one EvalRequest; `store` receives the records, `log` the progress lines."""

    def __init__(self, request: EvalRequest, store: ResultsStore, log=None) -> None:
        self.req, self.store, self.log = request, store, log or say
        self.cache = Path(cache_dir())

    def _cached_outputs(self, kind: str, key_parts: list, make) -> list[str]:
        key = hashlib.sha256(json.dumps(key_parts, sort_keys=True, default=str).encode()).hexdigest()[:20]
        path = self.cache / "outputs" / f"{kind}-{key}.json"
        if path.is_file():
            saved = json.loads(path.read_text())
            if saved.get("key") == key:
                self.log(f"{kind}: reusing {len(saved['outputs'])} cached generations ({path})")
                return saved["outputs"]
        outputs = make()
        atomic_write_text(path, json.dumps({"key": key, "parts": key_parts, "outputs": outputs}, ensure_ascii=False,
                                           default=str))
        return outputs

    def _progress(self, what: str):
        def show(done: int, total: int, tokens: int, seconds: float) -> None:
            rate = tokens / seconds if seconds > 0 else 0.0
            eta = seconds / done * (total - done) if done else 0.0
            self.log(f"{what}: {done}/{total} prompts | {rate:.1f} tokens/s | ETA {eta:.0f} s")
        return show

    def run(self) -> list[dict]:
        req = self.req
        started = time.time()
        # 1. everything that can fail cheaply
        judge = judge_of(req) if req.winrate else None
        eval_set = open_eval_set(req.eval_set, req.limit) if req.winrate else None
        target = resolve_target(req.target, req.step)
        cfg_response = None
        if target.run_dir:
            cfg_response = json.loads((Path(target.run_dir) / "config.json").read_text())["response_len"]
        settings = generation_settings(req, cfg_response)
        run_id = req.run_id or (target.run_id if target.run_dir else f"sft:{target.policy}")
        label = req.label or _label_for(target)
        self.log(f"evaluating {target.checkpoint or target.policy} (step {target.step}) | {settings.mode} | "
                 f"max {settings.max_new_tokens} new tokens")
        model, tokenizer = load_policy(target, device=req.device)
        records = []
        if req.winrate:
            records.append(self._winrate(target, model, tokenizer, eval_set, settings, judge, run_id, label, started))
        if req.factuality:
            records.append(self._factuality(target, model, tokenizer, settings, run_id, label))
        return records

    def _winrate(self, target, model, tokenizer, eval_set, settings, judge, run_id, label, started) -> dict:
        req = self.req
        t0 = time.time()
        outputs = self._cached_outputs("model", [target.identity(), eval_set.hash, settings.as_dict()],
                                       lambda: generate(model, tokenizer, list(eval_set.records), target.template,
                                                        settings, req.device, self._progress("generate")))
        gen_seconds = time.time() - t0
        empty = check_generations(outputs, f"model outputs of {target.checkpoint or target.policy}",
                                  allow_all_empty=req.allow_empty)
        if empty:
            self.log(f"warning: {empty} of {len(outputs)} outputs are empty (judged as they are: they lose)")
        ref_settings = dataclasses.replace(settings, temperature=REFERENCE_TEMPERATURE, top_p=REFERENCE_TOP_P,
                                           seed=1234)  # a fixed seed, distinct from any evaluation seed

        def make_refs() -> list[str]:
            self.log(f"references: sampling the SFT policy {target.policy} at temperature {REFERENCE_TEMPERATURE} "
                     "(once; cached)")
            base, tok = load_policy(Target(target.policy, None, None, 0, target.template, None), device=req.device)
            return generate(base, tok, list(eval_set.records), target.template, ref_settings, req.device,
                            self._progress("references"))

        references, ref_identity = cached_references(
            eval_set, policy=target.policy, settings=ref_settings.as_dict(),
            cache_dir=self.store.root / "references", generate_fn=make_refs, write=atomic_write_text)
        t1 = time.time()
        cache = AnnotationCache(self.cache / "annotations.sqlite", refresh=req.refresh_judge_cache)
        result = winrate_result(eval_set, outputs, references, judge, cache=cache, order=req.order, seed=req.seed,
                                max_unparsed=req.judge_max_unparsed, log=self.log)
        judge_seconds = time.time() - t1
        metrics = dict(result["metrics"])
        t2 = time.time()
        metrics["true_kl"] = self._true_kl(target, model, tokenizer, eval_set, outputs)
        train_kl = _train_kl_at(target)
        if train_kl is not None:
            metrics["true_kl_train"] = train_kl
        details = {
            "target": target.identity(), "generation": settings.as_dict(), "references": ref_identity,
            "outputs_sha256": hashlib.sha256(json.dumps(outputs).encode()).hexdigest()[:16],
            "order": req.order, "annotation_cache": {"hits": cache.hits, "misses": cache.misses},
            "length_control": result.get("length_control"),
            "seconds": {"generate": round(gen_seconds, 1), "judge": round(judge_seconds, 1),
                        "true_kl": round(time.time() - t2, 1), "total": round(time.time() - started, 1)},
            "examples": [{"id": r["id"], "instruction": r["instruction"], "output": o[:500], "reference": ref[:500]}
                         for r, o, ref in list(zip(eval_set.records, outputs, references))[:3]],
        }
        cache.close()
        rec = make_record(preset=req.preset, run_id=run_id, label=label, step=target.step, evaluator="winrate",
                          metrics=metrics, judge=result["judge"], eval_set=eval_set.identity(),
                          per_item=result["per_item"], details=details, settings=record_settings(req, settings))
        self.store.put(rec, force=req.force)
        lc = metrics.get("lc_win_rate")
        lc_text = "n/a" if lc is None else f"{lc:.1f} +- {metrics['lc_standard_error']:.1f}"
        self.log(f"win rate {metrics['win_rate']:.1f} +- {metrics['standard_error']:.1f}, length-controlled {lc_text} "
                 f"(n={metrics['n']}, judge {judge.name}, {metrics['unparsed_answers_pct']:.0f}% of its answers "
                 f"unparsable) | true KL {metrics['true_kl']:.4f} | {details['seconds']['total']:.0f} s")
        return rec

    def _true_kl(self, target, model, tokenizer, eval_set, outputs) -> float:
        if target.checkpoint is None:
            return 0.0
        from evals.kl import true_kl
        from trainers.data import format_prompt
        from trainers.models import load_causal_lm

        reference = load_causal_lm(target.policy, torch.float32).to(self.req.device)
        prompts = [format_prompt(r, target.template, tokenizer) for r in eval_set.records]
        value = true_kl(model, reference, tokenizer, prompts, outputs, device=self.req.device)
        del reference
        return value

    def _factuality(self, target, model, tokenizer, settings, run_id, label) -> dict:
        from harness.factuality_eval import run_factuality

        return run_factuality(self, target, model, tokenizer, settings, run_id, label)
