"""The pairwise judge interface, its annotation cache, and order handling (shared by every judge).

A judge answers, for (instruction, output_1, output_2), a preference in [1, 2]: 1 = output_1 is better,
2 = output_2 is better, 1.5 = a tie (alpaca-eval's convention; output_1 is the reference, output_2 the model).
`None` means the judge's answer could not be parsed: the pair is dropped from the metric, never counted as a
loss or a draw. A judge that cannot be reached raises `JudgeError` after its own retries; nothing is cached then.

`annotate` wraps any judge:
- identical outputs are a draw without asking (alpaca-eval does the same);
- `order="both"` asks in both orders and averages (the second answer mapped back: p -> 3 - p), which cancels a
  judge's position bias; `order="random"` switches the order per instruction with a seeded coin (alpaca-eval's
  default); `order="fixed"` asks once as given;
- every parsed answer is cached under (judge identity, instruction, input, first, second) in SQLite, so a rerun
  costs nothing and a crash loses at most the batch in flight. An unparsable answer (None) is never cached: a
  rerun asks again rather than inherit one bad reply; `refresh=True` ignores cached answers and overwrites them.
"""

from __future__ import annotations

import hashlib
import json
import random
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Order = Literal["both", "random", "fixed"]
ORDERS = ("both", "random", "fixed")


class JudgeError(RuntimeError):
    """The judge could not answer (network, API key, server). Never recorded as a preference."""


@dataclass(frozen=True, slots=True)
class Pair:
    """One comparison. `output_1` is the reference, `output_2` the model under evaluation."""

    instruction: str
    input: str
    output_1: str
    output_2: str
    id: str = ""

    def swapped(self) -> "Pair":
        return Pair(self.instruction, self.input, self.output_2, self.output_1, self.id)

    @property
    def prompt_text(self) -> str:
        """AlpacaFarm's merge of an instruction with its input."""
        return f"{self.instruction}\n\n{self.input}" if self.input else self.instruction


class Judge:
    """Base class: subclasses set `name`, `model`, `version` and implement `_prefer`."""

    name: str = "judge"
    model: str = ""
    version: str = ""

    def identity(self) -> dict[str, str]:
        return {"name": self.name, "model": self.model, "version": self.version}

    def _prefer(self, pairs: Sequence[Pair]) -> list[float | None]:
        """Preferences for the pairs exactly in the order given (output_1 first)."""
        raise NotImplementedError

    def close(self) -> None:
        pass


def _key(identity: dict, pair: Pair) -> str:
    blob = json.dumps([identity, pair.instruction, pair.input, pair.output_1, pair.output_2], ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


class AnnotationCache:
    """SQLite table (key -> preference); safe across processes, each insert committed. `refresh`: read nothing
    from the table (every pair is asked again), write the new answers over the old."""

    def __init__(self, path: str | Path | None, refresh: bool = False) -> None:
        self.path = Path(path) if path else None
        self.refresh = refresh
        self._lock = threading.Lock()
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path) if self.path else ":memory:", timeout=60, check_same_thread=False)
        self._db.execute("CREATE TABLE IF NOT EXISTS annotations (key TEXT PRIMARY KEY, preference REAL, "
                         "judge TEXT)")
        self._db.commit()
        self.hits = 0
        self.misses = 0

    def get(self, identity: dict, pair: Pair) -> tuple[bool, float | None]:
        row = None
        if not self.refresh:
            with self._lock:
                row = self._db.execute("SELECT preference FROM annotations WHERE key = ? AND preference IS NOT NULL",
                                       (_key(identity, pair),)).fetchone()
        if row is None:
            self.misses += 1
            return False, None
        self.hits += 1
        return True, row[0]

    def put_many(self, identity: dict, items: Sequence[tuple[Pair, float | None]]) -> None:
        rows = [(_key(identity, p), v, identity.get("name", "")) for p, v in items if v is not None]
        with self._lock:
            self._db.executemany("INSERT OR REPLACE INTO annotations VALUES (?, ?, ?)", rows)
            self._db.commit()

    def close(self) -> None:
        self._db.close()


