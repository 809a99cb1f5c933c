"""Judge settings end to end: `--judge-config`, timeout, retries, the unparsable-answer stop, `harness judges`, and no
credentials in records or messages.

A tiny OpenAI-compatible server on 127.0.0.1 (the standard library's HTTP server, a thread of this process) answers
`/v1/chat/completions` as the test says; `harness eval` judges the tiny random Llama's outputs through the real
`openai` client. Every request loop is bounded (retries, early stop) and counted.
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from evals.judge_monitor import MonitoredJudge, UnparsableJudgeError, check_unparsed
from evals.judging import Judge, JudgeError, Pair
from evals.openai_judge import OpenAIJudge, public_url
from harness.cli import main
from harness.results import ResultsStore

B1 = "alpaca_farm_greedy_gpt4_b1"


def longer_output(messages: list[dict]) -> str:
    """A parsable judge for the one-pair prompt: the longer output wins."""
    found = re.findall(r"### Output \((?:a|b)\) for example 5:\n(.*?)(?=\n\n##)", messages[-1]["content"], re.S)
    if len(found) != 2:
        return "OK"  # the judge's one-token probe
    return "Output (a)" if len(found[0]) > len(found[1]) else "Output (b)"


class FakeOpenAIServer:
    """`POST /v1/chat/completions` -> `answer(messages)` after `delay` seconds, answering as whatever model is asked
    for (as llama.cpp does); `requests` counts them. `GET /v1/models` lists `models`."""

    def __init__(self, answer=longer_output, delay: float = 0.0,
                 models=("/models/fake-local-judge.gguf",)) -> None:  # llama.cpp lists its GGUF by path
        self.answer, self.delay, self.requests, self.models = answer, delay, 0, list(models)
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                self._send({"object": "list", "data": [{"id": m, "object": "model"} for m in owner.models]})

            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.requests += 1
                time.sleep(owner.delay)
                reply = {"id": "c1", "object": "chat.completion", "created": 0, "model": body["model"],
                         "choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": owner.answer(body["messages"])}}],
                         "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
                self._send(reply)

            def _send(self, reply: dict) -> None:
                data = json.dumps(reply).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up (timeout): nothing to answer
                    pass

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def server():
    servers = []

    def start(**kwargs) -> FakeOpenAIServer:
        servers.append(FakeOpenAIServer(**kwargs))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


@pytest.fixture
def eval_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    path = tmp_path / "evalset.json"
    path.write_text(json.dumps([{"instruction": f"Name a colour number {i}.", "input": ""} for i in range(6)]))
    return str(path)


def _eval(tmp_path, eval_file, url, *extra):
    return main(["eval", "tiny-random-llama", "--results", str(tmp_path / "results"), "--eval-set", eval_file,
                 "--max-new-tokens", "6", "--judge", "openai", "--judge-base-url", url, *extra])


# --- end to end --------------------------------------------------------------------------------------------------

def test_one_pair_config_with_credentials_in_the_url(server, tmp_path, eval_file, capsys):
    fake = server()
    url = fake.url.replace("http://", "http://judge-user:s3cret-pw@")
    assert _eval(tmp_path, eval_file, url, "--judge-config", B1, "--judge-max-tokens", "5") == 0
    (rec,) = ResultsStore(tmp_path / "results").records()
    host = url.split("@")[1].split("/")[0]
    assert {k: rec["judge"][k] for k in ("name", "model", "config")} == \
        {"name": "openai", "model": "fake-local-judge", "config": B1}
    assert rec["judge"]["version"].endswith(f" {B1} max_tokens=5 @{host}")
    m = rec["metrics"]
    assert m["unparsed_answers_pct"] == 0.0 and m["n"] == 6
    assert m["lc_win_rate"] is not None and m["lc_standard_error"] >= 0
    assert 1 < fake.requests <= 1 + 12  # the probe, then one pair per prompt: 6 pairs x 2 orders at most
    out = capsys.readouterr()
    assert "unparsable 0 (0%)" in out.out and "length-controlled" in out.out
    text = json.dumps(rec) + out.out + out.err
    assert "s3cret-pw" not in text and "judge-user" not in text


def test_unparsable_judge_ends_with_one_line_and_records_nothing(server, tmp_path, eval_file, capsys):
    fake = server(answer=lambda messages: "Both outputs have merits.")
    assert _eval(tmp_path, eval_file, fake.url, "--judge-config", B1) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot answer in a parsable form" in err[0] and "--judge-max-unparsed 0.5" in err[0]
    assert f"config {B1}" in err[0]
    assert not list(ResultsStore(tmp_path / "results").records())
    assert fake.requests <= 1 + 12  # the probe and at most one batch of 12 answers before the stop


def test_timeout_and_retry_cap_bound_a_silent_server(server, tmp_path, eval_file, capsys):
    fake = server(delay=3.0)
    started = time.monotonic()
    code = _eval(tmp_path, eval_file, fake.url, "--judge-timeout", "0.3", "--judge-max-retries", "1")
    assert code != 0 and time.monotonic() - started < 10
    err = capsys.readouterr().err
    assert "after 2 attempts" in err and "APITimeoutError" in err
    assert fake.requests == 2  # the probe, asked twice, then the end (no model was loaded)


def test_the_record_names_the_served_model_not_the_default(server, monkeypatch):
    """A local server answers as any model asked for: without --judge-model the judge asks which one it serves."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    fake = server(models=["qwen-a", "qwen-b"])
    with pytest.raises(JudgeError, match=r"lists 2 models \(qwen-a, qwen-b\); choose one with --judge-model"):
        OpenAIJudge(annotator=B1, base_url=fake.url)
    assert fake.requests == 0
    assert OpenAIJudge("qwen-b", annotator=B1, base_url=fake.url).identity()["model"] == "qwen-b"


