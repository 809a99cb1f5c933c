"""An LLM judge on any OpenAI-compatible server, asked through alpaca-eval's own annotator prompts and parsers.

alpaca-eval 0.6.6 supplies the judging protocol: an annotator config (`alpaca_farm_greedy_gpt4` by default, AlpacaFarm's
greedy GPT-4 judge, 5 pairs per prompt; `alpaca_eval_gpt4`'s ranking prompt; or our `alpaca_farm_greedy_gpt4_b1`, one
pair per prompt, in `evals/configs/`), its prompt template, batching/padding and completion parser, all run by its
`PairwiseAnnotator`. We supply the completion function: the real `openai` client (`chat.completions.create`,
temperature from the config, 0 for every built-in judge), with bounded retries and exponential backoff. The paper's
judge models are retired, so the judge model is a setting; `base_url` points the client at any OpenAI-compatible
server (vLLM, llama.cpp's `python -m llama_cpp.server`, ...).

What alpaca-eval's own wrapper does that we switch off: its random order switching (`evals.judging.annotate` handles
order: both orders, or a seeded coin), its JSON annotation cache (ours is SQLite; its cache crashes on pandas 3), and
its error handling (its OpenAI decoder turns an API error into an empty answer, i.e. a silently dropped pair; here it
raises `JudgeError` and nothing is cached).

The key is read from an environment variable (`OPENAI_API_KEY` by default) and never printed; a loopback server needs
none. The judge's identity names the model the server says answered (`response.model`, learnt by a one-token probe at
construction: `gpt-4o-mini` answers as a dated snapshot), so cached annotations of one snapshot are never reused for
another.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import math
import os
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import parse_qsl, quote, quote_plus, unquote, urlencode, urlsplit, urlunsplit

import yaml

from evals.alpaca_eval_import import import_alpaca_eval
from evals.judging import Judge, JudgeError, Pair
from trainers.io import parse_yaml

log = logging.getLogger(__name__)

DEFAULT_MODEL = "gpt-4o-mini"
DEFAULT_ANNOTATOR = "alpaca_farm_greedy_gpt4"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
CONFIGS_DIR = Path(__file__).parent / "configs"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
LOOPBACK_KEY = "sk-no-key-required"  # llama.cpp / vLLM servers without --api-key accept any value
# completions_kwargs our completion function understands; a config asking for more (logprobs, function calls) is refused
_KNOWN_COMPLETION_KWARGS = {"model_name", "max_tokens", "temperature", "requires_chatml", "is_chat"}
# SingleAnnotator arguments we set ourselves: a config must not set them
_OWN_ANNOTATOR_KWARGS = ("fn_completions", "is_randomize_output_order", "is_shuffle", "seed",
                         "packages_for_which_to_show_version")


# --- the client: key, retries, served model ---------------------------------------------------------------------

def is_loopback(base_url: str) -> bool:
    return (urlsplit(base_url).hostname or "") in LOOPBACK_HOSTS


def check_base_url(url: str) -> str:
    """`url` if it can be a judge's base URL: http(s), a host, a valid port, no fragment; else a ValueError naming
    it (without its credentials) and what is wrong. User-info and a query are allowed: both are sent, never
    printed."""
    parts = urlsplit(url)
    try:
        port_ok = parts.port is None or 0 < parts.port
    except ValueError:
        port_ok = False
    wrong = [why for bad, why in ((parts.scheme not in ("http", "https"), f"scheme {parts.scheme!r} is not http(s)"),
                                  (not parts.hostname, "no host"), (not port_ok, "the port is not in 1..65535"),
                                  (bool(parts.fragment), "it has a #fragment"),
                                  (any(c.isspace() for c in url), "it contains spaces")) if bad]
    if wrong:
        shown = f"{parts.scheme}://{parts.netloc.split('@')[-1]}{parts.path}"
        raise ValueError(f"--judge-base-url {shown!r}: {'; '.join(wrong)}; expected http(s)://HOST[:PORT]/PATH "
                         "(e.g. http://127.0.0.1:8000/v1)")
    return url


def public_url(url: str) -> str:
    """`url` fit to store and print: no user:password@, query values masked (`?api-key=***`), no fragment."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    query = urlencode([(k, "***") for k, _ in parse_qsl(parts.query, keep_blank_values=True)], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def secret_forms(url: str, key: str = "") -> list[str]:
    """Every text form of the credentials in `url` (user-info, query values) and of `key` a client may send or a
    server echo: as typed, percent-decoded and -encoded, and user:password in base64 (HTTP Basic)."""
    parts = urlsplit(url)
    found = [key, parts.username or "", parts.password or ""]
    found += [v for _, v in parse_qsl(parts.query, keep_blank_values=True)]
    found += [v for chunk in parts.query.split("&") for v in chunk.split("=", 1)[1:]]  # as typed
    if parts.password is not None:
        for user, password in ((parts.username or "", parts.password),
                               (unquote(parts.username or ""), unquote(parts.password))):
            pair = f"{user}:{password}"
            found += [pair, base64.b64encode(pair.encode()).decode(), base64.urlsafe_b64encode(pair.encode()).decode()]
    forms = set()
    for text in found:
        forms |= {text, unquote(text), quote(text, safe=""), quote_plus(text)}
    return sorted((x for x in forms if len(x) >= 4), key=len, reverse=True)


