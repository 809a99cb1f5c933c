"""Evaluating one policy under an `EvalConfig`: generate, judge or verify, measure; returns what a record holds.

The caller resolves the target, opens the eval set and the judge (cheap checks first, so bad input fails before any
model loads), and stores the results with its own bookkeeping (run id, label, where records live). Here:
1. the policy's outputs (greedy by default), cached by (target, eval set, settings), a checkpoint by its content
   digest (verified against its manifest first), so a re-judge or a crashed evaluation costs no generation;
2. references: the eval set's own outputs, or the SFT policy's at temperature 0.7 (cached in `references_dir`);
3. judge (annotations cached in SQLite), measure the outputs' token-level true KL against the SFT policy;
4. factuality: FActScore on "Tell me a bio of <entity>." prompts (`evals.factuality`).
Each evaluation is registered by name, with the metrics its records carry, in `evals.evaluators`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from evals import factuality as F
from evals.config import EvalConfig
from evals.evalsets import EvalSet
from evals.generate import Target, generate, load_policy
from evals.generation_settings import GenerationSettings
from evals.judging import AnnotationCache, Judge
from evals.kl import rounded_kl
from evals.winrate import REFERENCE_TEMPERATURE, REFERENCE_TOP_P, cached_references, check_generations, winrate_result
from trainers.io import atomic_write_text
from trainers.progress import Meter, is_terminal
from trainers.runfolder import RunFolder


@dataclass(frozen=True, slots=True)
class EvalResult:
    """One evaluator's result: the fields of a results record besides who ran it (run id, label, preset)."""

    evaluator: str
    step: int
    metrics: dict
    judge: dict
    eval_set: dict
    per_item: list
    details: dict
    settings: dict
    summary: str  # one line for the log

    def record_fields(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "summary"}


