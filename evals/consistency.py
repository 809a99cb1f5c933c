"""An offline fact verifier: MiniLM sentence similarity, then consistency checks against the matched sentence.

`ConsistencyVerifier` (name "minilm-consistency") decides whether an atomic fact is supported by an entity's
retrieved passages without a language model:
1. Units: the passages' sentences, with the entity's opening subject pronoun or possessive replaced by its name
   (`atomic_facts.resolve_pronouns`), each embedded once with all-MiniLM-L6-v2 (`evals.embeddings`).
2. Candidates: the units whose cosine similarity with the fact is at least `similarity` (default 0.55).
3. A candidate supports the fact iff every check below passes; the fact is supported iff some candidate does.
   - Numbers: every number of the fact occurs in the unit: digits ("1879", "16th"), number words ("two") and
     ordinal words ("first" = "1st"); "Nth century" and "1800s" also match a year of that century in the unit.
   - Polarity: the fact and the unit both have or both lack a negation (not, never, no, n't, nor, neither).
   - Names: every capitalised word of the fact that is not part of the entity's name nor a sentence opener
     occurs in the unit, a country and its demonym counting as one (`PLACE_FORMS`: "France" ~ "French";
     "British" also matches English, Scottish and Welsh).
   - Contrast words: a word of `CONTRAST` (kinship, roles and offices, born/died/married, ordinals and order,
     occupations) occurs in the unit itself or as a word it covers (`COVERS`: "writer" covers "novelist").
   - Coverage: at least `coverage` (default 0.6) of the fact's other content words are covered by the unit: the
     same stem, a listed synonym (`SYNONYMS`), or a MiniLM word similarity of at least `word_similarity` (0.7).
     Praise and hedges (`UNCHECKED`: renowned, brilliant, widely, regarded, ...) are not content words: the
     verifier cannot check them and neither supports nor refutes a fact for them.

What it cannot see (docs/evaluation.md has the measured accuracy per kind of falsification): swapped arguments
that keep every word ("Pierre Curie was Marie Curie's student" against "Marie Curie was Pierre Curie's
student"), facts that need two sentences at once, antonyms outside the contrast lists, and wrong qualifiers
among the unchecked words. A fact with no content word is not supported (it claims nothing checkable).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from evals.atomic_facts import entity_pronouns, resolve_pronouns, split_sentences
from evals.retrieval import Passage, tokens
from evals.verify import STOP_WORDS, Item, Verifier

SIMILARITY = 0.55
COVERAGE = 0.6
WORD_SIMILARITY = 0.7

NEGATIONS = frozenset({"not", "never", "no", "nor", "neither", "nt", "cannot"})
NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve".split()) if i >= 2}
ORDINAL_WORDS = {w: f"{i + 1}{'st' if i == 0 else 'nd' if i == 1 else 'rd' if i == 2 else 'th'}" for i, w in
                 enumerate("first second third fourth fifth sixth seventh eighth ninth tenth".split())}
OPENERS = frozenset(
    "he she it they his her its their the a an this that these those there in on at after before during later "
    "from by as when while although however today since born his hers i we our".split())

UNCHECKED = frozenset(
    "renowned famous famed celebrated brilliant legendary iconic groundbreaking pioneering influential important "
    "significant notable prominent great greatest widely regarded considered known best well often many numerous "
    "major key crucial pivotal remarkable innovative prolific acclaimed leading dedicated talented gifted "
    "respected beloved popular successful distinguished eminent outstanding extraordinary exceptional "
    "revolutionary visionary celebrated highly deeply lasting enduring profound immense huge vast "
    "contributions contribution contributed field fields world history time times life work works made make "
    "making became become role figure one most including particularly especially throughout across various "
    "several also still today modern generations people all remained remain stayed throughout entire whole "
    "rest".split())

_GROUPS = (
    "won win wins winning received receive awarded award earned gained",
    "died die dies death dead passed",
    "born birth birthplace native",
    "wrote write written writing authored penned published co-wrote co-authored",
    "married marry marriage wed wife husband spouse",
    "studied study attended educated graduated student",
    "founded found established co-founded created",
    "led lead leader headed",
    "discovered discovery discoveries found identified",
    "invented invention inventor",
    "composed composer compositions composition",
    "painted painter paintings painting",
    "sculpted sculptor sculptures sculpture",
    "ruled ruler reign reigned",
    "elected president presidency",
    "buried burial grave",
    "moved emigrated relocated settled",
    "killed assassinated murdered shot",
    "novel novels book books",
    "poems poem poetry verse",
    "play plays drama dramas",
    "film films movie movies",
    "physics physicist",
    "chemistry chemist",
    "mathematics mathematician",
    "astronomy astronomer",
    "philosophy philosopher",
    "biology biologist",
    "economics economist",
)
SYNONYMS: dict[str, frozenset[str]] = {}
for _group in _GROUPS:
    for _w in _group.split():
        SYNONYMS[_w] = SYNONYMS.get(_w, frozenset()) | frozenset(_group.split())

_OCCUPATIONS = ("physicist chemist biologist mathematician astronomer philosopher economist engineer inventor "
                "naturalist geologist physician doctor nurse composer pianist conductor singer guitarist "
                "violinist painter sculptor architect poet novelist playwright dramatist essayist journalist "
                "actor actress director lawyer soldier general admiral monk nun priest missionary explorer "
                "astronaut cosmonaut pilot aviator athlete boxer footballer sprinter psychiatrist psychologist "
                "economist theologian historian sociologist botanist zoologist").split()
CONTRAST = frozenset(
    "wife husband son daughter father mother brother sister grandson granddaughter uncle aunt cousin nephew niece "
    "born died married divorced eldest oldest youngest elder younger older last only before after "
    "president minister king queen emperor empress pope chancellor governor senator prince princess "
    "teacher student pupil professor assistant won lost defeated north south east west "
    "music physics chemistry mathematics medicine law literature peace economics philosophy biology astronomy "
    "logic theology engineering painting sculpture poetry".split()
    + _OCCUPATIONS + list(ORDINAL_WORDS))
COVERS: dict[str, frozenset[str]] = {
    "writer": frozenset("writer author novelist poet playwright dramatist essayist journalist".split()),
    "author": frozenset("writer author novelist poet playwright dramatist essayist".split()),
    "artist": frozenset("artist painter sculptor printmaker draughtsman architect".split()),
    "scientist": frozenset("scientist physicist chemist biologist astronomer naturalist geologist botanist "
                           "zoologist mathematician".split()),
    "musician": frozenset("musician composer pianist singer guitarist violinist conductor".split()),
    "leader": frozenset("leader president minister king queen emperor empress chancellor general".split()),
    "politician": frozenset("politician president minister senator governor chancellor statesman".split()),
    "statesman": frozenset("statesman president minister chancellor".split()),
    "ruler": frozenset("ruler king queen emperor empress tsar".split()),
    "explorer": frozenset("explorer navigator".split()),
    "athlete": frozenset("athlete sprinter boxer footballer player".split()),
    "born": frozenset({"born", "birth", "birthplace"}),
    "died": frozenset({"died", "death", "dead", "die", "dies"}),
    "married": frozenset({"married", "marry", "marriage", "wed", "wife", "husband"}),
    "won": frozenset({"won", "win", "awarded", "received", "earned"}),
    "doctor": frozenset({"doctor", "physician"}),
    "physician": frozenset({"doctor", "physician"}),
    "aviator": frozenset({"aviator", "pilot"}),
    "pilot": frozenset({"aviator", "pilot"}),
    "astronaut": frozenset({"astronaut", "cosmonaut"}),
    "cosmonaut": frozenset({"astronaut", "cosmonaut"}),
    "older": frozenset({"older", "elder", "eldest", "oldest"}),
    "elder": frozenset({"older", "elder", "eldest", "oldest"}),
}

_PLACES = (
    "america american americans united states usa us", "britain british english england scottish scotland "
    "welsh wales uk kingdom", "england english", "scotland scottish", "wales welsh", "france french",
    "germany german", "austria austrian", "italy italian", "spain spanish", "portugal portuguese",
    "netherlands dutch holland", "belgium belgian", "switzerland swiss", "poland polish", "russia russian soviet "
    "ussr", "ukraine ukrainian", "denmark danish", "norway norwegian", "sweden swedish", "finland finnish",
    "greece greek", "ireland irish", "india indian", "china chinese", "japan japanese", "mexico mexican",
    "brazil brazilian", "argentina argentine argentinian", "colombia colombian", "chile chilean", "peru peruvian",
    "venezuela venezuelan", "canada canadian", "australia australian", "kenya kenyan", "nigeria nigerian",
    "ghana ghanaian", "egypt egyptian", "jamaica jamaican", "israel israeli", "czech bohemia bohemian",
    "hungary hungarian", "serbia serbian serb", "croatia croatian", "rome roman", "prussia prussian",
    "europe european", "africa african", "asia asian", "macedonia macedonian", "mongolia mongol mongolian",
    "persia persian", "turkey turkish ottoman", "korea korean", "vietnam vietnamese", "cuba cuban",
    "pakistan pakistani", "south african", "new zealand zealander",
)
PLACE_FORMS: dict[str, frozenset[str]] = {}
for _group in _PLACES:
    for _w in _group.split():
        PLACE_FORMS[_w] = PLACE_FORMS.get(_w, frozenset()) | frozenset(_group.split())
for _narrow in ("english", "scottish", "welsh", "england", "scotland", "wales"):  # British does not imply English
    PLACE_FORMS[_narrow] = frozenset({_narrow, {"english": "england", "england": "english", "scottish": "scotland",
                                                "scotland": "scottish", "welsh": "wales", "wales": "welsh"}[_narrow]})

_CAPITAL = re.compile(r"\b[A-Z][\w'’.-]*")
_CENTURY = re.compile(r"\b(\d{1,2})(?:st|nd|rd|th)[ -]century\b", re.I)
_DECADE = re.compile(r"\b(\d{3})0s\b")
_YEAR = re.compile(r"\b\d{3,4}\b")


def stem(word: str) -> str:
    """A crude stem: lower case, possessive and common endings removed (the first six letters of longer words)."""
    w = word.lower().replace("’", "'").removesuffix("'s")
    for suffix in ("ically", "ation", "ists", "ings", "ies", "ist", "ing", "ian", "ans", "ers", "ed", "es", "er",
                   "s"):
        if len(w) > len(suffix) + 3 and w.endswith(suffix):
            w = w[: -len(suffix)]
            break
    return w[:6]


def numbers(text: str) -> tuple[set[str], set[int], set[str]]:
    """(number tokens, centuries named ("19th century" -> 19), decades named ("1800s" -> "180")) of `text`."""
    found = set()
    toks = tokens(text)
    for i, t in enumerate(toks):
        if any(c.isdigit() for c in t):
            if not (i + 1 < len(toks) and toks[i + 1] == "century"):
                found.add(t.removesuffix("s") if _DECADE.fullmatch(t) else t)
        elif t in NUMBER_WORDS:
            found.add(NUMBER_WORDS[t])
        elif t in ORDINAL_WORDS:
            found.add(ORDINAL_WORDS[t])
    centuries = {int(m.group(1)) for m in _CENTURY.finditer(text)}
    decades = {m.group(1) for m in _DECADE.finditer(text)}
    found -= {f"{d}0" for d in decades}
    return found, centuries, decades


_NEGATIVE_WORDS = {"unmarried": "never married", "childless": "had no children", "unfinished": "not finished",
                   "posthumously": "after death", "posthumous": "after death"}


def normalise(text: str) -> str:
    """Negative words spelt out ("unmarried" -> "never married") so that the polarity check sees them."""
    for word, spelt in _NEGATIVE_WORDS.items():
        text = re.sub(rf"\b{word}\b", spelt, text, flags=re.I)
    return text


def negated(text: str) -> bool:
    toks = tokens(text.replace("n't", " nt").replace("n’t", " nt"))
    return any(t in NEGATIONS and not (t == "no" and i + 1 < len(toks) and toks[i + 1].isdigit())
               for i, t in enumerate(toks))


def names(text: str, entity: str) -> set[str]:
    """Lower-cased capitalised words of `text` outside the entity's name and sentence openers."""
    skip = set(tokens(entity))
    out = set()
    for m in _CAPITAL.finditer(text):
        for t in tokens(m.group()):
            if t not in skip and t not in OPENERS and t not in STOP_WORDS and not t.isdigit() and t != "s":
                out.add(t)
    return out


