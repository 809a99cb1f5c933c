"""FActScore (Min et al., 2023), offline-first: the factual precision of biographies.

Protocol, one answer to "Tell me a bio of <entity>." (`bio_prompts`) at a time:
1. Abstention (`is_abstention`): empty, opening with "I'm sorry", "I cannot", "I don't have", ... or asking for
   more information ("provide more", "could you please", ...): not answered. An answer that yields no atomic fact
   is not answered either (FActScore treats an empty fact list the same way).
2. Atomic facts: `RuleFactSplitter` (offline: sentences, clauses, pronouns resolved to the entity) or
   `LLMFactSplitter` (FActScore's "Please breakdown the following sentence into independent facts:" few-shot
   prompt through any `complete(prompt) -> str`).
3. Retrieval: the top-k (k=5) passages of the entity's own article for the query "<entity> <fact>"
   (`BM25Retriever` by default, `MiniLMRetriever` optional) from a knowledge source (`BundledKnowledge`: the
   repository's people.json; `SQLiteKnowledge`: FActScore's enwiki SQLite format).
4. Verification: `ConsistencyVerifier` (offline default: MiniLM sentence similarity plus number, polarity, name,
   contrast-word and coverage checks; `evals.consistency`), `LogitVerifier` (" True" vs " False" next-token
   logits, any causal LM), `LLMVerifier` (parsed free-text answer), or `LexicalVerifier` (word overlap, a baseline).
5. Score: supported / #facts, times the length penalty 1 if #facts > gamma else exp(1 - gamma / #facts)
   (gamma = 10; gamma = 0 disables it). Metrics: `factscore` (mean over answered answers, %),
   `factscore_no_penalty` (%), `answered` (% of answers), `facts_per_answer` (mean over answered), `n`.

Limits (measured with `python -m evals.factuality [VERIFIER] --split test`, i.e. `verifier_accuracy`, on the
hand-written facts of `harness/data/fact_checks.json`: paraphrased true facts and falsified ones; the numbers are
in docs/evaluation.md):
- `ConsistencyVerifier` cannot see swapped arguments that keep every word ("X was Y's assistant" when Y was X's),
  facts that need two sentences at once, antonyms outside its contrast lists, or wrong praise.
- SmolLM2-135M-Instruct as a `LogitVerifier` is an offline proxy that does NOT work: it says "True" to nearly
  every fact. A FActScore from it measures how often the model says "True", not factuality: use it only to
  exercise the pipeline, and prefer `LLMVerifier` on a capable model.
- `LexicalVerifier` loses paraphrases and praise-laden facts, and cannot see a negation or a swapped role.
- The rule splitter is a heuristic (it keeps "X, Y and Z" lists as one fact and may pick a wrong antecedent for
  "which"), so `facts_per_answer` is not comparable with the LLM splitter's, nor with FActScore's.
- The bundled knowledge covers only its 98 people; an entity outside the knowledge source is an error, raised
  before any fact is verified.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from evals.consistency import ConsistencyVerifier
from evals.atomic_facts import (ABSTAIN_PREFIXES, ABSTAIN_REQUESTS, LLMFactSplitter, RuleFactSplitter,
                                breakdown_prompt, is_abstention, parse_fact_lines, resolve_pronouns,
                                split_clauses, split_sentences)
from evals.retrieval import (SEPARATOR, BM25Retriever, BundledKnowledge, MiniLMRetriever, Passage,
                             SQLiteKnowledge, bundled_people_path, split_passages)
from evals.verify import (LexicalVerifier, LLMVerifier, LogitVerifier, Verifier, parse_true_false,
                          verification_prompt)
from trainers.progress import Meter

__all__ = [
    "ABSTAIN_PREFIXES", "ABSTAIN_REQUESTS", "BM25Retriever", "BundledKnowledge", "ConsistencyVerifier",
    "LLMFactSplitter", "LLMVerifier",
    "LexicalVerifier", "LogitVerifier", "MiniLMRetriever", "Passage", "RuleFactSplitter", "SEPARATOR",
    "SQLiteKnowledge", "Verifier", "bio_prompts", "breakdown_prompt", "bundled_entities", "bundled_people_path",
    "evaluate_factuality", "fact_checks_path", "is_abstention", "length_penalty", "load_fact_checks",
    "load_smollm2_verifier", "make_verifier", "parse_fact_lines",
    "parse_true_false", "resolve_pronouns", "split_clauses", "split_passages", "split_sentences",
    "verification_prompt",
]
GAMMA = 10
TOP_K = 5
VERSION = "1"


def bio_prompts(entities: Sequence[str]) -> list[str]:
    """FActScore's prompts, one per entity: "Tell me a bio of <entity>."."""
    return [f"Tell me a bio of {e}." for e in entities]


