"""FActScore stage 1-2: abstention detection and splitting an answer into atomic facts.

Two splitters share one interface, `split(entity, answer) -> list[str]`:
- `RuleFactSplitter` (offline, deterministic): `split_sentences`, then `split_clauses`, then `resolve_pronouns`.
- `LLMFactSplitter`: FActScore's few-shot instruction "Please breakdown the following sentence into independent
  facts:" sent once per sentence to any `complete(prompt) -> str`; the "- fact" lines of the reply are the facts.

Sentences (`split_sentences`): lines are split first (bullets and list numbers dropped); inside a line a boundary is
`.`, `!` or `?` (plus closing quotes/brackets), whitespace, then an upper-case letter, a digit or an opening quote.
A `.` after an abbreviation-like word is a boundary only when the next word is a common sentence opener
(`STARTERS`: He, She, The, In, ...). Abbreviation-like: a title or short form in `ABBREVIATIONS` (Dr, St, Jr, No,
...), a single capital (an initial: "Franklin D. Roosevelt"), a Roman numeral ("Napoleon I. His ...") or a dotted
acronym ("U.S.", "D.C."). Decimals ("3.14") never split since no space follows the dot.

Clauses (`split_clauses`), a heuristic that prefers not splitting to splitting wrongly:
1. "; " always separates clauses.
2. ", and " / " and " / ", but " / " but " separate clauses when the right side starts with a subject pronoun
   (he, she, they) or with a verb-ish word (`VERBS`, or a word of 5+ letters ending in "ed" not in `NOT_VERBS`).
   A right side starting with a verb gets the left clause's subject: the words before the left clause's first
   verb-ish word, or its last subject pronoun (a leading "In/After/... ," phrase skipped; none if the words
   before the verb open with a preposition).
3. A non-restrictive ", who ..." / ", which ..." clause (up to the next comma) becomes "<antecedent> ..." and
   ", whom he married ..." becomes "he married <antecedent> ...". The antecedent is the run of capitalised words
   before the comma, else a determiner phrase in the last 5 words ("a novel" -> "the novel"); else no split.

Pronouns (`resolve_pronouns`): the entity's pronoun is the more frequent of he/him/his and she/her/hers in the whole
answer (both on a tie). A fact starting with "His"/"Her"/"Their" gets "<entity>'s"; the first subject pronoun
(he/she, or "They" at the start) is replaced by the entity's name unless the full name precedes it or the fact
opens with a word of the name ("Einstein said he ..." is kept).
"""

from __future__ import annotations

import re
from collections.abc import Callable

ABSTAIN_PREFIXES = (
    "i'm sorry", "i am sorry", "sorry", "i apologize", "i cannot", "i can't", "i can not", "i don't have",
    "i do not have", "i don't know", "i do not know", "i'm not sure", "i am not sure", "i'm not familiar",
    "i am not familiar", "i'm unable", "i am unable", "i couldn't find", "i could not find", "as an ai",
    "unfortunately, i",
)
"""An answer starting (case-insensitively, curly apostrophes straightened) with one of these is an abstention."""
ABSTAIN_REQUESTS = (
    "provide more", "could you please", "could you clarify", "can you clarify", "please clarify",
    "please specify", "could you specify", "can you specify", "more context",
)
"""An answer containing one of these asks for more information: an abstention (FActScore: "provide more")."""

ABBREVIATIONS = frozenset(
    "dr mr mrs ms prof sr jr st mt ft gen col lt capt sgt cmdr adm rev hon gov pres sen rep no nos vol vols pp "
    "vs etc al approx ca c inc ltd co corp bros dept univ jan feb mar apr jun jul aug sep sept oct nov dec".split())
STARTERS = frozenset(
    "he she it they we his her its their the a an this that these those there in on at after before during "
    "later from by as when while although however today since".split())
VERBS = frozenset(
    "was were is are be been has had have became becomes remained served won received wrote composed painted "
    "published founded studied worked died lived moved married divorced taught led made became held left joined "
    "earned graduated returned spent developed discovered invented designed directed starred played built "
    "created helped continued began went took gave became won set ran became sang recorded released toured "
    "retired emigrated settled fought signed introduced proposed formulated completed attended became".split())
NOT_VERBS = frozenset(
    "united applied advanced noted renowned celebrated acclaimed talented gifted learned beloved unnamed "
    "detailed limited mixed related wicked crooked naked sacred kindred hundred".split())
SUBJECT_PRONOUNS = ("he", "she", "they")
_PREPOSITIONS = frozenset("in on at after before during from by as when while although since following".split())

_BOUNDARY = re.compile(r"[.!?]+[\"'”’)\]]*\s+")
_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+")
_CLAUSE_JOIN = re.compile(r",? (?:and|but) ")
_RELATIVE = re.compile(r", (who|which|whom) ([^,]+)")
_ROMAN = re.compile(r"^[IVXLC]+$")


