"""FActScore stage 4: is an atomic fact supported by the entity's retrieved passages?

Every verifier has `verify(entity, fact, passages) -> bool`, `verify_many([(entity, fact, passages), ...])`
(batched where the verifier can batch) and `identity()` ({"name", "model", "version"}), recorded with results.
- `LogitVerifier`: FActScore's "retrieval + LLaMA" rule on any causal LM: the prompt of `verification_prompt`,
  then supported iff the next-token logit of " True" exceeds that of " False".
- `LLMVerifier`: FActScore's "retrieval + ChatGPT" rule on any `complete(prompt) -> str`, parsed by `parse_true_false`
  (`LLMVerifier.from_server`: an OpenAI-compatible server, with a request timeout and a cap on retries).
- `ConsistencyVerifier` (`evals.consistency`): MiniLM similarity plus consistency checks, the offline default.
- `LexicalVerifier`: a cheap deterministic baseline (content-word overlap), for tests and sanity checks.
"""

from __future__ import annotations

import inspect
import string
from collections.abc import Callable, Sequence

from evals.retrieval import Passage, tokens

Item = tuple[str, str, Sequence[Passage]]


def verification_prompt(entity: str, fact: str, passages: Sequence[Passage]) -> str:
    """FActScore's prompt: the task line, the passages as "Title: ...\\nText: ..." blocks in reverse rank order
    (the best passage last, next to the question), a final "." if the context ends without punctuation, then
    "Input: <fact> True or False?\\nOutput:"."""
    context = "\n\n".join(f"Title: {p.title}\nText: {p.text}" for p in reversed(passages))
    head = f"Answer the question about {entity} based on the given context.\n\n{context}".strip()
    if head[-1] not in string.punctuation:
        head += "."
    return f"{head}\n\nInput: {fact.strip()} True or False?\nOutput:"


class Verifier:
    """Base class: subclasses set `name`, `model`, `version` and implement `verify` or `verify_many`."""

    name = "verifier"
    model = ""
    version = "1"

    def verify(self, entity: str, fact: str, passages: Sequence[Passage]) -> bool:
        return self.verify_many([(entity, fact, passages)])[0]

    def verify_many(self, items: Sequence[Item]) -> list[bool]:
        return [self.verify(*item) for item in items]

    def identity(self) -> dict:
        return {"name": self.name, "model": self.model, "version": self.version}


def parse_true_false(answer: str) -> bool:
    """FActScore's reading of a free-text answer (lower-cased):
    only "true" present -> True; only "false" -> False; both -> True iff the first "true" comes after the first
    "false"; neither -> True iff none of the words "not", "cannot", "unknown", "information" occurs."""
    text = answer.lower()
    has_true, has_false = "true" in text, "false" in text
    if has_true and has_false:
        return text.index("true") > text.index("false")
    if has_true or has_false:
        return has_true
    words = text.translate(str.maketrans("", "", string.punctuation)).split()
    return not any(w in words for w in ("not", "cannot", "unknown", "information"))


REQUEST_TIMEOUT = 120.0
MAX_RETRIES = 5


class LLMVerifier(Verifier):
    """`complete(verification_prompt(...))` read by `parse_true_false`.

    `model` names the verifier in every record and must be given: there is no default model. `from_server` builds
    `complete` on an OpenAI-compatible server with a request timeout and a cap on retries, as the OpenAI judge does.
    """

    name = "llm-true-false"

    def __init__(self, complete: Callable[[str], str], model: str):
        if not isinstance(model, str) or not model.strip():
            raise ValueError("LLMVerifier needs the verifier model's name (model='...'); there is no default")
        self.complete = complete
        self.model = model

    @classmethod
    def from_server(cls, model: str, *, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                    timeout: float = REQUEST_TIMEOUT, max_retries: int = MAX_RETRIES, max_tokens: int = 256,
                    **client_kwargs) -> LLMVerifier:
        """A verifier asking `model` at `base_url` (any OpenAI-compatible `/v1`; default OPENAI_BASE_URL, else
        api.openai.com): each request gives up after `timeout` seconds and is re-asked at most `max_retries` times
        (connection errors, timeouts, rate limits and 5xx only), then the evaluation stops with `JudgeError`.
        Other keyword arguments (backoff, client, sleep) go to `evals.openai_judge.ChatClient`."""
        if not isinstance(model, str) or not model.strip():
            raise ValueError("LLMVerifier.from_server needs the verifier model's name; there is no default")
        if not (isinstance(timeout, (int, float)) and timeout > 0):
            raise ValueError(f"timeout={timeout!r}: seconds per request, a number > 0")
        if not (isinstance(max_retries, int) and max_retries >= 0):
            raise ValueError(f"max_retries={max_retries!r}: re-asks after a failed request, an integer >= 0")
        from evals.openai_judge import make_completion_fn

        complete = make_completion_fn(model, base_url, api_key_env, max_tokens=max_tokens, timeout=float(timeout),
                                      max_attempts=max_retries + 1, **client_kwargs)
        return cls(complete, model=model)

    def verify(self, entity: str, fact: str, passages: Sequence[Passage]) -> bool:
        return parse_true_false(self.complete(verification_prompt(entity, fact, passages)))


