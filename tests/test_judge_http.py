"""OpenAIJudge against a real local HTTP server (tests/fake_openai.py): retries, timeouts, bad
replies, the on-disk cache, bounded concurrency, and a server that stays down.

    pytest tests/test_judge_http.py
"""

from __future__ import annotations

import json
import math
import socket
import time

import pytest
from fake_openai import FakeOpenAI

from distill.eval.judges import (
    Judge,
    JudgeCache,
    JudgeReplyError,
    JudgeRequestError,
    JudgeUnavailableError,
    OpenAIJudge,
    backoff_delay,
    check_judge_ready,
    judge_from_config,
    request_key,
)
from distill.io import InputError

MSG = [{"role": "system", "content": "You judge."}, {"role": "user", "content": "Rate this."}]


@pytest.fixture
def server():
    with FakeOpenAI() as s:
        yield s


def make_judge(base_url: str, tmp_path, **kw) -> OpenAIJudge:
    opts = dict(
        api_key_env=None,
        cache_path=tmp_path / "cache.jsonl",
        max_retries=3,
        timeout_s=5.0,
        backoff_base_s=0.01,
        backoff_max_s=0.05,
        max_concurrency=4,
    )
    return OpenAIJudge("judge-x", base_url=base_url, **(opts | kw))


def cache_lines(tmp_path) -> list[dict]:
    path = tmp_path / "cache.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_is_a_judge(server, tmp_path):
    judge = make_judge(server.base_url, tmp_path)
    assert isinstance(judge, Judge) and judge.rating == "generate"
    # a server cannot continue a prefilled turn: the reading methods refuse, naming the fix
    with pytest.raises(JudgeRequestError, match="rating: generate"):
        judge.continuation_logprobs(MSG, "[", ["a", "b"])
    with pytest.raises(JudgeRequestError, match="rating: generate"):
        judge.rate(MSG)
    assert server.n_requests == 0


def test_429_then_500_then_success(server, tmp_path):
    server.script += [("status", 429), ("status", 500), ("content", "fine [[9]]")]
    judge = make_judge(server.base_url, tmp_path)
    assert judge.complete(MSG, max_tokens=2048, temperature=0.0) == "fine [[9]]"
    assert server.n_requests == 3 and judge.n_requests == 3
    body = server.requests[-1]
    assert body["model"] == "judge-x" and body["messages"] == MSG
    assert body["max_tokens"] == 2048 and body["temperature"] == 0.0
    [line] = cache_lines(tmp_path)
    assert line["response"]["content"] == "fine [[9]]"
    assert line["key"] == request_key(line["request"])


def test_retry_after_is_honoured(server, tmp_path):
    server.script += [("status", 429, 0.3), ("content", "ok")]
    judge = make_judge(server.base_url, tmp_path, backoff_max_s=1.0)
    t0 = time.monotonic()
    assert judge.complete(MSG, max_tokens=5, temperature=0.0) == "ok"
    assert time.monotonic() - t0 >= 0.3


def test_backoff_grows_and_is_capped():
    for attempt in range(6):
        d = backoff_delay(attempt, base=1.0, cap=8.0)
        full = min(8.0, 2.0**attempt)
        assert full / 2 <= d <= full
    assert backoff_delay(0, base=1.0, cap=8.0, retry_after=5.0) == 5.0
    assert backoff_delay(0, base=1.0, cap=8.0, retry_after=100.0) == 8.0


def test_client_timeout_then_success(server, tmp_path):
    server.script += [("hang", 3.0), ("content", "after the hang")]
    judge = make_judge(server.base_url, tmp_path, timeout_s=0.3)
    t0 = time.monotonic()
    assert judge.complete(MSG, max_tokens=5, temperature=0.0) == "after the hang"
    assert time.monotonic() - t0 < 2.5  # the hung request was abandoned, not waited out
    assert server.n_requests == 2


def test_timeouts_exhaust_retries(server, tmp_path):
    server.default = ("hang", 3.0)
    judge = make_judge(server.base_url, tmp_path, timeout_s=0.2, max_retries=1)
    with pytest.raises(
        JudgeUnavailableError, match=r"gave up after 2 attempts \(last: timed out\)"
    ):
        judge.complete(MSG, max_tokens=5, temperature=0.0)
    assert server.n_requests == 2