def is_abstention(answer: str) -> bool:
    """True if `answer` is empty, opens with an `ABSTAIN_PREFIXES` phrase or asks for more (`ABSTAIN_REQUESTS`)."""
    text = answer.strip().replace("\u2019", "'").lower()
    return not text or text.startswith(ABSTAIN_PREFIXES) or any(r in text for r in ABSTAIN_REQUESTS)


def _abbreviation_like(word: str) -> bool:
    core = word.rstrip(".!?\"'”’)]").lstrip("(\"'“‘")
    return (core.lower() in ABBREVIATIONS or (len(core) == 1 and core.isupper()) or bool(_ROMAN.match(core))
            or ("." in core and core.replace(".", "").isalpha()))


def _is_boundary(left: str, mark: str, right: str) -> bool:
    if not right or not (right[0].isupper() or right[0].isdigit() or right[0] in "\"'“‘("):
        return False
    if "." not in mark[:1] or not _abbreviation_like(left.split()[-1] if left.split() else ""):
        return True
    first = re.match(r"[\"'“‘(]*(\w+)", right)
    return bool(first) and first.group(1).lower() in STARTERS


def split_sentences(text: str) -> list[str]:
    """Sentences of `text` (see the module docstring for the rules); empty pieces are dropped."""
    sentences = []
    for line in text.splitlines():
        line = _BULLET.sub("", line).strip()
        start = 0
        for m in _BOUNDARY.finditer(line):
            if _is_boundary(line[start:m.start() + 1], m.group().strip(), line[m.end():]):
                sentences.append(line[start:m.end()].strip())
                start = m.end()
        if line[start:].strip():
            sentences.append(line[start:].strip())
    return sentences


def _words(text: str) -> list[str]:
    return re.findall(r"[\w'’-]+", text)


def _verbish(word: str) -> bool:
    w = word.lower()
    return w in VERBS or (len(w) >= 5 and w.endswith("ed") and w not in NOT_VERBS)


def _subject(clause: str) -> str | None:
    """The words before the clause's first verb-ish word (see the module docstring), or None."""
    if clause.split()[:1] and clause.split()[0].lower() in _PREPOSITIONS and "," in clause:
        clause = clause.split(",", 1)[1]  # "After X died in 1906, she took ..." -> "she took ..."
    words = clause.split()
    for i, w in enumerate(words):
        if _verbish(w.strip(",.;:")):
            head = [h.strip(",") for h in words[:i]]
            pronouns = [h for h in head if h.lower() in SUBJECT_PRONOUNS]
            if pronouns:
                return pronouns[-1]
            return " ".join(head) if head and head[0].lower() not in _PREPOSITIONS else None
    return None


def _antecedent(left: str) -> str | None:
    words = left.split()
    run: list[str] = []
    for w in reversed(words):
        if w[:1].isupper() or (run and w in ("of", "de", "von", "van", "da", "the", "and")):
            run.insert(0, w)
        else:
            break
    while run and not run[0][:1].isupper():
        run.pop(0)
    if run and len(run) < len(words):  # not the whole clause (a sentence-initial capital alone is no antecedent)
        return " ".join(run)
    for i in range(len(words) - 1, max(len(words) - 5, 0) - 1, -1):  # a determiner among the last 5 words
        if words[i].lower() in ("a", "an", "the", "his", "her", "their", "its"):
            return " ".join(["the"] + words[i + 1:]) if words[i].lower() in ("a", "an") else " ".join(words[i:])
    return None


def _finish(text: str) -> str:
    text = text.strip().rstrip(",;: ")
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".!?" else text + "."


def split_clauses(sentence: str) -> list[str]:
    """Clauses of one sentence as standalone sentences (rules 1-3 of the module docstring)."""
    out: list[str] = []
    for part in sentence.strip().rstrip(".!?").split("; "):
        rel = []
        m = _RELATIVE.search(part)
        while m:
            ante = _antecedent(part[:m.start()])
            if ante is None:
                break
            kind, rest = m.groups()
            if kind == "whom":
                sub = rest.split(None, 2)
                if len(sub) < 2 or sub[0].lower() not in SUBJECT_PRONOUNS:
                    break
                rel.append(" ".join([sub[0], sub[1], ante] + sub[2:]))
            else:
                rel.append(f"{ante} {rest}")
            part = part[:m.start()] + part[m.end():]
            m = _RELATIVE.search(part)
        pieces = [part]
        while True:
            for m in _CLAUSE_JOIN.finditer(pieces[-1]):
                left, right = pieces[-1][:m.start()], pieces[-1][m.end():]
                first = (right.split() or [""])[0].strip(",")
                if first.lower() in SUBJECT_PRONOUNS:
                    pieces[-1:] = [left, right]
                    break
                if _verbish(first) and (subj := _subject(left)):
                    pieces[-1:] = [left, f"{subj} {right}"]
                    break
            else:
                break
        out.extend(_finish(p) for p in pieces + rel if p.strip())
    return out