class PolicyEvaluation:
    """The evaluations of one target: its policy loaded once, its outputs cached under `cache_dir`."""

    def __init__(self, config: EvalConfig, target: Target, *, cache_dir: str | Path,
                 log: Callable[[str], None] = print, started: float | None = None) -> None:
        self.config, self.target, self.cache, self.log = config, target, Path(cache_dir), log
        self.started = time.time() if started is None else started
        response_len = None
        if target.run_dir:
            response_len = RunFolder(target.run_dir).read_config()["response_len"]
        self.settings = config.generation(response_len)
        log(f"evaluating {target.checkpoint or target.policy} (step {target.step}) | {self.settings.mode} | "
            f"max {self.settings.max_new_tokens} new tokens")
        self.model, self.tokenizer = load_policy(target, device=config.device)

    # ---- win rate ---------------------------------------------------------------------------------------------
    def winrate(self, eval_set: EvalSet, judge: Judge, references_dir: str | Path) -> EvalResult:
        cfg, target, settings = self.config, self.target, self.settings
        train_kl = _train_kl_at(target)  # before any generation: a damaged log must not cost an evaluation
        t0 = time.time()
        outputs = []
        for k, sample in enumerate(cfg.sample_generations(settings)):
            what = "generate" if cfg.samples == 1 else f"generate (sample {k + 1} of {cfg.samples})"
            outputs += self._cached_outputs("model", [target.identity(), eval_set.hash, sample.as_dict()],
                                            lambda: self._generate(self.model, self.tokenizer, eval_set.records,
                                                                   sample, what))
        records = eval_set.records * cfg.samples  # aligned with `outputs`: sample-major
        gen_seconds = time.time() - t0
        empty = check_generations(outputs, f"model outputs of {target.checkpoint or target.policy}",
                                  allow_all_empty=cfg.allow_empty)
        if empty:
            self.log(f"warning: {empty} of {len(outputs)} outputs are empty (judged as they are: they lose)")
        references, ref_identity = self._references(eval_set, references_dir)
        t1 = time.time()
        cache = AnnotationCache(self.cache / "annotations.sqlite", refresh=cfg.refresh_judge_cache)
        result = winrate_result(eval_set, outputs, references, judge, cache=cache, order=cfg.order, seed=cfg.seed,
                                max_unparsed=cfg.judge_max_unparsed, log=self.log, samples=cfg.samples)
        judge_seconds = time.time() - t1
        metrics = dict(result["metrics"])
        t2 = time.time()
        metrics["true_kl"] = rounded_kl(self._true_kl(records, outputs), "true_kl")
        if train_kl is not None:
            metrics["true_kl_train"] = train_kl
        t3 = time.time()
        proxy = self._proxy_reward(records, outputs)
        if proxy is not None:
            metrics["proxy_reward"], proxy_model = proxy
        details = {
            "target": target.identity(), "generation": settings.as_dict(), "references": ref_identity,
            "outputs_sha256": hashlib.sha256(json.dumps(outputs).encode()).hexdigest()[:16],
            "samples_per_instruction": cfg.samples, "order": cfg.order,
            "annotation_cache": {"hits": cache.hits, "misses": cache.misses},
            "length_control": result.get("length_control"),
            "seconds": {"generate": round(gen_seconds, 1), "judge": round(judge_seconds, 1),
                        "true_kl": round(t3 - t2, 1), "proxy_reward": round(time.time() - t3, 1),
                        "total": round(time.time() - self.started, 1)},
            **({"proxy_reward_model": proxy_model} if proxy is not None else {}),
            "examples": [{"id": r["id"], "instruction": r["instruction"], "output": o[:500], "reference": ref[:500]}
                         for r, o, ref in list(zip(eval_set.records, outputs, references))[:3]],
        }
        cache.close()
        lc = metrics.get("lc_win_rate")
        lc_text = "n/a" if lc is None else f"{lc:.1f} +- {metrics['lc_standard_error']:.1f}"
        summary = (f"win rate {metrics['win_rate']:.1f} +- {metrics['standard_error']:.1f}, length-controlled "
                   f"{lc_text} (n={metrics['n']}, judge {judge.name}, {metrics['unparsed_answers_pct']:.0f}% of its "
                   f"answers unparsable) | true KL {metrics['true_kl']:.4f}"
                   + (f" | proxy reward {metrics['proxy_reward']:.3f}" if proxy is not None else "")
                   + f" | {details['seconds']['total']:.0f} s")
        return EvalResult("winrate", target.step, metrics, result["judge"], eval_set.identity(), result["per_item"],
                          details, cfg.winrate_settings(settings), summary)

    def _references(self, eval_set: EvalSet, references_dir: str | Path) -> tuple[list[str], dict]:
        """The eval set's outputs, or the SFT policy's at the reference settings (a fixed seed, distinct from any
        evaluation seed), generated once and cached."""
        target = self.target
        ref_settings = dataclasses.replace(self.settings, temperature=REFERENCE_TEMPERATURE, top_p=REFERENCE_TOP_P,
                                           seed=1234)

        def make_refs() -> list[str]:
            self.log(f"references: sampling the SFT policy {target.policy} at temperature {REFERENCE_TEMPERATURE} "
                     "(once; cached)")
            base, tok = load_policy(Target(target.policy, None, None, 0, target.template, None),
                                    device=self.config.device)
            return self._generate(base, tok, eval_set.records, ref_settings, "references")

        return cached_references(eval_set, policy=target.policy, settings=ref_settings.as_dict(),
                                 cache_dir=references_dir, generate_fn=make_refs, write=atomic_write_text)

    def _proxy_reward(self, records: list[dict], outputs: list[str]) -> tuple[float, str] | None:
        """(mean score of the outputs, the model by content) under the proxy reward model: the configured one, else
        the evaluated run's; None where there is none, or it is a rule."""
        spec, seed = self.config.proxy_reward, self.config.seed
        if spec is None and self.target.run_dir:
            run = RunFolder(self.target.run_dir).read_config()
            spec, seed = run.get("reward"), run.get("seed", seed)  # a `head:` reward's head is seeded by the run
        if not spec or spec.startswith("rule:"):
            return None
        from evals.reward_judge import RewardModelJudge
        from trainers.data import format_prompt
        from trainers.identity import model_fingerprint

        judge = RewardModelJudge(spec, template=self.target.template, device=self.config.device, seed=seed)
        prompts = [format_prompt(r, self.target.template, judge.tokenizer) for r in records]
        return float(judge.rewards(prompts, outputs).mean()), model_fingerprint(spec)

    def _true_kl(self, records: list[dict], outputs: list[str]) -> float:
        if self.target.checkpoint is None:
            return 0.0
        import torch

        from evals.kl import true_kl
        from trainers.data import format_prompt
        from trainers.models import load_causal_lm

        device = self.config.device
        reference = load_causal_lm(self.target.policy, torch.float32).to(device)
        prompts = [format_prompt(r, self.target.template, self.tokenizer) for r in records]
        value = true_kl(self.model, reference, self.tokenizer, prompts, outputs, device=device)
        del reference
        return value

    # ---- factuality -------------------------------------------------------------------------------------------
    def factuality(self) -> EvalResult:
        """FActScore of the policy on "Tell me a bio of <entity>." (`evals.factuality`).

        Offline: the bundled people documents as knowledge (or a FActScore-format SQLite Wikipedia, `knowledge`),
        the rule-based fact splitter, BM25 retrieval, and by default the consistency verifier (`evals.consistency`);
        `lexical` is the word-overlap baseline and `smollm2` uses SmolLM2-135M-Instruct's True/False logits as
        FActScore uses LLaMA's (`python -m evals.factuality [VERIFIER]` measures each on hand-written fact checks).
        With the OpenAI judge: the named judge model splits answers into atomic facts and verifies them, as
        FActScore does with ChatGPT.
        """
        cfg, target, settings = self.config, self.target, self.settings
        cfg.check_factuality()
        started = time.time()
        knowledge = F.SQLiteKnowledge(cfg.knowledge) if cfg.knowledge else F.BundledKnowledge()
        entities = F.bundled_entities() if cfg.knowledge is None else knowledge.entities()
        entities = entities[: cfg.factuality_limit] if cfg.factuality_limit else entities
        splitter, verifier = _splitter_and_verifier(cfg)
        records = [{"instruction": p, "input": ""} for p in F.bio_prompts(entities)]
        set_hash = hashlib.sha256(json.dumps(entities).encode()).hexdigest()[:16]
        outputs = self._cached_outputs("bios", [target.identity(), set_hash, settings.as_dict()],
                                       lambda: self._generate(self.model, self.tokenizer, records, settings, "bios"))
        gen_seconds = time.time() - started
        result = F.evaluate_factuality(list(zip(entities, outputs)), knowledge=knowledge, splitter=splitter,
                                       verifier=verifier)
        found = result["details"]
        details = {"target": target.identity(), "generation": settings.as_dict(), "knowledge": found["knowledge"],
                   "splitter": found["splitter"], "retriever": found["retriever"], "gamma": found["gamma"],
                   "k": found["k"],
                   "seconds": {"generate": round(gen_seconds, 1), "total": round(time.time() - started, 1)},
                   "examples": [{"entity": e, "output": o[:400]} for e, o in list(zip(entities, outputs))[:3]]}
        m = result["metrics"]
        fs = "n/a" if m["factscore"] is None else f"{m['factscore']:.1f}"
        summary = (f"factuality: FActScore {fs} | answered {m['answered']:.0f}% | {m['facts_per_answer'] or 0:.1f} "
                   f"facts per answer (n={m['n']}, verifier {result['verifier'].get('name')}) | "
                   f"{details['seconds']['total']:.0f} s")
        eval_set = {"name": "bios:" + knowledge.identity().get("name", "knowledge"), "hash": set_hash,
                    "n": len(entities)}
        per_item = [{"id": p["id"], "score": p["score"], "facts": p["facts"], "supported": p["supported"],
                     "answered": p["answered"]} for p in result["per_item"]]
        return EvalResult("factuality", target.step, m, result["verifier"], eval_set, per_item, details,
                          cfg.factuality_settings(settings), summary)

    # ---- shared -----------------------------------------------------------------------------------------------
    def _generate(self, model, tokenizer, records, settings: GenerationSettings, what: str) -> list[str]:
        return generate(model, tokenizer, list(records), self.target.template, settings, self.config.decoding,
                        self.config.device, self._progress(what))

    def _cached_outputs(self, kind: str, key_parts: list, make: Callable[[], list[str]]) -> list[str]:
        """Outputs cached by everything that makes them: the target (a checkpoint by its content digest), the
        eval set and the settings. A cache file that is damaged or not ours is regenerated, never trusted."""
        key = hashlib.sha256(json.dumps(key_parts, sort_keys=True, default=str).encode()).hexdigest()[:20]
        path = self.cache / "outputs" / f"{kind}-{key}.json"
        if path.is_file():
            try:
                saved = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, ValueError):
                saved = None
            outputs = saved.get("outputs") if isinstance(saved, dict) and saved.get("key") == key else None
            if isinstance(outputs, list) and all(isinstance(o, str) for o in outputs):
                self.log(f"{kind}: reusing {len(outputs)} cached generations ({path})")
                return outputs
            self.log(f"{kind}: {path} is damaged; generating again")
        outputs = make()
        atomic_write_text(path, json.dumps({"key": key, "parts": key_parts, "outputs": outputs}, ensure_ascii=False,
                                           default=str))
        return outputs

    def _progress(self, what: str):
        meter = None

        def show(done: int, total: int, tokens: int, seconds: float) -> None:
            nonlocal meter
            if is_terminal():  # a bar with rate and ETA; a line per batch in logs
                meter = meter or Meter(total, what, "prompts", tty=True)
                meter.update(done - meter.done)
                if done >= total:
                    meter.close()
                return
            rate = tokens / seconds if seconds > 0 else 0.0
            eta = seconds / done * (total - done) if done else 0.0
            self.log(f"{what}: {done}/{total} prompts | {rate:.1f} tokens/s | ETA {eta:.0f} s")
        return show


def _splitter_and_verifier(cfg: EvalConfig):
    """Rules and an offline verifier (`evals.factuality.make_verifier`); with `llm`, the named model on an
    OpenAI-compatible server splits and verifies, with the judge's timeout and retry cap."""
    choice = cfg.factuality_verifier
    if choice == "llm":
        server = cfg.llm_server()
        limits = {k: server[k] for k in ("timeout", "max_retries") if server.get(k) is not None}
        verifier = F.LLMVerifier.from_server(server["model"], base_url=server["base_url"],
                                             api_key_env=server["api_key_env"], **limits)
        return F.LLMFactSplitter(verifier.complete, model=server["model"]), verifier
    return F.RuleFactSplitter(), F.make_verifier(choice)


def _train_kl_at(target: Target) -> float | None:
    """The run's logged true KL at the evaluated step (0 for the base policy; None when the log has no such step),
    rounding below zero read as 0. A damaged log is refused, as everywhere else it is read."""
    if target.run_dir is None or target.step == 0:
        return 0.0
    run = RunFolder(target.run_dir)
    row = run.metrics_at(target.step)
    value = None if row is None else row.get("objective/true_kl")
    return None if value is None else rounded_kl(value, f"{run.metrics_path}: step {target.step}: objective/true_kl")