def scrub(text: str, url: str, key: str = "", shown_url: str | None = None) -> str:
    """`text` with `url` as `shown_url` (default `public_url(url)`) and every form of its credentials and of `key`
    as `***`. Pieces under 4 characters are left: they would mangle the text ("v1" in every path)."""
    text = text.replace(url, shown_url or public_url(url)) if url else text
    for secret in secret_forms(url, key):
        text = text.replace(secret, "***")
    return text


def _is_retryable(error: Exception) -> bool:
    """Connection problems, timeouts, rate limits and 5xx are worth another try; 4xx (key, model, request) are not."""
    import openai

    if isinstance(error, openai.APIConnectionError):  # includes APITimeoutError
        return True
    if isinstance(error, openai.APIStatusError):
        return error.status_code in (408, 409, 429) or error.status_code >= 500
    return False


class ChatClient:
    """One OpenAI-compatible endpoint and model: the key from `api_key_env`, `max_attempts` tries per request.

    The wait before retry k (k = 1, 2, ...) is min(backoff * 2**(k-1), max_backoff) seconds, or the server's
    Retry-After when that is longer. `sleep` and `client` are injectable for tests.
    """

    def __init__(self, model: str, *, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 max_attempts: int = 6, backoff: float = 1.0, max_backoff: float = 60.0, timeout: float = 120.0,
                 client=None, sleep: Callable[[float], None] = time.sleep) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1; got {max_attempts}")
        self.model = model
        self._url = check_base_url(base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL)
        self.base_url = public_url(self._url)  # what is printed and stored; the client alone gets `_url`
        self.api_key_env = api_key_env or "OPENAI_API_KEY"
        self.max_attempts, self.backoff, self.max_backoff = max_attempts, backoff, max_backoff
        self.sleep = sleep
        self._secret = self._read_key()  # first: a missing key fails before anything slow happens
        if client is None:
            import openai

            # a query in the base URL (`?api-key=...`) goes on every request as its query, not inside the path
            parts = urlsplit(self._url)
            query = dict(parse_qsl(parts.query, keep_blank_values=True))
            client = openai.OpenAI(api_key=self._secret, base_url=urlunsplit((*parts[:3], "", "")), timeout=timeout,
                                   max_retries=0, default_query=query or None)
        self.client = client
        self.served_models: set[str] = set()
        self.usage = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never shows the key
        return f"ChatClient(model={self.model!r}, base_url={self.base_url!r}, api_key_env={self.api_key_env!r})"

    def _read_key(self) -> str:
        value = os.environ.get(self.api_key_env, "").strip()
        if value:
            return value
        if is_loopback(self._url):
            return LOOPBACK_KEY
        raise JudgeError(f"no API key for the judge at {self.base_url}: the environment variable {self.api_key_env} "
                         f"is not set (a server on 127.0.0.1/localhost needs none)")

    def _scrub(self, text: str) -> str:
        """`text` without the key, the URL's credentials or its query values, in every form the client sends them
        (as typed, percent-decoded or encoded, and user:password as the Basic header's base64): a server may echo
        them."""
        return scrub(text, self._url, self._secret if self._secret != LOOPBACK_KEY else "", self.base_url)

    def _delay(self, attempt: int, error: Exception) -> float:
        delay = min(self.backoff * 2 ** (attempt - 1), self.max_backoff)
        response = getattr(error, "response", None)
        try:
            retry_after = float(response.headers.get("retry-after")) if response is not None else None
        except (TypeError, ValueError):
            retry_after = None
        return max(delay, min(retry_after, self.max_backoff)) if retry_after else delay

    def complete(self, messages: list[dict], *, max_tokens: int, temperature: float = 0.0) -> str:
        """The assistant's text for `messages`; `JudgeError` when the server cannot answer after the retries."""
        import openai

        for attempt in range(1, self.max_attempts + 1):
            try:
                response = self.client.chat.completions.create(model=self.model, messages=messages,
                                                               temperature=temperature, max_tokens=max_tokens)
                break
            except ValueError as error:  # a body that is not JSON (an HTML error page, a cut-off answer)
                raise JudgeError(f"judge {self.model!r} at {self.base_url} answered with a body that is not JSON "
                                 f"({self._scrub(' '.join(str(error).split()))}); is the base URL an OpenAI-compatible "
                                 "endpoint (.../v1)?") from None
            except openai.OpenAIError as error:
                retry = _is_retryable(error) and attempt < self.max_attempts
                what = f"{type(error).__name__}: {self._scrub(str(error))}"
                if not retry:
                    tries = f" after {attempt} attempts" if attempt > 1 else ""
                    # `from None`: the chained exception would print request details; the message says what failed
                    raise JudgeError(f"judge {self.model!r} at {self.base_url} failed{tries}: {what}") from None
                delay = self._delay(attempt, error)
                log.warning("judge request failed (%s); retry %d/%d in %.1f s", what, attempt,
                            self.max_attempts - 1, delay)
                self.sleep(delay)
        if not response.choices:
            raise JudgeError(f"judge {self.model!r} at {self.base_url} answered with no choices")
        with self._lock:
            self.usage["requests"] += 1
            if getattr(response, "usage", None) is not None:
                self.usage["prompt_tokens"] += response.usage.prompt_tokens or 0
                self.usage["completion_tokens"] += response.usage.completion_tokens or 0
            served = getattr(response, "model", None)
            if served and self.served_models and served not in self.served_models:
                log.warning("judge answered as %r, earlier as %s: the server changed the model mid-run", served,
                            sorted(self.served_models))
            if served:
                self.served_models.add(served)
        return response.choices[0].message.content or ""

    def listed_model(self) -> str:
        """The one model the server lists (`GET /models`); a file path (llama.cpp lists its GGUF) by its file name."""
        import openai

        try:
            ids = [m.id for m in self.client.models.list()]
        except ValueError as error:
            raise JudgeError(f"the judge server at {self.base_url} listed its models in a body that is not JSON "
                             f"({self._scrub(' '.join(str(error).split()))}); name one with --judge-model") from None
        except openai.OpenAIError as error:
            raise JudgeError(f"the judge server at {self.base_url} did not list its models ({type(error).__name__}: "
                             f"{self._scrub(str(error))}); name one with --judge-model") from None
        if len(ids) != 1:
            raise JudgeError(f"the judge server at {self.base_url} lists {len(ids)} models "
                             f"({', '.join(ids[:10]) or 'none'}); choose one with --judge-model")
        return Path(ids[0]).name.removesuffix(".gguf") if os.path.isabs(ids[0]) else ids[0]

    def probe(self) -> str | None:
        """One one-token request: checks key and server, and returns the model name the server answers with."""
        self.complete([{"role": "user", "content": "Say OK."}], max_tokens=1)
        return next(iter(self.served_models), None)