STOP_WORDS = frozenset(
    "a an the and or but of in on at to for from by with as into onto about after before during until since "
    "than then that this these those which who whom whose what when where while is are was were be been being "
    "has have had do does did not no nor it its he she him her his hers they them their we us our i you your "
    "also very so such can could would should will may might must there here one s".split())
LEXICAL_THRESHOLD = 0.8


class LexicalVerifier(Verifier):
    """Supported iff every number of the fact and at least `threshold` (default 0.8) of its content words occur
    in the passages (numbers are checked strictly since dates are what answers most often get wrong).

    Content words: `tokens(fact)` minus `STOP_WORDS` and minus the words of the entity's name (which every
    passage of the entity's article would trivially match). A fact with no content word claims nothing
    checkable (e.g. a garbled output) and is not supported.
    Overlap cannot see negation or swapped roles: a baseline, not a verifier of record.
    """

    name = "lexical-overlap"
    model = ""

    def __init__(self, threshold: float = LEXICAL_THRESHOLD):
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold={threshold} must be in [0, 1]")
        self.threshold = threshold
        self.version = f"1-t{threshold:g}"

    def overlap(self, entity: str, fact: str, passages: Sequence[Passage]) -> float:
        name = set(tokens(entity))
        content = [w for w in tokens(fact) if w not in STOP_WORDS and w not in name]
        if not content:
            return 0.0
        seen = {w for p in passages for w in tokens(p.text)}
        return sum(w in seen for w in content) / len(content)

    def verify(self, entity: str, fact: str, passages: Sequence[Passage]) -> bool:
        seen = {w for p in passages for w in tokens(p.text)}
        numbers_found = all(w in seen for w in tokens(fact) if w.isdigit())
        return numbers_found and self.overlap(entity, fact, passages) >= self.threshold


class LogitVerifier(Verifier):
    """Supported iff logit(" True") > logit(" False") after `verification_prompt` (FActScore with LLaMA).

    Tokenisation: the answers are compared at their first differing token. For most BPE vocabularies " True" and
    " False" are single tokens and that is the first; for a byte-level vocabulary without merges both start with
    the space byte, which is then appended to the prompt and the letters "T"/"F" are compared.
    With `chat_template=True` the prompt is wrapped as one user turn with the generation prompt and "True"/"False"
    (no leading space) are compared. Batches are left-padded with position ids counted over real tokens only, so
    a batched decision equals the one-by-one decision up to float rounding. Prompts longer than `max_length`
    tokens keep their last `max_length` tokens (the question stays, the earliest context goes).
    """

    name = "logit-true-false"

    def __init__(self, model, tokenizer, *, model_name: str = "", batch_size: int = 8, max_length: int = 2048,
                 chat_template: bool = False):
        self.lm, self.tokenizer = model, tokenizer
        self.model = model_name or getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
        self.batch_size, self.max_length, self.chat_template = batch_size, max_length, chat_template
        self.version = "1-chat" if chat_template else "1"
        space = "" if chat_template else " "
        t = tokenizer.encode(f"{space}True", add_special_tokens=False)
        f = tokenizer.encode(f"{space}False", add_special_tokens=False)
        n = 0
        while n < min(len(t), len(f)) and t[n] == f[n]:
            n += 1
        if n == min(len(t), len(f)):
            raise ValueError("the tokenizer encodes 'True' and 'False' with no differing token")
        self.shared_prefix, self.true_id, self.false_id = list(t[:n]), t[n], f[n]
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._keep_arg = "logits_to_keep" in inspect.signature(model.forward).parameters

    def _ids(self, entity: str, fact: str, passages: Sequence[Passage]) -> list[int]:
        prompt = verification_prompt(entity, fact, passages)
        if self.chat_template:
            ids = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=True,
                                                     add_generation_prompt=True)
            ids = list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
        else:
            ids = self.tokenizer.encode(prompt, add_special_tokens=True)
        ids = list(ids) + self.shared_prefix
        return ids[-self.max_length:]

    def margins(self, items: Sequence[Item]) -> list[float]:
        """logit(True) - logit(False) per item (positive = supported), computed in length-sorted batches."""
        import torch

        encoded = [self._ids(*item) for item in items]
        order = sorted(range(len(encoded)), key=lambda i: (len(encoded[i]), i))
        out = [0.0] * len(encoded)
        device = next(self.lm.parameters()).device
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            width = max(len(encoded[i]) for i in idx)
            ids = torch.full((len(idx), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                ids[row, width - len(encoded[i]):] = torch.tensor(encoded[i])
                mask[row, width - len(encoded[i]):] = 1
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            kwargs = {"logits_to_keep": 1} if self._keep_arg else {}
            with torch.inference_mode():
                logits = self.lm(input_ids=ids.to(device), attention_mask=mask.to(device),
                                 position_ids=positions.to(device), **kwargs).logits[:, -1, :].float()
            diff = (logits[:, self.true_id] - logits[:, self.false_id]).tolist()
            for row, i in enumerate(idx):
                out[i] = diff[row]
        return out

    def verify_many(self, items: Sequence[Item]) -> list[bool]:
        return [m > 0 for m in self.margins(items)]