def test_bad_judge_options_fail_before_any_work(tmp_path, eval_file, capsys):
    assert main(["eval", "tiny-random-llama", "--eval-set", eval_file, "--judge-config", B1]) == 2
    assert "apply to --judge openai only" in capsys.readouterr().err
    assert main(["eval", "tiny-random-llama", "--eval-set", eval_file, "--judge", "openai", "--judge-config",
                 "no_such_config"]) == 2
    assert "'no_such_config' is not known" in capsys.readouterr().err
    for option, value in (("--judge-max-unparsed", "1.5"), ("--judge-timeout", "0")):  # the parser's range check
        with pytest.raises(SystemExit) as exit_:
            main(["eval", "tiny-random-llama", "--eval-set", eval_file, "--judge", "openai", option, value])
        assert exit_.value.code == 2 and f"argument {option}: {value} is out of range" in capsys.readouterr().err


def test_judges_lists_alpaca_eval_configs_and_ours(capsys):
    assert main(["judges"]) == 0
    out = capsys.readouterr().out
    usable, _, unusable = out.partition("not usable by --judge openai:")
    assert re.search(r"alpaca_farm_greedy_gpt4 \(default\)\s+alpaca-eval\s+5 pair\(s\) per prompt", usable)
    assert re.search(rf"{B1}\s+harness\s+1 pair\(s\) per prompt", usable)
    assert "\n  alpaca_farm (alpaca-eval): a pool of 13 annotators\n" in unusable
    assert "\n  weighted_alpaca_eval_gpt4_turbo (alpaca-eval): needs logprobs, top_logprobs\n" in unusable


# --- credentials ---------------------------------------------------------------------------------------------------

def test_public_url_drops_userinfo_and_masks_query_values():
    assert public_url("https://user:pw@judge.example.com:8443/v1?api-key=SECRET&x=1#frag") == \
        "https://judge.example.com:8443/v1?api-key=***&x=***"
    assert public_url("http://[::1]:8000/v1") == "http://[::1]:8000/v1"
    assert public_url("http://127.0.0.1:9/v1") == "http://127.0.0.1:9/v1"


def test_error_messages_carry_no_url_secrets(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    url = "http://admin:hunter2-pw@127.0.0.1:9/v1?api-key=QUERY-SECRET"  # port 9: nothing listens
    judge = OpenAIJudge("m", annotator=B1, base_url=url, resolve_model=False, max_attempts=1, timeout=2)
    with pytest.raises(JudgeError) as error:
        judge._prefer([Pair("q", "", "a", "bb")])
    text = str(error.value) + repr(judge) + json.dumps(judge.identity())
    assert "127.0.0.1:9" in text
    assert not any(s in text for s in ("hunter2-pw", "admin", "QUERY-SECRET"))
    remote = "https://admin:hunter2-pw@judge.example.com/v1"
    with pytest.raises(JudgeError, match="is not set") as error:
        OpenAIJudge("m", base_url=remote, api_key_env="HARNESS_NO_SUCH_KEY", resolve_model=False)
    assert "hunter2-pw" not in str(error.value) and "https://judge.example.com/v1" in str(error.value)


# --- the monitor ---------------------------------------------------------------------------------------------------

class Scripted(Judge):
    """Answers from a list, in order (None: unparsable)."""

    name, model, version = "scripted", "list", "1"

    def __init__(self, answers):
        self.answers, self.calls = list(answers), 0

    def identity(self):
        return {**super().identity(), "config": "cfg"}

    def _prefer(self, pairs):
        self.calls += 1
        out, self.answers = self.answers[:len(pairs)], self.answers[len(pairs):]
        return out


PAIRS = [Pair(f"q{i}", "", "a", "b" * (i + 2), str(i)) for i in range(4)]


def test_monitor_reports_progress_and_stops_once_the_limit_is_certain():
    lines = []
    clock = iter(range(100)).__next__
    judge = MonitoredJudge(Scripted([None, 2.0, None, None, 1.0, 2.0, 2.0, 2.0]), expected=8, max_unparsed=0.25,
                           log=lines.append, clock=clock)
    assert judge.identity() == {"name": "scripted", "model": "list", "version": "1", "config": "cfg"}
    assert judge._prefer(PAIRS[:2]) == [None, 2.0]  # 1 unparsable of 8 needed: could still end under 25%
    assert lines[-1] == "judge: 2/8 answers asked | unparsable 1 (50%) | 0.50 s per answer | ETA 3 s"
    with pytest.raises(UnparsableJudgeError, match=r"3 unparsable answers after 4 of the 8 needed, over "
                                                   r"--judge-max-unparsed 0\.25"):
        judge._prefer(PAIRS[2:])  # 3 > 0.25 * 8: no later answer can bring the share under the limit
    assert judge.inner.calls == 2


def test_final_check_counts_every_answer():
    judge = Scripted([])
    assert check_unparsed(judge, [2.0, None, 1.0, 1.5], 0.25) == 0.25  # at the limit: allowed
    with pytest.raises(UnparsableJudgeError, match=r"2 of 4 answers unparsable \(50%\)"):
        check_unparsed(judge, [2.0, None, None, 1.5], 0.25)
    assert check_unparsed(judge, [None, None], None) == 1.0  # no limit
    with pytest.raises(ValueError, match="max_unparsed=2"):
        MonitoredJudge(judge, expected=1, max_unparsed=2)