def to_messages(prompt: str) -> list[dict]:
    """alpaca-eval's ChatML prompts (`<|im_start|>role ... <|im_end|>`) through its own `prompt_to_chatml`; any other
    text becomes one user message."""
    prompt = prompt.strip()  # alpaca-eval's OpenAI decoder strips too (is_strip=True)
    if prompt.startswith("<|im_start|>"):
        return import_alpaca_eval().utils.prompt_to_chatml(prompt)
    return [{"role": "user", "content": prompt}]


def make_completion_fn(model: str = DEFAULT_MODEL, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                       *, max_tokens: int = 256, temperature: float = 0.0, **client_kwargs) -> Callable[[str], str]:
    """prompt -> completion text on an OpenAI-compatible server (same key handling and retries as the judge), for
    evaluators that need a plain LLM call (atomic-fact splitting, fact verification). The returned function has
    `.client` (a `ChatClient`: usage counts, served model names)."""
    chat = ChatClient(model, base_url=base_url, api_key_env=api_key_env, **client_kwargs)

    def complete(prompt: str) -> str:
        return chat.complete(to_messages(prompt), max_tokens=max_tokens, temperature=temperature)

    complete.client = chat
    return complete


# --- alpaca-eval's annotator configs -------------------------------------------------------------------------

def annotator_configs() -> dict[str, Path]:
    """Annotator config names -> configs.yaml: alpaca-eval's built-in ones and ours (`evals/configs/`, which win)."""
    found: dict[str, Path] = {}
    builtin = Path(import_alpaca_eval().__file__).parent / "evaluators_configs"
    for root in (builtin, CONFIGS_DIR):
        for path in sorted(root.glob("*/configs.yaml")):
            found[path.parent.name] = path
    return found


