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
4. Verification: `LogitVerifier` (" True" vs " False" next-token logits, any causal LM), `LLMVerifier` (parsed
   free-text answer), or `LexicalVerifier` (word overlap, a baseline).
5. Score: supported / #facts, times the length penalty 1 if #facts > gamma else exp(1 - gamma / #facts)
   (gamma = 10; gamma = 0 disables it). Metrics: `factscore` (mean over answered answers, %),
   `factscore_no_penalty` (%), `answered` (% of answers), `facts_per_answer` (mean over answered), `n`.

Limits (measured with `python -m evals.factuality`, i.e. `verifier_accuracy`: 40 true atomic facts of the bundled
documents and 40 copies falsified by moving a year or swapping a place, seed 0, BM25 top-5):
- SmolLM2-135M-Instruct as a `LogitVerifier` is an offline proxy that does NOT work: it is at chance, says
  "True" to nearly every fact, and its True-False margin ranks facts below chance (docs/evaluation.md has the
  numbers). A FActScore from it measures how often the model says "True", not factuality: use it only to
  exercise the pipeline, never to compare policies or with published FActScore numbers (Inst-LLaMA-7B or
  ChatGPT verifiers), and prefer `LLMVerifier` on a capable model.
- `LexicalVerifier` is nearly always right on the same set, but the set flatters it: its true facts are
  verbatim document sentences and each false one differs by one word. Real
  answers paraphrase (lost recall) and can be wrong without a new word (a swapped role, a negation).
- The rule splitter is a heuristic (it keeps "X, Y and Z" lists as one fact and may pick a wrong antecedent for
  "which"), so `facts_per_answer` is not comparable with the LLM splitter's, nor with FActScore's.
- The bundled knowledge covers only its 98 people; an entity outside the knowledge source is an error, raised
  before any fact is verified.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Mapping, Sequence

from evals.atomic_facts import (ABSTAIN_PREFIXES, ABSTAIN_REQUESTS, LLMFactSplitter, RuleFactSplitter,
                                breakdown_prompt, is_abstention, parse_fact_lines, resolve_pronouns,
                                split_clauses, split_sentences)
from evals.retrieval import (SEPARATOR, BM25Retriever, BundledKnowledge, MiniLMRetriever, Passage,
                             SQLiteKnowledge, bundled_people_path, split_passages)
from evals.verify import (LexicalVerifier, LLMVerifier, LogitVerifier, Verifier, parse_true_false,
                          verification_prompt)

__all__ = [
    "ABSTAIN_PREFIXES", "ABSTAIN_REQUESTS", "BM25Retriever", "BundledKnowledge", "LLMFactSplitter", "LLMVerifier",
    "LexicalVerifier", "LogitVerifier", "MiniLMRetriever", "Passage", "RuleFactSplitter", "SEPARATOR",
    "SQLiteKnowledge", "Verifier", "bio_prompts", "breakdown_prompt", "bundled_entities", "bundled_people_path",
    "evaluate_factuality", "is_abstention", "length_penalty", "load_smollm2_verifier", "parse_fact_lines",
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
    facts_of = [[] if is_abstention(a) else splitter.split(e, a) for e, a in pairs]
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


_YEAR = re.compile(r"\b(1[0-9]{3}|20[0-2][0-9])\b")
_PLACE = re.compile(r"\b(in|at) ((?:[A-Z][\w-]+ ?)+)")


def falsify(fact: str, document: str, places: Sequence[str], rng: random.Random) -> str | None:
    """A false variant of `fact`: its first year moved by 3-40 years, else its first "in/at <Place>" swapped for
    a place of another document; None if neither applies or the new value occurs in `document`."""
    m = _YEAR.search(fact)
    if m:
        year = str(int(m.group()) + rng.choice([-1, 1]) * rng.randint(3, 40))
        return None if year in document else fact[:m.start()] + year + fact[m.end():]
    m = _PLACE.search(fact)
    if m:
        candidates = [p for p in places if p not in document]
        if candidates:
            return fact[:m.start(2)] + rng.choice(candidates) + fact[m.end(2) - (m.group(2).endswith(" ")):]
    return None


def verifier_accuracy(verifier, n: int = 40, seed: int = 0, k: int = TOP_K, knowledge=None) -> dict:
    """Accuracy of `verifier` on `n` true atomic facts of the bundled documents and `n` falsified ones.

    True facts: atomic facts (`RuleFactSplitter`) of the documents, sampled with `seed`; false ones: other facts
    passed through `falsify` (a year moved or a place swapped). Each fact is checked against the top-k BM25
    passages of its own document, exactly as in `evaluate_factuality`.
    """
    knowledge = knowledge or BundledKnowledge()
    records = {e: " ".join(p.text for p in knowledge.passages(e)) for e in knowledge.entities()}
    rng = random.Random(seed)
    splitter = RuleFactSplitter()
    facts = [(e, f) for e, doc in records.items() for f in splitter.split(e, doc)]
    rng.shuffle(facts)
    places = sorted({m.group(2).strip() for doc in records.values() for m in _PLACE.finditer(doc)})
    true, false = [], []
    for e, f in facts:
        if len(false) < n and (bad := falsify(f, records[e], places, rng)):
            false.append((e, bad))
        elif len(true) < n:
            true.append((e, f))
    retriever = BM25Retriever()
    items = [(e, f, retriever.top_k(e, f, knowledge.passages(e), k)) for e, f in true + false]
    decisions = verifier.verify_many(items)
    tp, tn = sum(decisions[:len(true)]), sum(not d for d in decisions[len(true):])
    return {"accuracy": (tp + tn) / len(items), "true_accepted": tp / len(true), "false_rejected": tn / len(false),
            "n_true": len(true), "n_false": len(false), "verifier": verifier.identity(),
            "examples_false": false[:3]}


if __name__ == "__main__":  # python -m evals.factuality [--chat | --lexical]: a verifier's accuracy (above)
    import json
    import sys
    import time

    start = time.time()
    lexical, chat = "--lexical" in sys.argv, "--chat" in sys.argv
    result = verifier_accuracy(LexicalVerifier() if lexical else load_smollm2_verifier(chat_template=chat))
    print(json.dumps(result | {"seconds": round(time.time() - start, 1)}, indent=1, ensure_ascii=False))