def content_words(text: str, entity: str) -> list[str]:
    skip = set(tokens(entity))
    out = []
    for t in tokens(text.replace("’", "'").replace("'s", "")):
        if (t in STOP_WORDS or t in skip or t in UNCHECKED or t in NEGATIONS or any(c.isdigit() for c in t)
                or t in NUMBER_WORDS or len(t) < 2):
            continue
        out.append(t)
    return out


class Unit:
    """One sentence of the entity's passages, with what the checks need."""

    __slots__ = ("text", "words", "stems", "numbers", "years", "negated", "names")

    def __init__(self, text: str, entity: str):
        self.text = text = normalise(text)
        self.words = set(tokens(text))
        self.stems = {stem(w) for w in self.words}
        self.numbers = numbers(text)[0]
        self.years = {int(y) for y in _YEAR.findall(text)}
        self.negated = negated(text)
        self.names = self.words  # names are matched against every word of the unit (case-insensitive)


class ConsistencyVerifier(Verifier):
    """MiniLM similarity plus number, polarity, name, contrast-word and coverage checks (module docstring)."""

    name = "minilm-consistency"
    model = "all-MiniLM-L6-v2"

    def __init__(self, *, similarity: float = SIMILARITY, coverage: float = COVERAGE,
                 word_similarity: float = WORD_SIMILARITY, encoder=None):
        for label, value in (("similarity", similarity), ("coverage", coverage),
                             ("word_similarity", word_similarity)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{label}={value} must be in [0, 1]")
        self.similarity, self.coverage, self.word_similarity = similarity, coverage, word_similarity
        self.version = f"1-s{similarity:g}-c{coverage:g}-w{word_similarity:g}"
        self._encoder = encoder
        self._units: dict[tuple[str, tuple[str, ...]], tuple[list[Unit], object]] = {}
        self._word_vectors: dict[str, object] = {}

    # --- embeddings -----------------------------------------------------------------------------------------------

    def encode(self, texts: Sequence[str]):
        if self._encoder is None:
            from evals.embeddings import shared_minilm

            self._encoder = shared_minilm()
        return self._encoder.encode(list(texts))

    def _unit_table(self, entity: str, passages: Sequence[Passage]):
        key = (entity, tuple(p.text for p in passages))
        if key not in self._units:
            text = " ".join(p.text for p in passages)
            pronouns = entity_pronouns(text)
            units = [Unit(resolve_pronouns(s, entity, pronouns), entity) for p in passages
                     for s in split_sentences(p.text)]
            self._units[key] = (units, self.encode([u.text for u in units]) if units else None)
        return self._units[key]

    def _word_similar(self, word: str, unit: Unit) -> bool:
        missing = [w for w in {word, *unit.words} if w not in self._word_vectors]
        if missing:
            for w, v in zip(missing, self.encode(missing)):
                self._word_vectors[w] = v
        v = self._word_vectors[word]
        return any(float(v @ self._word_vectors[w]) >= self.word_similarity for w in unit.words if w != word)

    # --- checks ---------------------------------------------------------------------------------------------------

    @staticmethod
    def _numbers_ok(fact: str, unit: Unit, years: set[int]) -> bool:
        found, centuries, decades = numbers(fact)
        if not found <= unit.numbers:
            return False
        if any(not any(y // 100 == c - 1 for y in years) and f"{c}th" not in unit.numbers for c in centuries):
            return False
        return all(any(str(y).startswith(d) for y in years) for d in decades)

    @staticmethod
    def _covered_strictly(word: str, unit: Unit) -> bool:
        forms = COVERS.get(word, frozenset()) | SYNONYMS.get(word, frozenset()) | {word}
        return any(f in unit.words or stem(f) in unit.stems for f in forms)

    def _covered(self, word: str, unit: Unit) -> bool:
        return self._covered_strictly(word, unit) or self._word_similar(word, unit)

    def check(self, entity: str, fact: str, unit: Unit, years: set[int] = frozenset()) -> str | None:
        """None if `unit` supports `fact`, else the first check that fails. `years`: every year of the entity's
        passages (a century or decade named by the fact is looked up among them)."""
        fact = normalise(fact)
        if not self._numbers_ok(fact, unit, years | unit.years):
            return "numbers"
        if negated(fact) != unit.negated:
            return "polarity"
        for n in names(fact, entity):
            forms = PLACE_FORMS.get(n, frozenset()) | {n}
            if not any(f in unit.words or stem(f) in unit.stems for f in forms):
                return "names"
        words = content_words(fact, entity)
        if not words:
            return "no content"
        covered = 0
        for w in words:
            if w in CONTRAST:
                if not self._covered_strictly(w, unit):
                    return "contrast"
                covered += 1
            else:
                covered += self._covered(w, unit)
        return "coverage" if covered / len(words) < self.coverage else None

    def explain(self, entity: str, fact: str, passages: Sequence[Passage]) -> list[tuple[float, str, str | None]]:
        """(similarity, unit, failed check or None) per unit, most similar first: why a fact was decided."""
        units, vectors = self._unit_table(entity, passages)
        if not units:
            return []
        sims = (vectors @ self.encode([fact])[0]).tolist()
        rows = sorted(zip(sims, units), key=lambda r: -r[0])
        years = {y for u in units for y in u.years}
        return [(s, u.text, self.check(entity, fact, u, years)) for s, u in rows]

    def verify_many(self, items: Sequence[Item]) -> list[bool]:
        if not items:
            return []
        fact_vectors = self.encode([fact for _, fact, _ in items])
        out = []
        for (entity, fact, passages), fv in zip(items, fact_vectors):
            units, vectors = self._unit_table(entity, passages)
            if not units:
                out.append(False)
                continue
            sims = (vectors @ fv).tolist()
            ranked = sorted((s, i) for i, s in enumerate(sims) if s >= self.similarity)[::-1]
            years = {y for u in units for y in u.years}
            out.append(any(self.check(entity, fact, units[i], years) is None for _, i in ranked))
        return out