class UnsupportedConfigError(ValueError):
    """An annotator config the OpenAI judge cannot run; `short` says why in a few words."""

    def __init__(self, message: str, short: str) -> None:
        super().__init__(message)
        self.short = short


def load_annotator_config(annotator: str | os.PathLike) -> tuple[str, dict]:
    """(name, SingleAnnotator kwargs) of a one-annotator config, given a name or a configs.yaml / its folder."""
    path = Path(annotator)
    if path.is_dir():
        path = path / "configs.yaml"
    if not path.is_file():
        known = annotator_configs()
        if str(annotator) not in known:
            raise ValueError(f"annotator config {str(annotator)!r} is not known; use a configs.yaml path or one of: "
                             f"{', '.join(sorted(known))}")
        path = known[str(annotator)]
    try:
        configs = parse_yaml(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a valid annotator configs.yaml ({' '.join(str(e).split())})") from None
    if not isinstance(configs, dict) or len(configs) != 1:
        raise UnsupportedConfigError(f"{path}: one annotator expected (pools such as `alpaca_farm` are not "
                                     f"supported); found {list(configs or {})}",
                                     f"a pool of {len(configs or {})} annotators")
    (name, config), = configs.items()
    config = dict(config)
    for key in _OWN_ANNOTATOR_KWARGS:
        config.pop(key, None)
    kwargs = dict(config.get("completions_kwargs") or {})
    unknown = set(kwargs) - _KNOWN_COMPLETION_KWARGS
    if unknown or config.get("completion_key", "completions") != "completions":
        needs = sorted(unknown) or [config.get("completion_key")]
        raise UnsupportedConfigError(f"annotator config {name!r} needs {needs}, which the OpenAI judge does not "
                                     "provide (it returns the completion text only)", f"needs {', '.join(needs)}")
    kwargs.pop("model_name", None)  # the judge model is our setting, not the config's retired one
    config["completions_kwargs"] = kwargs
    template = config.get("prompt_template")
    for root in (path.parents[1], path.parent):  # alpaca-eval reads it relative to the configs' root
        if template and (root / template).is_file():
            config["prompt_template"] = str((root / template).resolve())
            break
    return name, config


def config_file_digest(annotator: str | os.PathLike, config: dict) -> str | None:
    """For a config given by path (a configs.yaml or its folder): the first 12 hex digits of the SHA-256 of the
    file's bytes and of the prompt template it names; None for a config given by name (alpaca-eval's configs are
    pinned by its version, ours by the repository's commit). Two different files under one annotator name are
    then two judges."""
    path = Path(annotator)
    if path.is_dir():
        path = path / "configs.yaml"
    if not path.is_file():
        return None
    digest = hashlib.sha256(path.read_bytes())
    template = config.get("prompt_template")
    if template and Path(template).is_file():
        digest.update(b"\0" + Path(template).read_bytes())
    return digest.hexdigest()[:12]


def describe_annotator_configs() -> list[dict]:
    """Every known config: name, source ("alpaca-eval" or "harness"), pairs per prompt, and whether the OpenAI
    judge can run it (`usable`; else `why` not: pools, logprob or function-call judges)."""
    rows = []
    for name, path in annotator_configs().items():
        row = {"name": name, "source": "harness" if path.parent.parent == CONFIGS_DIR else "alpaca-eval",
               "pairs_per_prompt": None, "usable": False, "why": ""}
        try:
            _, config = load_annotator_config(path)
            row.update(pairs_per_prompt=int(config.get("batch_size", 1)), usable=True)
        except UnsupportedConfigError as error:
            row["why"] = error.short
        except (ValueError, TypeError, OSError, yaml.YAMLError) as error:
            row["why"] = str(error)
        rows.append(row)
    return rows


# --- the judge ----------------------------------------------------------------------------------------------------

class OpenAIJudge(Judge):
    """alpaca-eval's annotator (prompt, batching, parser) answered by `model` on an OpenAI-compatible server.

    model: the judge model asked for; `self.model` becomes the name the server answers with. None: gpt-4o-mini at
        api.openai.com, else the one model the server lists (`GET /models`; an error when it lists several).
    annotator: an alpaca-eval annotator config name (`alpaca_farm_greedy_gpt4`, `alpaca_eval_gpt4`, ours
        `alpaca_farm_greedy_gpt4_b1`) or a configs.yaml path; its `fn_completions` and judge model are replaced.
        A config given by path enters the version by its content (`config_file_digest`).
    base_url: any OpenAI-compatible `/v1` endpoint (default: OPENAI_BASE_URL, else api.openai.com).
    api_key_env: the environment variable holding the key (not needed for a loopback base_url).
    max_tokens: overrides the config's (it enters the judge's version: a shorter answer can parse differently).
    max_workers: prompts sent at once.
    resolve_model: learn the served model name with a one-token probe now (fails fast on a bad key or server).
        With False, `model` is taken as given: pass the served name to reuse annotations cached under it offline.
    Other keyword arguments (max_attempts, backoff, max_backoff, timeout, client, sleep) go to `ChatClient`.
    """

    name = "openai"

    def __init__(self, model: str | None = None, *, annotator: str | os.PathLike = DEFAULT_ANNOTATOR,
                 base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY", max_tokens: int | None = None,
                 max_workers: int = 4, resolve_model: bool = True, **client_kwargs) -> None:
        self._chat = ChatClient(model or DEFAULT_MODEL, base_url=base_url, api_key_env=api_key_env, **client_kwargs)
        if model is None and resolve_model and urlsplit(self._chat.base_url).hostname != "api.openai.com":
            # llama.cpp and vLLM answer as whatever model is asked for: the record must name the one they serve
            self._chat.model = model = self._chat.listed_model()
        model = model or DEFAULT_MODEL
        self.max_workers = max(1, int(max_workers))
        self.annotator_name, config = load_annotator_config(annotator)
        self.config_digest = config_file_digest(annotator, config)
        self.pairs_per_prompt = int(config.get("batch_size", 1))
        completion_kwargs = config["completions_kwargs"]
        self.max_tokens = int(max_tokens or completion_kwargs.get("max_tokens", 250))
        self.temperature = float(completion_kwargs.get("temperature", 0.0))
        self._annotator = self._build_annotator(config)
        served = self._chat.probe() if resolve_model else None
        self.model = served or model
        version = f"alpaca-eval {import_alpaca_eval().__version__} {self.annotator_name}"
        if self.config_digest:
            version += f" config-sha256={self.config_digest}"
        if max_tokens is not None:
            version += f" max_tokens={self.max_tokens}"
        host = urlsplit(self._chat.base_url).netloc  # public_url: no credentials
        if host != "api.openai.com":
            version += f" @{host}"
        self.version = version

    def identity(self) -> dict[str, str]:
        """name, model, version, and the annotator config by name (two configs are two judges)."""
        return {**super().identity(), "config": self.annotator_name}

    def __repr__(self) -> str:
        return f"OpenAIJudge({self.identity()}, base_url={self._chat.base_url!r})"

    def close(self) -> None:
        if hasattr(self._chat.client, "close"):
            self._chat.client.close()

    @property
    def usage(self) -> dict[str, int]:
        """Requests and tokens sent so far (for the cost of a run)."""
        return dict(self._chat.usage)

    def _build_annotator(self, config: dict):
        ae = import_alpaca_eval()
        with tempfile.TemporaryDirectory() as tmp:  # alpaca-eval reads a config file; the template is read now too
            path = Path(tmp) / self.annotator_name / "configs.yaml"
            path.parent.mkdir()
            path.write_text(yaml.safe_dump({self.annotator_name: config}))
            return ae.annotators.PairwiseAnnotator(
                annotators_config=str(path), seed=0, caching_path=None, is_avoid_reannotations=False,
                fn_completions=self._complete_prompts, is_randomize_output_order=False, is_shuffle=False,
                packages_for_which_to_show_version=None)

    def _complete_prompts(self, prompts: Sequence[str], **kwargs) -> dict[str, list]:
        """alpaca-eval's `fn_completions` contract: prompts -> {"completions": [text per prompt], ...}.
        `**kwargs` are the config's completions_kwargs (our max_tokens and temperature are already read from them)."""
        start = time.perf_counter()
        messages = [to_messages(p) for p in prompts]

        failed = threading.Event()  # once one prompt has failed for good, the others are not started

        def ask(m: list[dict]) -> str:
            if failed.is_set():
                raise JudgeError("cancelled: another prompt of this batch failed")
            try:
                return self._chat.complete(m, max_tokens=self.max_tokens, temperature=self.temperature)
            except JudgeError:
                failed.set()
                raise

        if self.max_workers == 1 or len(messages) == 1:
            texts = [ask(m) for m in messages]
        else:
            with ThreadPoolExecutor(max_workers=self.max_workers) as pool:
                texts = list(pool.map(ask, messages))  # the first JudgeError propagates
        seconds = (time.perf_counter() - start) / max(len(prompts), 1)
        return {"completions": texts, "time_per_example": [seconds] * len(prompts)}

    def _prefer(self, pairs: Sequence[Pair]) -> list[float | None]:
        rows = [{"instruction": p.prompt_text, "output_1": p.output_1, "output_2": p.output_2} for p in pairs]
        try:
            with warnings.catch_warnings():  # pandas FutureWarnings from inside alpaca-eval, one per call
                warnings.filterwarnings("ignore", category=FutureWarning, module="alpaca_eval")
                annotated = self._annotator.annotate_pairs(rows)
        finally:
            self._annotator.df_annotations = None  # its in-memory store only grows; we cache in judging.py
        found = {(r["instruction"], r["output_1"], r["output_2"]): r.get("preference") for r in annotated}
        out: list[float | None] = []
        for row in rows:
            value = found.get((row["instruction"], row["output_1"], row["output_2"]))
            out.append(None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value))
        return out
