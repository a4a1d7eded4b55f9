"""Shared teacher pieces: thinking split, stop strings, retry-after parsing, the retry loop."""

import pytest

from deepcoder_core.teachers import (
    TeacherError,
    TeacherStats,
    classify_http_error,
    cut_at_stop,
    parse_duration,
    parse_retry_after,
    retry_call,
    split_thinking,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<think>plan</think>Final Answer: 1", ("plan", "Final Answer: 1")),
        ("plan</think>answer", ("plan", "answer")),  # the template opened the block
        ("<think>cut by max_tokens", ("cut by max_tokens", "")),
        ("<think>\n\n</think>\n\nx", (None, "x")),  # Qwen3 with thinking off
        ("no thinking", (None, "no thinking")),
        ("<Thinking>plan</Thinking> x", ("plan", "x")),  # read as the agent reads it
        ("<think>a</think>b<think>c</think>d", ("a\nc", "bd")),
    ],
)
def test_split_thinking(text, expected):
    assert split_thinking(text) == expected


def test_cut_at_stop():
    assert cut_at_stop("Action: x\nObservation: y", ["Observation:"]) == ("Action: x\n", True)
    assert cut_at_stop("Action: x", ["Observation:"]) == ("Action: x", False)


def test_durations_and_retry_after():
    assert parse_duration("2m59.56s") == pytest.approx(179.56)
    assert parse_duration("120ms") == pytest.approx(0.12)
    assert parse_duration("1h") == 3600 and parse_duration("7") == 7 and parse_duration("?") is None
    assert parse_retry_after({"retry-after": "3"}) == 3
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "3"}) == 0.25
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0
    assert parse_retry_after({}) is None


class StatusError(Exception):
    def __init__(self, status, headers=None):
        super().__init__(f"HTTP {status}")
        self.status_code = status
        self.response = type("R", (), {"headers": headers or {}})()
        self.body = {"error": {"message": "nope"}}


def test_retry_call_backs_off_then_gives_up_with_the_count():
    waits, stats = [], TeacherStats()

    def always_500():
        raise StatusError(500)

    def classify(exc):
        return classify_http_error(exc, "srv", str)

    with pytest.raises(TeacherError, match="server error") as info:
        retry_call(
            always_500, classify, max_retries=3, base_delay=1.0, stats=stats, sleep=waits.append
        )
    assert info.value.retries == 3 and stats.retries == 3 and stats.errors["server"] == 1
    # equal jitter: attempt n waits in [d/2, d] with d = 2**n
    assert all(2**n / 2 <= w <= 2**n for n, w in enumerate(waits))

    calls = []

    def limited_once():
        calls.append(1)
        if len(calls) == 1:
            raise StatusError(429, {"retry-after": "7"})
        return "ok"

    waits.clear()
    assert retry_call(limited_once, classify, max_retries=2, sleep=waits.append) == "ok"
    assert waits == [7.0]


def test_auth_errors_are_fatal_and_not_retried():
    calls = []

    def unauthorized():
        calls.append(1)
        raise StatusError(401)

    with pytest.raises(TeacherError) as info:
        retry_call(
            unauthorized,
            lambda e: classify_http_error(e, "srv", str),
            max_retries=5,
            sleep=lambda s: None,
        )
    assert info.value.fatal and info.value.kind == "auth" and len(calls) == 1
