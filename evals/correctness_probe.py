"""A correctness probe: an answer against the same answer with its numbers, dates or names altered.

A judge that reads only length, structure and fluency cannot tell the two apart; a judge that checks facts prefers
the original. The answers are ones the reference judge preferred in its pairs (so presumably good ones), at most
one per instruction, chosen with a seeded generator among those holding something to alter. Each altered answer
changes up to `MAX_EDITS` spans (numbers and dates first, names to fill up), keeping lengths close so that a
length rule is no help:

- a number: every digit but the first shifted by a seeded amount (same digit count; a year moves by 3 to 9 years);
- a month name: another month of about the same length;
- a capitalised word after a lowercase one (a name, mostly): another name from a fixed list (people, or places
  for a place of the list), of about the same length.

The original is output_1 or output_2 by a seeded coin per pair (a judge that always picks one side scores ~50%).
A judge is right on a pair when it prefers the original (a draw counts half).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from evals.annotations import Annotation
from evals.judging import Pair

MAX_EDITS = 3
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
PEOPLE = ("Smith", "Johnson", "Newton", "Darwin", "Lincoln", "Curie", "Edison", "Tesla", "Franklin", "Jefferson")
PLACES = ("Paris", "London", "Berlin", "Madrid", "Tokyo", "Canada", "Mexico", "Brazil", "India", "Egypt")
_NUMBER = re.compile(r"(?<![\w.])\d{1,6}(?![\w])")
_LIST_MARK = re.compile(r"(?:^|\n)[ \t]*$")  # what precedes a list number ("1." at a line's start)
_MONTH = re.compile(r"\b(" + "|".join(MONTHS) + r")\b")
_NAME = re.compile(r"\b[a-z]{2,},? ([A-Z][a-z]{3,})\b(?![:*])")  # a capitalised word after a lowercase one
_COMMON = frozenset("This That These Those There Then When What Which While With However Also Here Each Some Many "
                    "Most Other Such They Their First Second Finally Overall Additionally Furthermore English "
                    "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split())


@dataclass(frozen=True, slots=True)
class ProbePair:
    id: str
    pair: Pair
    original_side: int  # 1 or 2: where the unaltered answer is
    edits: tuple[str, ...]  # "number", "month", "name" per altered span

    def right(self, preference: float) -> float:
        """1 the original preferred, 0 the altered one, 1/2 a draw."""
        if preference == 1.5:
            return 0.5
        return float((preference > 1.5) == (self.original_side == 2))


def _alter_number(text: str, rng: random.Random) -> str:
    value = int(text)
    if 1000 <= value <= 2100 and len(text) == 4:  # a year
        return str(value + rng.choice((-1, 1)) * rng.randint(3, 9))
    if len(text) == 1:
        return str((value + rng.randint(2, 7)) % 10 or 9)
    digits = [text[0]] + [str((int(d) + rng.randint(1, 9)) % 10) for d in text[1:]]
    return "".join(digits)


def _similar(word: str, pool: tuple[str, ...], rng: random.Random) -> str:
    """Another word of the pool, of about the same length when one is there."""
    others = [p for p in pool if p != word]
    return rng.choice([p for p in others if abs(len(p) - len(word)) <= 2] or others)


def alter(text: str, rng: random.Random) -> tuple[str, tuple[str, ...]]:
    """The text with up to MAX_EDITS numbers, months or names changed, and the kinds changed (empty: nothing to
    alter). Spans are chosen from left to right among all candidates, a seeded sample."""
    spans = [(m.start(), m.end(), "number") for m in _NUMBER.finditer(text)
             if not (_LIST_MARK.search(text, 0, m.start()) and text[m.end():m.end() + 1] in (".", ")"))]
    spans += [(m.start(), m.end(), "month") for m in _MONTH.finditer(text)]
    spans += [(m.start(1), m.end(1), "name") for m in _NAME.finditer(text) if m.group(1) not in _COMMON
              and m.group(1) not in MONTHS]
    spans.sort()
    kept, last = [], -1
    for s in spans:  # no overlaps
        if s[0] >= last:
            kept.append(s)
            last = s[1]
    if not kept:
        return text, ()
    facts = [s for s in kept if s[2] != "name"]  # numbers and dates first, names only to fill up
    names = [s for s in kept if s[2] == "name"]
    chosen = rng.sample(facts, min(MAX_EDITS, len(facts)))
    chosen = sorted(chosen + rng.sample(names, min(MAX_EDITS - len(chosen), len(names))))
    out, pos, kinds = [], 0, []
    for start, end, kind in chosen:
        old = text[start:end]
        new = (_alter_number(old, rng) if kind == "number" else
               _similar(old, MONTHS, rng) if kind == "month" else
               _similar(old, PLACES if old in PLACES else PEOPLE, rng))
        if new != old:
            out += [text[pos:start], new]
            pos = end
            kinds.append(kind)
    out.append(text[pos:])
    return "".join(out), tuple(kinds)


def probe_pairs(rows: list[Annotation], prompts: list[str], *, n: int = 200, seed: int = 0) -> list[ProbePair]:
    """Up to `n` probe pairs, one per instruction, from the answers the reference judge preferred in `rows`."""
    rng = random.Random(seed)
    winners: dict[int, list[str]] = {}
    for r in rows:
        if r.preference != 1.5 and r.output != r.reference:
            winners.setdefault(r.index, []).append(r.output if r.preference > 1.5 else r.reference)
    indices = sorted(winners)
    rng.shuffle(indices)
    out: list[ProbePair] = []
    for index in indices:
        if len(out) == n:
            break
        texts = sorted(set(winners[index]))
        text = texts[rng.randrange(len(texts))]
        altered, kinds = alter(text, rng)
        if not kinds:
            continue
        side = rng.choice((1, 2))
        first, second = (text, altered) if side == 1 else (altered, text)
        out.append(ProbePair(f"probe/{index}", Pair(prompts[index], "", first, second, f"probe/{index}"), side, kinds))
    return out