def test_malformed_json_names_the_endpoint(server, tmp_path):
    server.script += [("malformed",)]
    judge = make_judge(server.base_url, tmp_path)
    with pytest.raises(JudgeReplyError) as e:
        judge.complete(MSG, max_tokens=5, temperature=0.0)
    assert f"{server.base_url}/chat/completions" in str(e.value)
    assert "not valid JSON" in str(e.value)
    assert server.n_requests == 1  # a broken reply is not retried
    assert cache_lines(tmp_path) == []


def test_missing_fields_names_the_endpoint(server, tmp_path):
    server.script += [("no_choices",)]
    judge = make_judge(server.base_url, tmp_path)
    with pytest.raises(JudgeReplyError, match=r'127\.0\.0\.1.*no "choices"\[0\]'):
        judge.complete(MSG, max_tokens=5, temperature=0.0)


def test_logprobs_requested_without_logprobs_in_reply(server, tmp_path):
    server.script += [("content", "m")]  # a server that ignores logprobs=true
    judge = make_judge(server.base_url, tmp_path)
    with pytest.raises(JudgeReplyError, match="logprobs"):
        judge.choice_logprobs(MSG, ["m", "M"])


def test_client_error_is_not_retried(server, tmp_path):
    server.script += [("status", 401)]
    judge = make_judge(server.base_url, tmp_path)
    with pytest.raises(JudgeRequestError, match="HTTP 401"):
        judge.complete(MSG, max_tokens=5, temperature=0.0)
    assert server.n_requests == 1


def test_choice_logprobs(server, tmp_path):
    server.script += [("logprobs", {"M": -0.05, "m": -3.0, "Both": -7.0})]
    judge = make_judge(server.base_url, tmp_path)
    lps = judge.choice_logprobs(MSG, ["m", "M", "x"])
    assert lps["m"] == -3.0 and lps["M"] == -0.05 and lps["x"] == -math.inf
    body = server.requests[-1]
    assert body["logprobs"] is True and body["top_logprobs"] == 20 and body["max_tokens"] == 1
    # served again from the cache, with the same numbers
    assert judge.choice_logprobs(MSG, ["m", "M", "x"]) == lps
    assert server.n_requests == 1


def test_rerun_is_served_from_the_cache(server, tmp_path):
    prompts = [[{"role": "user", "content": f"question {i}"}] for i in range(5)]
    server.responder = lambda body: "reply to " + body["messages"][0]["content"]
    judge = make_judge(server.base_url, tmp_path)
    first = judge.map(lambda m: judge.complete(m, max_tokens=10, temperature=0.0), prompts)
    assert first == [f"reply to question {i}" for i in range(5)]
    assert server.n_requests == 5
    again = make_judge(server.base_url, tmp_path)  # a new process would read the same file
    second = again.map(lambda m: again.complete(m, max_tokens=10, temperature=0.0), prompts)
    assert second == first
    assert server.n_requests == 5 and again.n_requests == 0 and again.n_cache_hits == 5
    # other parameters are another request
    again.complete(prompts[0], max_tokens=11, temperature=0.0)
    assert server.n_requests == 6


def test_bounded_concurrency():
    with FakeOpenAI(delay_s=0.15) as server:
        import tempfile
        from pathlib import Path

        with tempfile.TemporaryDirectory() as tmp:
            judge = make_judge(server.base_url, Path(tmp), max_concurrency=3)
            prompts = [[{"role": "user", "content": str(i)}] for i in range(12)]
            out = judge.map(lambda m: judge.complete(m, max_tokens=5, temperature=0.0), prompts)
    assert len(out) == 12 and server.n_requests == 12
    assert server.max_in_flight == 3  # never more than 3, and the 3 slots were used


