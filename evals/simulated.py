"""The offline simulated annotator: a documented rubric of what AlpacaFarm found human annotators reward.

Each output gets a quality score; the preference is a smooth comparison of the two scores,

    s(o | x) =   1.00 * relevance      cos(MiniLM(x), MiniLM(o)), x = instruction (+ input)
               + 0.50 * adequacy       min(1, log(1 + words) / log(1 + T)); T = 8 words when the instruction asks
                                        for a short answer (classify, yes/no, one word, a number), else 80
               + 0.15 * structure      the instruction asks for a list / steps / several ideas and the output has
                                        at least two list lines
               - 1.00 * repetition     share of repeated word 3-grams
               - 0.15 * no_ending      the output stops mid-sentence (no final . ! ? ) " ' ` ] or digit)
               - 0.50 * refusal        "I'm sorry", "As an AI", "I cannot" ... at the start
    s = -1 for an empty output.

    preference(x, o_1, o_2) = 1 + sigmoid((s(o_2) - s(o_1)) / tau),   tau = 0.05

so 1.5 is an exact tie and the judge is symmetric by construction: swapping the outputs maps p to 3 - p (its
order agreement is 100%, which `evals.judging.order_agreement` measures rather than assumes). The preference is
continuous like alpaca-eval's logprob-weighted judges; `training_labels` turns it into AlpacaFarm-style binary
training labels with label noise (AlpacaFarm flips 25% of its simulated annotators' training labels).

Why these terms: AlpacaFarm (Dubois et al. 2023) and its human data show annotators prefer relevant, longer,
list-structured answers and penalise repetition, truncation and refusals; length is capped so verbosity alone
cannot win. The judge is deterministic (no seed needed to evaluate); `seed` only drives the label noise.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from collections.abc import Sequence

from evals.judging import Judge, Pair

WEIGHTS = {"relevance": 1.0, "adequacy": 0.5, "structure": 0.15, "repetition": -1.0, "no_ending": -0.15,
           "refusal": -0.5}
TAU = 0.05
MODEL = "all-MiniLM-L6-v2 rubric"
LONG_TARGET, SHORT_TARGET = 80, 8

_SHORT = re.compile(r"\b(classify|categori[sz]e|yes or no|true or false|one word|single word|in one sentence|"
                    r"how many|what is \d|calculate|compute|solve|which of|sentiment|answer with)\b", re.I)
_LIST_ASKED = re.compile(r"\b(list|steps|bullet|ideas|ways|tips|examples|outline|brainstorm|suggestions|reasons|"
                         r"items|names of)\b|\b\d+\s+(things|reasons|ways|ideas|tips|examples|names|words)\b", re.I)
_LIST_LINE = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s+\S", re.M)
_REFUSAL = re.compile(r"^\s*(i'?m sorry|i am sorry|sorry,|as an ai|i cannot|i can'?t|i am unable|i'?m unable|"
                      r"i do not have|i don'?t have)", re.I)
_ENDING = re.compile(r"[.!?)\"'`\]\d*]\s*$")


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def repetition(text: str) -> float:
    w = words(text)
    grams = [tuple(w[i:i + 3]) for i in range(len(w) - 2)]
    return 0.0 if not grams else 1.0 - len(set(grams)) / len(grams)


def rubric_features(prompt: str, output: str, relevance: float) -> dict[str, float]:
    n = len(words(output))
    target = SHORT_TARGET if _SHORT.search(prompt) else LONG_TARGET
    return {
        "relevance": relevance,
        "adequacy": min(1.0, math.log1p(n) / math.log1p(target)),
        "structure": float(bool(_LIST_ASKED.search(prompt)) and len(_LIST_LINE.findall(output)) >= 2),
        "repetition": repetition(output),
        "no_ending": float(not _ENDING.search(output.strip())),
        "refusal": float(bool(_REFUSAL.search(output))),
    }


def rubric_score(features: dict[str, float]) -> float:
    return sum(WEIGHTS[k] * v for k, v in features.items())


def rubric_version(embedder_version: str, tau: float = TAU) -> str:
    """The judge's version: the rubric's weights and targets, and the embedder that measures relevance."""
    rubric = hashlib.sha256(repr((sorted(WEIGHTS.items()), tau, LONG_TARGET, SHORT_TARGET)).encode()).hexdigest()
    return f"rubric-1:{rubric[:8]} {embedder_version}"


def default_identity() -> dict[str, str]:
    """`SimulatedJudge().identity()`, without loading the embedding model (or torch)."""
    from evals.embeddings import VERSION

    return {"name": SimulatedJudge.name, "model": MODEL, "version": rubric_version(VERSION)}


class SimulatedJudge(Judge):
    """Deterministic rubric judge over MiniLM relevance (see the module docstring)."""

    name = "simulated"

    def __init__(self, embedder=None, tau: float = TAU) -> None:
        if embedder is None:
            from evals.embeddings import shared_minilm

            embedder = shared_minilm()
        self.embedder, self.tau = embedder, tau
        self.model = MODEL
        self.version = rubric_version(getattr(embedder, "version", type(embedder).__name__), tau)
        self._emb: dict[str, object] = {}

    def _embed(self, texts: Sequence[str]) -> None:
        todo = sorted({t for t in texts if t not in self._emb})
        if todo:
            for t, v in zip(todo, self.embedder.encode(todo)):
                self._emb[t] = v
        if len(self._emb) > 20_000:  # bounded memory over long evaluations
            self._emb = {t: self._emb[t] for t in texts}

    def score(self, prompt: str, output: str) -> float:
        if not output.strip():
            return -1.0
        self._embed([prompt, output])
        relevance = float(self._emb[prompt] @ self._emb[output])
        return rubric_score(rubric_features(prompt, output, relevance))

    def _prefer(self, pairs: Sequence[Pair]) -> list[float]:
        self._embed([t for p in pairs for t in (p.prompt_text, p.output_1, p.output_2)])
        out = []
        for p in pairs:
            d = self.score(p.prompt_text, p.output_2) - self.score(p.prompt_text, p.output_1)
            out.append(1.0 + 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, d / self.tau)))))
        return out


def training_labels(preferences: Sequence[float], *, p_flip: float = 0.25, seed: int = 0) -> list[int]:
    """Binary labels (1 or 2) from preferences, ties broken by a seeded coin, each flipped with `p_flip`."""
    if not 0.0 <= p_flip <= 0.5:
        raise ValueError(f"p_flip={p_flip} must be in [0, 0.5]")
    rng = random.Random(seed)
    labels = []
    for p in preferences:
        label = 2 if p > 1.5 else 1 if p < 1.5 else rng.choice((1, 2))
        if rng.random() < p_flip:
            label = 3 - label
        labels.append(label)
    return labels