def _ask(judge: Judge, pairs: list[Pair], cache: AnnotationCache | None, batch_size: int) -> list[float | None]:
    identity = judge.identity()
    out: list[float | None] = [None] * len(pairs)
    todo: list[int] = []
    for i, pair in enumerate(pairs):
        if pair.output_1.strip() == pair.output_2.strip():
            out[i] = 1.5
            continue
        if cache is not None:
            found, value = cache.get(identity, pair)
            if found:
                out[i] = value
                continue
        todo.append(i)
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        answers = judge._prefer([pairs[i] for i in chunk])
        if len(answers) != len(chunk):
            raise JudgeError(f"judge {judge.name!r} returned {len(answers)} answers for {len(chunk)} pairs")
        for i, a in zip(chunk, answers):
            if a is not None and not 1.0 <= float(a) <= 2.0:
                raise JudgeError(f"judge {judge.name!r} returned preference {a!r}, outside [1, 2]")
            out[i] = None if a is None else float(a)
        if cache is not None:
            cache.put_many(identity, [(pairs[i], out[i]) for i in chunk])
    return out


def annotate(judge: Judge, pairs: Sequence[Pair], *, order: Order = "both", seed: int = 0,
             cache: AnnotationCache | None = None, batch_size: int = 16) -> list[float | None]:
    """Preferences (1 = output_1, 2 = output_2, None = unparsable) for `pairs` in their given orientation."""
    if order not in ORDERS:
        raise ValueError(f"order={order!r} is not known; allowed: {', '.join(ORDERS)}")
    pairs = list(pairs)
    if order == "fixed":
        return _ask(judge, pairs, cache, batch_size)
    if order == "random":
        rng = random.Random(seed)
        flips = [rng.random() < 0.5 for _ in pairs]
        asked = _ask(judge, [p.swapped() if f else p for p, f in zip(pairs, flips)], cache, batch_size)
        return [None if a is None else (3.0 - a if f else a) for a, f in zip(asked, flips)]
    forward, backward = both_orders(judge, pairs, cache, batch_size)
    return combine_orders(forward, backward)


def both_orders(judge: Judge, pairs: Sequence[Pair], cache: AnnotationCache | None = None,
                batch_size: int = 16) -> tuple[list[float | None], list[float | None]]:
    """The judge's answers with the pairs as given and swapped (the swapped answers not mapped back)."""
    pairs = list(pairs)
    return _ask(judge, pairs, cache, batch_size), _ask(judge, [p.swapped() for p in pairs], cache, batch_size)


def combine_orders(forward: Sequence[float | None], backward: Sequence[float | None]) -> list[float | None]:
    """Average of the forward answer and the backward answer mapped back (p -> 3 - p); None where both failed."""
    out: list[float | None] = []
    for f, b in zip(forward, backward):
        kept = [v for v in (f, None if b is None else 3.0 - b) if v is not None]
        out.append(sum(kept) / len(kept) if kept else None)
    return out


def order_agreement(judge: Judge, pairs: Sequence[Pair], cache: AnnotationCache | None = None) -> dict[str, float]:
    """How often the judge picks the same output when the order is swapped (a symmetric judge: 100%)."""
    return agreement_of(*both_orders(judge, pairs, cache))


def agreement_of(forward: Sequence[float | None], backward: Sequence[float | None]) -> dict[str, float]:
    """Share of pairs (%) whose winner (or tie) is the same in both orders, from answers already given."""
    same = n = 0
    for f, b in zip(forward, backward):
        if f is None or b is None:
            continue
        n += 1
        winner_forward = (f > 1.5) - (f < 1.5)
        winner_backward = ((3.0 - b) > 1.5) - ((3.0 - b) < 1.5)
        same += int(winner_forward == winner_backward)
    return {"agreement": 100.0 * same / n if n else float("nan"), "n": n}
