"""`harness eval --factuality`: FActScore of a policy on "Tell me a bio of <entity>." (evals.factuality).

Offline (judge `simulated` or `reward-model`): the bundled people documents as knowledge, the rule-based fact
splitter, BM25 retrieval, and by default the lexical verifier (every number and 80% of the content words of the
fact in the retrieved passages). `--verifier smollm2` uses SmolLM2-135M-Instruct's True/False logits as FActScore
uses LLaMA's, but it says "True" to nearly everything and is far less accurate than the lexical verifier, so it
is not the default (`python -m evals.factuality` measures both). With `--judge openai`: the same judge model (or any
OpenAI-compatible server) splits answers into atomic facts and verifies them, as FActScore does with ChatGPT.
`--knowledge PATH` reads a FActScore-format SQLite Wikipedia instead of the bundled documents.
"""

from __future__ import annotations

import hashlib
import json
import time

from evals import factuality as F
from evals.generate import generate
from harness.eval_request import factuality_settings
from harness.results import make_record


def _knowledge(path: str | None):
    return F.SQLiteKnowledge(path) if path else F.BundledKnowledge()


def run_factuality(ev, target, model, tokenizer, settings, run_id: str, label: dict) -> dict:
    req = ev.req
    started = time.time()
    knowledge = _knowledge(getattr(req, "knowledge", None))
    entities = (F.bundled_entities() if getattr(req, "knowledge", None) is None else knowledge.entities())
    entities = entities[: req.factuality_limit] if req.factuality_limit else entities
    choice = req.verifier if req.verifier != "auto" else ("llm" if req.judge == "openai" else "lexical")
    splitter = F.RuleFactSplitter()
    if choice == "llm":
        from evals.openai_judge import make_completion_fn

        complete = make_completion_fn(req.judge_model or "gpt-4o-mini", req.judge_base_url, req.judge_api_key_env)
        splitter = F.LLMFactSplitter(complete, model=req.judge_model or "gpt-4o-mini")
        verifier = F.LLMVerifier(complete, model=req.judge_model or "gpt-4o-mini")
    elif choice == "smollm2":
        verifier = F.load_smollm2_verifier()
    else:
        verifier = F.LexicalVerifier()
    records = [{"instruction": p, "input": ""} for p in F.bio_prompts(entities)]
    set_hash = hashlib.sha256(json.dumps(entities).encode()).hexdigest()[:16]
    outputs = ev._cached_outputs("bios", [target.identity(), set_hash, settings.as_dict()],
                                 lambda: generate(model, tokenizer, records, target.template, settings, req.device,
                                                  ev._progress("bios")))
    gen_seconds = time.time() - started
    result = F.evaluate_factuality(list(zip(entities, outputs)), knowledge=knowledge, splitter=splitter,
                                   verifier=verifier)
    details = {"target": target.identity(), "generation": settings.as_dict(), "knowledge": result["details"]["knowledge"],
               "splitter": result["details"]["splitter"], "retriever": result["details"]["retriever"],
               "gamma": result["details"]["gamma"], "k": result["details"]["k"],
               "seconds": {"generate": round(gen_seconds, 1), "total": round(time.time() - started, 1)},
               "examples": [{"entity": e, "output": o[:400]} for e, o in list(zip(entities, outputs))[:3]]}
    rec = make_record(preset=req.preset, run_id=run_id, label=label, step=target.step, evaluator="factuality",
                      metrics=result["metrics"], judge=result["verifier"],
                      eval_set={"name": "bios:" + knowledge.identity().get("name", "knowledge"), "hash": set_hash,
                                "n": len(entities)},
                      per_item=[{"id": p["id"], "score": p["score"], "facts": p["facts"],
                                 "supported": p["supported"], "answered": p["answered"]} for p in result["per_item"]],
                      details=details, settings=factuality_settings(req, settings))
    ev.store.put(rec, force=req.force)
    m = result["metrics"]
    fs = "n/a" if m["factscore"] is None else f"{m['factscore']:.1f}"
    ev.log(f"factuality: FActScore {fs} | answered {m['answered']:.0f}% | {m['facts_per_answer'] or 0:.1f} facts "
           f"per answer (n={m['n']}, verifier {result['verifier'].get('name')}) | {details['seconds']['total']:.0f} s")
    return rec