def bundled_entities() -> list[str]:
    """The 98 people of the bundled knowledge source, in file order."""
    return BundledKnowledge().entities()


def length_penalty(n_facts: int, gamma: float = GAMMA) -> float:
    """1 if n_facts > gamma else exp(1 - gamma / n_facts); gamma = 0 gives 1 (no penalty); 0 facts give 0."""
    if gamma < 0:
        raise ValueError(f"gamma={gamma} must be >= 0")
    if n_facts <= 0:
        return 0.0
    return 1.0 if n_facts > gamma else math.exp(1.0 - gamma / n_facts)


def load_smollm2_verifier(batch_size: int = 8, chat_template: bool = False) -> LogitVerifier:
    """The offline verifier: SmolLM2-135M-Instruct (float32, via `trainers.models`) as a `LogitVerifier`."""
    import torch

    from trainers.models import SMOLLM2, load_causal_lm, load_tokenizer

    return LogitVerifier(load_causal_lm(SMOLLM2, torch.float32), load_tokenizer(SMOLLM2), model_name=SMOLLM2,
                         batch_size=batch_size, chat_template=chat_template)


def _pairs(answers: Mapping[str, str] | Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    pairs = list(answers.items()) if isinstance(answers, Mapping) else [tuple(a) for a in answers]
    for i, pair in enumerate(pairs):
        if len(pair) != 2 or not isinstance(pair[0], str) or not isinstance(pair[1], str):
            raise TypeError(f"answer {i} must be an (entity, answer) pair of strings, got {pair!r}")
    return pairs


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def evaluate_factuality(answers: Mapping[str, str] | Sequence[tuple[str, str]], *, knowledge, splitter, verifier,
                        gamma: float = GAMMA, k: int = TOP_K, retriever=None) -> dict:
    """FActScore of `answers` ({entity: answer} or [(entity, answer), ...]); see the module docstring.

    Returns {"metrics", "per_item", "verifier", "details"}: per_item holds {"id", "answered", "score", "facts",
    "supported"} per answer in input order (score None when not answered); details holds the settings, the
    identities of knowledge/splitter/retriever and every fact's decision.
    """
    pairs = _pairs(answers)
    if k < 1:
        raise ValueError(f"k={k} must be >= 1")
    length_penalty(1, gamma)  # validates gamma
    missing = sorted({e for e, _ in pairs if e not in knowledge})
    if missing:
        raise KeyError(f"{len(missing)} entities are not in the knowledge source: {missing[:10]}")
    retriever = retriever or BM25Retriever()

    # 1-2. abstentions and atomic facts
    facts_of = []
    with Meter(len(pairs), "factuality: atomic facts", "bios") as meter:
        for e, a in pairs:
            facts_of.append([] if is_abstention(a) else splitter.split(e, a))
            meter.update()
    # 3. retrieval, per fact, from the entity's own passages
    items = [(e, f, retriever.top_k(e, f, knowledge.passages(e), k))
             for (e, _), facts in zip(pairs, facts_of) for f in facts]
    # 4. verification, batched across all answers
    decisions = iter(verifier.verify_many(items)) if items else iter(())
    # 5. scores
    per_item, detail_items, scores, raw, n_facts = [], [], [], [], []
    for (entity, _), facts in zip(pairs, facts_of):
        supported = [bool(next(decisions)) for _ in facts]
        answered = len(facts) > 0
        score = raw_score = None
        if answered:
            raw_score = sum(supported) / len(facts)
            score = raw_score * length_penalty(len(facts), gamma)
            scores.append(score)
            raw.append(raw_score)
            n_facts.append(len(facts))
        per_item.append({"id": entity, "answered": answered, "score": score, "facts": len(facts),
                         "supported": sum(supported)})
        detail_items.append({"id": entity, "decisions": [{"fact": f, "supported": s} for f, s in
                                                         zip(facts, supported)]})

    def pct(x):
        return None if x is None else 100.0 * x

    metrics = {"factscore": pct(_mean(scores)), "factscore_no_penalty": pct(_mean(raw)),
               "answered": pct(_mean([float(bool(f)) for f in facts_of])), "facts_per_answer": _mean(n_facts),
               "n": len(pairs)}
    details = {"version": VERSION, "gamma": gamma, "k": k, "knowledge": knowledge.identity(),
               "splitter": splitter.identity(), "retriever": retriever.identity(), "items": detail_items}
    return {"metrics": metrics, "per_item": per_item, "verifier": verifier.identity(), "details": details}


def fact_checks_path() -> Path:
    """The repository's `harness/data/fact_checks.json`, beside the bundled people."""
    return bundled_people_path().with_name("fact_checks.json")


def load_fact_checks(split: str | None = "test", path: str | Path | None = None) -> list[dict]:
    """Hand-written atomic facts about the bundled people, {"entity", "split", "label", "kind", "fact"}; `split`
    "dev" (for choosing a verifier's settings), "test" (for reporting), or None for both.

    True facts paraphrase what the entity's document says, in words of their own (none is a sentence of the
    document), some with praise as bios add it ("a brilliant ..."); false ones move a date, swap a place, a role
    or a relation, negate, or name another person's work or occupation (`kind`).
    """
    rows = json.loads(Path(path or fact_checks_path()).read_text(encoding="utf-8"))
    if split is not None and split not in {r["split"] for r in rows}:
        raise ValueError(f"split={split!r} is not in {path or fact_checks_path()}")
    return [r for r in rows if split is None or r["split"] == split]


def verifier_accuracy(verifier, split: str = "test", k: int = TOP_K, knowledge=None, checks=None) -> dict:
    """Accuracy of `verifier` on the hand-written fact checks (`load_fact_checks(split)`), each checked against
    the top-k BM25 passages of its entity's document exactly as in `evaluate_factuality`; per kind of fact too,
    and the misjudged facts."""
    knowledge = knowledge or BundledKnowledge()
    checks = load_fact_checks(split) if checks is None else checks
    retriever = BM25Retriever()
    items = [(c["entity"], c["fact"], retriever.top_k(c["entity"], c["fact"], knowledge.passages(c["entity"]), k))
             for c in checks]
    decisions = verifier.verify_many(items)
    right = [bool(d) == c["label"] for c, d in zip(checks, decisions)]
    true = [r for r, c in zip(right, checks) if c["label"]]
    false = [r for r, c in zip(right, checks) if not c["label"]]
    kinds = sorted({c["kind"] for c in checks})
    by_kind = {kind: {"n": sum(c["kind"] == kind for c in checks),
                      "accuracy": _mean([float(r) for r, c in zip(right, checks) if c["kind"] == kind])}
               for kind in kinds}
    return {"accuracy": _mean([float(r) for r in right]), "true_accepted": _mean([float(r) for r in true]),
            "false_rejected": _mean([float(r) for r in false]), "n_true": len(true), "n_false": len(false),
            "split": split, "by_kind": by_kind, "verifier": verifier.identity(),
            "wrong": [{"entity": c["entity"], "fact": c["fact"], "label": c["label"], "kind": c["kind"]}
                      for r, c in zip(right, checks) if not r]}


def make_verifier(name: str) -> Verifier:
    """An offline verifier by name: "consistency" (the default), "lexical" or "smollm2"."""
    if name == "consistency":
        return ConsistencyVerifier()
    if name == "lexical":
        return LexicalVerifier()
    if name == "smollm2":
        return load_smollm2_verifier()
    raise ValueError(f"verifier {name!r} is not known; offline verifiers: consistency, lexical, smollm2")


if __name__ == "__main__":  # python -m evals.factuality [consistency|lexical|smollm2] [--split dev|test]
    import sys
    import time

    args = sys.argv[1:]
    split = args[args.index("--split") + 1] if "--split" in args else "test"
    names = [a for a in args if not a.startswith("--") and a != split] or ["consistency"]
    start = time.time()
    result = verifier_accuracy(make_verifier(names[0]), split=split)
    print(json.dumps(result | {"seconds": round(time.time() - start, 1)}, indent=1, ensure_ascii=False))