def test_server_that_stays_down_keeps_what_was_paid(server, tmp_path):
    prompts = [[{"role": "user", "content": f"q{i}"}] for i in range(6)]
    server.responder = lambda body: "[[5]] " + body["messages"][0]["content"]
    server.script += [("ok",)] * 3
    server.default = ("status", 503)  # then down for good
    judge = make_judge(server.base_url, tmp_path, max_concurrency=1, max_retries=2)
    with pytest.raises(JudgeUnavailableError) as e:
        judge.map(lambda m: judge.complete(m, max_tokens=5, temperature=0.0), prompts)
    msg = str(e.value)
    assert "gave up after 3 attempts" in msg and "HTTP 503" in msg
    assert "3 of 6 requests succeeded" in msg and str(tmp_path / "cache.jsonl") in msg
    assert len(cache_lines(tmp_path)) == 3
    assert server.n_requests == 3 + 3  # 3 answered, then one request tried 3 times; rest cancelled

    # The server comes back (elsewhere): the rerun pays only for the 3 missing replies.
    with FakeOpenAI() as back:
        back.responder = server.responder
        again = make_judge(back.base_url, tmp_path)
        out = again.map(lambda m: again.complete(m, max_tokens=5, temperature=0.0), prompts)
    assert out == [f"[[5]] q{i}" for i in range(6)]
    assert back.n_requests == 3 and len(cache_lines(tmp_path)) == 6


def test_no_server_at_all(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again at once: nothing listens there
    judge = make_judge(f"http://127.0.0.1:{port}/v1", tmp_path, max_retries=1)
    with pytest.raises(JudgeUnavailableError, match="connection failed") as e:
        judge.complete(MSG, max_tokens=5, temperature=0.0)
    assert "0 requests succeeded" in str(e.value)


def test_truncated_cache_line_is_skipped(tmp_path):
    cache = JudgeCache(tmp_path / "c.jsonl")
    cache.put("k1", {"model": "a"}, {"content": "x"})
    with open(tmp_path / "c.jsonl", "a") as f:
        f.write('{"key": "k2", "request": {"mod')  # a kill mid-line
    again = JudgeCache(tmp_path / "c.jsonl")
    assert len(again) == 1 and again.get("k1") == {"content": "x"}


def test_config_errors(monkeypatch, tmp_path):
    with pytest.raises(InputError, match="unknown key"):
        judge_from_config({"model": "m", "base_ur1": "x"}, where="cfg.yaml")
    with pytest.raises(InputError, match="`model` is missing"):
        judge_from_config({"base_url": "http://x/v1"})
    monkeypatch.delenv("DISTILL_TEST_KEY", raising=False)
    with pytest.raises(InputError, match="DISTILL_TEST_KEY, which is not set"):
        judge_from_config({"model": "m", "api_key_env": "DISTILL_TEST_KEY"})
    monkeypatch.setenv("DISTILL_TEST_KEY", "sk-test")
    judge = judge_from_config(
        {"model": "m", "api_key_env": "DISTILL_TEST_KEY", "base_url": "http://127.0.0.1:9/v1"}
    )
    assert judge.name == "m" and judge.endpoint == "http://127.0.0.1:9/v1/chat/completions"


def test_api_key_is_checked_before_any_job(monkeypatch):
    config = {"kind": "openai", "model": "gpt-4", "base_url": None, "api_key_env": "DISTILL_KEY"}
    monkeypatch.delenv("DISTILL_KEY", raising=False)
    with pytest.raises(InputError) as error:
        check_judge_ready(config)
    message = str(error.value)
    assert "DISTILL_KEY" in message and "eval.judge.api_key_env" in message
    assert "export DISTILL_KEY=" in message and "\n" not in message  # one paragraph with the fix
    monkeypatch.setenv("DISTILL_KEY", "  ")  # blank is not a key
    with pytest.raises(InputError, match="DISTILL_KEY"):
        check_judge_ready(config)
    monkeypatch.setenv("DISTILL_KEY", "sk-test")
    check_judge_ready(config)
    monkeypatch.delenv("DISTILL_KEY")
    check_judge_ready(config | {"api_key_env": None})  # a keyless server (vLLM)
    check_judge_ready({"kind": "transformers", "model": "teacher", "api_key_env": "DISTILL_KEY"})
