"""The groq teacher against a local server speaking Groq's wire format (pytest-httpserver)."""

import json
import logging
import time

import deepcoder_groq
import pytest
from werkzeug import Response

from deepcoder_core.plugins import PluginError, PluginManager
from deepcoder_core.teachers import RateLimiter, TeacherError

KEY = "gsk_test_0123456789abcdefSECRET"
PATH = "/openai/v1/chat/completions"
LIMIT_HEADERS = {
    "x-ratelimit-limit-requests": "1000",
    "x-ratelimit-limit-tokens": "6000",
    "x-ratelimit-remaining-requests": "999",
    "x-ratelimit-remaining-tokens": "5800",
    "x-ratelimit-reset-requests": "1m26.4s",
    "x-ratelimit-reset-tokens": "2s",
}


def chat_body(content="Thought: done\nFinal Answer: 42", reasoning=None):
    message = {"role": "assistant", "content": content}
    if reasoning is not None:
        message["reasoning"] = reasoning
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "qwen/qwen3-32b",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}],
        "usage": {
            "prompt_tokens": 12,
            "completion_tokens": 7,
            "total_tokens": 19,
            "total_time": 0.01,
        },
        "system_fingerprint": "fp_1",
        "x_groq": {"id": "req_1"},
    }


def ok(body=None, headers=None):
    return Response(
        json.dumps(body or chat_body()),
        status=200,
        headers={**LIMIT_HEADERS, **(headers or {})},
        content_type="application/json",
    )


def error(status, message, headers=None):
    body = {"error": {"message": message, "type": "invalid_request_error", "code": "x"}}
    return Response(
        json.dumps(body), status=status, headers=headers or {}, content_type="application/json"
    )


class Script:
    """Answers each request with the next scripted response, recording the request bodies."""

    def __init__(self, *responses):
        self.responses = list(responses)
        self.requests = []

    def __call__(self, request):
        self.requests.append(json.loads(request.data))
        item = self.responses.pop(0) if len(self.responses) > 1 else self.responses[0]
        return item if isinstance(item, Response) else item()


@pytest.fixture
def teacher_for(httpserver, monkeypatch):
    monkeypatch.setenv("GROQ_API_KEY", KEY)

    def make(*responses, **options):
        script = Script(*responses)
        httpserver.expect_request(PATH, method="POST").respond_with_handler(script)
        options.setdefault("requests_per_minute", None)
        options.setdefault("tokens_per_minute", None)
        teacher = deepcoder_groq.GroqTeacher(base_url=httpserver.url_for("/"), **options)
        return teacher, script

    return make


MESSAGES = [{"role": "user", "content": "Add 2 and 40."}]


def test_registered_and_missing_key_is_one_clear_line(monkeypatch):
    monkeypatch.delenv("GROQ_API_KEY", raising=False)
    manager = PluginManager()
    manager.add(deepcoder_groq, name="deepcoder-groq")
    with pytest.raises(PluginError, match="GROQ_API_KEY is not set") as info:
        manager.build("teacher", "groq")
    assert "\n" not in str(info.value)


def test_completion_sends_parameters_and_captures_parsed_reasoning(teacher_for):
    teacher, script = teacher_for(ok(chat_body("Final Answer: 42", reasoning="2 + 40 = 42")))
    done = teacher.complete(
        MESSAGES, temperature=0.3, top_p=0.9, max_new_tokens=64, stop=["Observation:"]
    )
    assert done.text == "Final Answer: 42"
    assert done.reasoning == "2 + 40 = 42"
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (12, 7)
    sent = script.requests[0]
    assert sent["model"] == "qwen/qwen3-32b"
    assert sent["reasoning_format"] == "parsed"
    assert sent["max_completion_tokens"] == 64 and sent["stop"] == ["Observation:"]
    assert sent["temperature"] == 0.3 and sent["messages"] == MESSAGES
    assert not hasattr(teacher, "score")  # Groq gives no logprobs


def test_raw_think_tags_are_split_off(teacher_for):
    teacher, _ = teacher_for(
        ok(chat_body("<think>plan it</think>Final Answer: 42")), reasoning_format="raw"
    )
    done = teacher.complete(MESSAGES)
    assert (done.reasoning, done.text) == ("plan it", "Final Answer: 42")


def test_429_honours_retry_after_and_counts_the_retry(teacher_for):
    limited = error(
        429, "Rate limit reached", {"retry-after": "0.6", "x-ratelimit-remaining-requests": "5"}
    )
    teacher, script = teacher_for(limited, ok())
    start = time.monotonic()
    done = teacher.complete(MESSAGES)
    assert time.monotonic() - start >= 0.6  # backoff alone would wait at most 0.5 s
    assert done.text.endswith("42")
    assert len(script.requests) == 2
    assert teacher.stats.retries == 1


