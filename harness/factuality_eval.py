"""`harness eval --factuality`: FActScore of a policy on "Tell me a bio of <entity>." (evals.factuality).

Offline (judge `simulated` or `reward-model`): the bundled people documents as knowledge, the rule-based fact
splitter, BM25 retrieval, and by default the consistency verifier (MiniLM similarity plus number, polarity, name,
contrast-word and coverage checks; `evals.consistency`). `--verifier lexical` is the word-overlap baseline and
`--verifier smollm2` uses SmolLM2-135M-Instruct's True/False logits as FActScore uses LLaMA's (it says "True" to
nearly everything); `python -m evals.factuality [VERIFIER]` measures each on hand-written fact checks. With
`--judge openai`: the named judge model (`--judge-model`, required; or any OpenAI-compatible server) splits answers
into atomic facts and verifies them, as FActScore does with ChatGPT, with the judge's timeout and retry cap.
`--knowledge PATH` reads a FActScore-format SQLite Wikipedia instead of the bundled documents.
"""

from __future__ import annotations

import hashlib
import json
import time

from evals import factuality as F
from evals.generate import generate
from harness.eval_request import factuality_settings, resolved_verifier
from harness.results import make_record


def _knowledge(path: str | None):
    return F.SQLiteKnowledge(path) if path else F.BundledKnowledge()


def run_factuality(ev, target, model, tokenizer, settings, run_id: str, label: dict) -> dict:
    req = ev.req
    started = time.time()
    knowledge = _knowledge(getattr(req, "knowledge", None))
    entities = (F.bundled_entities() if getattr(req, "knowledge", None) is None else knowledge.entities())
    entities = entities[: req.factuality_limit] if req.factuality_limit else entities
    choice = resolved_verifier(req)
    splitter = F.RuleFactSplitter()
    if choice == "llm":
        limits = {k: v for k, v in (("timeout", req.judge_timeout), ("max_retries", req.judge_max_retries))
                  if v is not None}
        verifier = F.LLMVerifier.from_server(req.judge_model, base_url=req.judge_base_url,
                                             api_key_env=req.judge_api_key_env, **limits)
        splitter = F.LLMFactSplitter(verifier.complete, model=req.judge_model)
    else:
        verifier = F.make_verifier(choice)
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