def entity_pronouns(answer: str) -> tuple[str, ...]:
    """The subject pronouns taken to mean the entity: the more frequent gender in `answer`, both on a tie."""
    words = [w.lower() for w in _words(answer)]
    male = sum(w in ("he", "him", "his") for w in words)
    female = sum(w in ("she", "her", "hers") for w in words)
    return ("he",) if male > female else ("she",) if female > male else ("he", "she")


def resolve_pronouns(fact: str, entity: str, pronouns: tuple[str, ...] = ("he", "she")) -> str:
    """`fact` with the entity's opening possessive or first subject pronoun replaced by `entity`."""
    possessive = {"he": "his", "she": "her"}
    m = re.match(r"(His|Her|Their)\b", fact)
    if m and (m.group(1).lower() in [possessive[p] for p in pronouns] or m.group(1) == "Their"):
        return f"{entity}'s{fact[m.end():]}"
    if re.match(r"They\b", fact):
        return entity + fact[4:]
    opens_with_name = re.sub(r"['’]s$", "", (fact.split() or [""])[0].strip(",")) in entity.split()
    for m in re.finditer(r"\b(he|she|He|She)\b", fact):
        if m.group(1).lower() not in pronouns or entity in fact[:m.start()] or opens_with_name:
            return fact
        return fact[:m.start()] + entity + fact[m.end():]
    return fact


class RuleFactSplitter:
    """Offline atomic facts: sentences -> clauses -> pronouns resolved to the entity."""

    name = "rule-splitter"
    version = "1"

    def split(self, entity: str, answer: str) -> list[str]:
        pronouns = entity_pronouns(answer)
        return [resolve_pronouns(c, entity, pronouns) for s in split_sentences(answer) for c in split_clauses(s)]

    def identity(self) -> dict:
        return {"name": self.name, "model": "", "version": self.version}


INSTRUCTION = "Please breakdown the following sentence into independent facts:"
DEMOS = (
    ("Ada Lovelace was an English mathematician who wrote the first published algorithm for Babbage's engine.",
     ["Ada Lovelace was English.", "Ada Lovelace was a mathematician.",
      "Ada Lovelace wrote the first published algorithm for Babbage's engine."]),
    ("He was born in Ulm in 1879 and moved to Munich with his family as a child.",
     ["He was born in Ulm.", "He was born in 1879.", "He moved to Munich with his family.",
      "He moved to Munich as a child."]),
    ("Her novel Middlemarch, published in 1871, is often called one of the greatest novels in English.",
     ["Her novel is Middlemarch.", "Middlemarch was published in 1871.",
      "Middlemarch is often called one of the greatest novels in English."]),
)
"""Few-shot examples written for this project (FActScore retrieves its own demonstrations; we use fixed ones)."""


def breakdown_prompt(sentence: str) -> str:
    """The few-shot prompt for one sentence: demos, then the instruction with `sentence`, facts as "- " lines."""
    blocks = [f"{INSTRUCTION} {s}\n" + "\n".join(f"- {f}" for f in facts) for s, facts in DEMOS]
    return "\n\n".join(blocks + [f"{INSTRUCTION} {sentence.strip()}\n"])


def parse_fact_lines(reply: str) -> list[str]:
    """Facts from a reply: the "- " (or "* ", "• ") lines before the next instruction."""
    facts = []
    for line in reply.split(INSTRUCTION)[0].splitlines():
        m = re.match(r"\s*[-*•]\s+(.+)", line)
        if m and m.group(1).strip():
            facts.append(m.group(1).strip())
    return facts


class LLMFactSplitter:
    """Atomic facts from a language model: one `complete(breakdown_prompt(sentence))` call per sentence.

    A reply with no "- " line keeps the sentence as one fact. Pronouns are then resolved as in the rule splitter.
    """

    name = "llm-splitter"
    version = "1"

    def __init__(self, complete: Callable[[str], str], model: str = ""):
        self.complete = complete
        self.model = model

    def split(self, entity: str, answer: str) -> list[str]:
        pronouns = entity_pronouns(answer)
        facts = []
        for sentence in split_sentences(answer):
            facts.extend(parse_fact_lines(self.complete(breakdown_prompt(sentence))) or [sentence])
        return [resolve_pronouns(f, entity, pronouns) for f in facts]

    def identity(self) -> dict:
        return {"name": self.name, "model": self.model, "version": self.version}