def test_500_then_malformed_body_are_retried(teacher_for):
    malformed = Response("{not json", status=200, content_type="application/json")
    no_choices = ok({"id": "x", "object": "chat.completion", "choices": []})
    teacher, script = teacher_for(
        error(500, "upstream"), malformed, no_choices, ok(), max_backoff=0.05
    )
    assert teacher.complete(MESSAGES).text.endswith("42")
    assert len(script.requests) == 4 and teacher.stats.retries == 3


def test_gives_up_after_max_retries_with_the_kind(teacher_for):
    teacher, script = teacher_for(error(503, "overloaded"), max_retries=2, max_backoff=0.02)
    with pytest.raises(TeacherError, match="HTTP 503") as info:
        teacher.complete(MESSAGES)
    assert info.value.kind == "server" and info.value.retries == 2 and not info.value.fatal
    assert len(script.requests) == 3
    assert teacher.stats.errors["server"] == 1


def test_slow_response_times_out_and_is_retried(teacher_for):
    def slow():
        time.sleep(0.5)
        return ok()

    teacher, script = teacher_for(slow, ok(), timeout=0.2, max_backoff=0.05)
    assert teacher.complete(MESSAGES).text.endswith("42")
    # The test server answers one request at a time, so the retry may queue behind the slow one.
    assert teacher.stats.retries >= 1 and teacher.stats.errors == {}


def test_401_fails_fast_and_never_shows_the_key(teacher_for, caplog):
    caplog.set_level(logging.DEBUG)
    teacher, script = teacher_for(error(401, f"Invalid API Key {KEY}"))
    with pytest.raises(TeacherError) as info:
        teacher.complete(MESSAGES)
    assert info.value.fatal and info.value.kind == "auth"
    assert "authentication failed" in str(info.value)
    assert len(script.requests) == 1  # no retries on a bad key
    assert KEY not in str(info.value) and KEY not in repr(teacher)
    assert KEY not in caplog.text


def test_remaining_zero_header_pauses_until_reset(teacher_for):
    drained = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "0.4s"}
    teacher, _ = teacher_for(ok(headers=drained), ok(), requests_per_minute=6000)
    teacher.complete(MESSAGES)
    start = time.monotonic()
    teacher.complete(MESSAGES)
    assert time.monotonic() - start >= 0.35


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def test_limiter_paces_requests_per_minute():
    clock = FakeClock()
    limiter = RateLimiter(2, None, clock=clock, sleep=clock.sleep)
    assert limiter.acquire() == 0 and limiter.acquire() == 0  # the burst
    assert limiter.acquire() == pytest.approx(30.0)  # 2/min: one request every 30 s


def test_limiter_paces_tokens_and_settles_real_usage():
    clock = FakeClock()
    limiter = RateLimiter(6000, 600, clock=clock, sleep=clock.sleep)  # 600 tokens/min = 10/s
    assert limiter.acquire(500) == 0
    assert limiter.acquire(500) == pytest.approx(40.0)  # 100 left, 400 more at 10/s
    limiter.settle(500, 800)  # the reply used 300 more than estimated: the bucket owes them
    assert limiter.acquire(100) == pytest.approx(40.0)


def test_limiter_follows_remaining_headers_down():
    clock = FakeClock()
    limiter = RateLimiter(600, 60000, clock=clock, sleep=clock.sleep)
    limiter.observe({"x-ratelimit-remaining-tokens": "50", "x-ratelimit-reset-tokens": "7.5s"})
    assert limiter.acquire(1050) == pytest.approx(1000 / 1000, rel=0.01)  # 1000 tokens at 1000/s
    limiter.observe({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "2m"})
    assert limiter.acquire(1) >= 120.0


def test_deepcoder_generate_with_groq(httpserver, monkeypatch, tmp_path):
    from click.testing import CliRunner

    from deepcoder_core.cli import cli
    from deepcoder_core.io import read_jsonl

    monkeypatch.setenv("GROQ_API_KEY", KEY)
    answer = "Thought: easy\nFinal Answer:\n```python\ndef f():\n    return 1\n```"
    httpserver.expect_request(PATH, method="POST").respond_with_handler(
        Script(ok(chat_body(answer, reasoning="think first")))
    )
    out = tmp_path / "t.jsonl"
    args = [
        "generate",
        "--teacher",
        "groq",
        "--out",
        str(out),
        "--no-progress",
        "--set",
        f"teacher.options.base_url={httpserver.url_for('/')}",
        "--set",
        "tools.enabled=[]",
        "--set",
        "generation.split=eval",
        "--concurrency",
        "4",
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    records = [r for _, r in read_jsonl(out)]
    assert records and all(r["teacher"]["plugin"] == "groq" for r in records)
    assert all(r["steps"][0]["reasoning"] == "think first" for r in records)
    assert KEY not in out.read_text() and KEY not in out.with_suffix(".config.yaml").read_text()
