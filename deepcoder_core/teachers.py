"""Pieces every teacher plugin shares: errors, thinking split, retries, a rate limiter, stats.

Remote teachers (Groq, OpenAI-compatible servers) disable their SDK's own retries and use
:func:`retry_call` instead, so every retry is counted and ``retry-after`` is honoured; the
:class:`RateLimiter` keeps a client inside its requests/tokens per minute. Nothing here
imports an SDK: errors are classified by their attributes (``status_code``, ``response``),
which both the ``groq`` and ``openai`` SDKs share.
"""

from __future__ import annotations

import email.utils
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .errors import DeepcoderError
from .react_format import STOP, strip_thinking

T = TypeVar("T")

REACT_STOP = STOP
"""Where a ReAct completion ends (``react_format.STOP``): the agent writes the tool result."""


class TeacherError(DeepcoderError):
    """A teacher call that failed after its retries.

    ``kind`` groups errors in summaries (rate_limit, server, timeout, connection, auth,
    bad_request, bad_response, replay_missing); ``fatal`` means every later call would fail
    too (bad key, unknown model), so a generator stops instead of recording it per trajectory.
    """

    def __init__(
        self,
        message: str,
        *,
        kind: str = "error",
        retryable: bool = False,
        fatal: bool = False,
        retry_after: float | None = None,
        retries: int = 0,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.retryable = retryable
        self.fatal = fatal
        self.retry_after = retry_after
        self.retries = retries


@dataclass
class TeacherStats:
    """Counters a generator shows live: requests sent, retries, seconds waited, errors by kind."""

    requests: int = 0
    retries: int = 0
    waited_seconds: float = 0.0
    errors: Counter = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: float) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def error(self, kind: str) -> None:
        with self._lock:
            self.errors[kind] += 1

    def to_dict(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": self.requests,
                "retries": self.retries,
                "waited_seconds": round(self.waited_seconds, 3),
                "errors": dict(self.errors),
            }


def split_thinking(text: str) -> tuple[str | None, str]:
    """``"<think>plan</think>answer"`` -> ``("plan", "answer")``; text without a block -> ``(None, text)``.

    Thinking blocks are read as the agent reads them (``react_format.strip_thinking``): an
    unclosed ``<think>`` (a reply cut by max_tokens) counts as thinking to the end; a
    ``</think>`` with no opening tag (the chat template already wrote ``<think>`` into the
    prompt, as Qwen3 thinking models and DeepSeek-R1 do) closes thinking that began the reply.
    Several blocks are joined by a newline.
    """
    rest, thoughts = strip_thinking(text)
    if rest == text:
        return None, text
    return "\n".join(thoughts) or None, rest.lstrip()


def cut_at_stop(text: str, stop: list[str] | tuple[str, ...] | None) -> tuple[str, bool]:
    """Text before the first stop string, and whether one was found (OpenAI ``stop`` semantics)."""
    cut = len(text)
    for s in stop or ():
        idx = text.find(s)
        if s and idx != -1:
            cut = min(cut, idx)
    return text[:cut], cut < len(text)


# ---------------------------------------------------------------------------- HTTP errors

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def parse_duration(value: str | None) -> float | None:
    """Groq's reset headers: ``"2m59.56s"``, ``"7.66s"``, ``"120ms"``, or plain seconds -> seconds."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    parts = _DURATION.findall(value)
    if not parts:
        return None
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * scale[u] for n, u in parts)


def parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date)."""
    if not headers:
        return None
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        if parsed is None:
            return None
        return max(0.0, parsed.timestamp() - time.time())


def classify_http_error(
    exc: BaseException, provider: str, scrub: Callable[[str], str]
) -> TeacherError | None:
    """Map an SDK exception (groq / openai share their shape) to a :class:`TeacherError`.

    429, 5xx, timeouts and connection errors are retryable; 401/403 are fatal (a bad key
    fails the same way every time); other 4xx are bad requests. ``scrub`` removes secrets.
    """
    name = type(exc).__name__
    status = getattr(exc, "status_code", None)
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    detail = scrub(_error_detail(exc))
    if status is not None:
        if status in (401, 403):
            return TeacherError(
                f"{provider}: authentication failed (HTTP {status}): {detail}; "
                "check the API key in the environment",
                kind="auth",
                fatal=True,
            )
        if status == 429:
            return TeacherError(
                f"{provider}: rate limited (HTTP 429): {detail}",
                kind="rate_limit",
                retryable=True,
                retry_after=parse_retry_after(headers),
            )
        if status >= 500:
            return TeacherError(
                f"{provider}: server error (HTTP {status}): {detail}",
                kind="server",
                retryable=True,
                retry_after=parse_retry_after(headers),
            )
        if status in (404,):
            return TeacherError(
                f"{provider}: not found (HTTP 404): {detail}; check the model name and base_url",
                kind="bad_request",
                fatal=True,
            )
        return TeacherError(
            f"{provider}: request rejected (HTTP {status}): {detail}", kind="bad_request"
        )
    if "Timeout" in name:
        return TeacherError(f"{provider}: request timed out", kind="timeout", retryable=True)
    if "Connection" in name:
        return TeacherError(
            f"{provider}: cannot connect: {detail}", kind="connection", retryable=True
        )
    if isinstance(exc, ValueError) or "Validation" in name:
        return TeacherError(
            f"{provider}: malformed response: {detail}", kind="bad_response", retryable=True
        )
    return None


def _error_detail(exc: BaseException) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
    return str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__


def retry_call(
    attempt: Callable[[], T],
    classify: Callable[[BaseException], TeacherError | None],
    *,
    max_retries: int,
    base_delay: float = 0.5,
    max_delay: float = 60.0,
    stats: TeacherStats | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``attempt`` until it succeeds, retrying retryable errors up to ``max_retries`` times.

    The wait is the server's ``retry-after`` when it sent one, else exponential backoff
    with "equal jitter": ``d = min(max_delay, base_delay * 2**n)``, wait ``d/2 + U(0, d/2)``
    (Brooker, "Exponential Backoff And Jitter", AWS Architecture Blog, 2015).
    """
    for n in range(max_retries + 1):
        try:
            return attempt()
        except TeacherError as exc:
            error = exc
        except Exception as exc:
            classified = classify(exc)
            if classified is None:
                raise
            error = classified
            error.__cause__ = exc
        if not error.retryable or n == max_retries:
            error.retries = n
            if stats is not None:
                stats.error(error.kind)
            raise error
        if error.retry_after is not None:
            delay = min(error.retry_after, max_delay)
        else:
            d = min(max_delay, base_delay * 2**n)
            delay = d / 2 + random.uniform(0, d / 2)
        if stats is not None:
            stats.add(retries=1, waited_seconds=delay)
        sleep(delay)
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------- rate limiting


class _Bucket:
    """A token bucket: ``capacity`` tokens, refilled at ``rate`` per second, may go negative."""

    def __init__(self, capacity: float, now: float) -> None:
        self.capacity = capacity
        self.rate = capacity / 60.0
        self.level = capacity
        self.stamp = now

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_for(self, amount: float) -> float:
        amount = min(amount, self.capacity)  # a request larger than a minute's budget still goes
        return 0.0 if self.level >= amount else (amount - self.level) / self.rate


class RateLimiter:
    """Keeps a client inside requests/minute and tokens/minute with two token buckets.

    ``acquire(tokens)`` blocks until both buckets hold enough, then takes an estimate;
    ``settle`` corrects the estimate with the real usage. ``observe(headers)`` reads
    Groq/OpenAI ``x-ratelimit-remaining-*`` headers: the buckets drop to what the server
    says is left, and at zero the limiter pauses until ``x-ratelimit-reset-*``.
    ``None`` for a limit turns that bucket off.
    """

    def __init__(
        self,
        requests_per_minute: float | None,
        tokens_per_minute: float | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        now = clock()
        self.requests = _Bucket(requests_per_minute, now) if requests_per_minute else None
        self.tokens = _Bucket(tokens_per_minute, now) if tokens_per_minute else None
        self.pause_until = 0.0
        self.waited = 0.0
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()

    def _buckets(self) -> list[_Bucket]:
        return [b for b in (self.requests, self.tokens) if b is not None]

    def acquire(self, tokens: int = 0) -> float:
        """Block until a request of ``tokens`` estimated tokens may go; returns seconds waited."""
        waited = 0.0
        while True:
            with self._lock:
                now = self._clock()
                for bucket in self._buckets():
                    bucket.refill(now)
                wait = max(
                    self.pause_until - now,
                    self.requests.wait_for(1) if self.requests else 0.0,
                    self.tokens.wait_for(tokens) if self.tokens else 0.0,
                )
                if wait <= 0:
                    if self.requests:
                        self.requests.level -= 1
                    if self.tokens:
                        self.tokens.level -= tokens
                    self.waited += waited
                    return waited
            self._sleep(wait)
            waited += wait

    def settle(self, estimated: int, actual: int) -> None:
        """Give back (or take) the difference between the estimate and the real token count."""
        if self.tokens is not None:
            with self._lock:
                self.tokens.level = min(
                    self.tokens.capacity, self.tokens.level + estimated - actual
                )

    def observe(self, headers: Mapping[str, str] | None) -> None:
        if not headers:
            return
        with self._lock:
            now = self._clock()
            for bucket, suffix in ((self.requests, "requests"), (self.tokens, "tokens")):
                remaining = _number(headers.get(f"x-ratelimit-remaining-{suffix}"))
                if remaining is None:
                    continue
                if bucket is not None:
                    bucket.refill(now)
                    bucket.level = min(bucket.level, remaining)
                if remaining <= 0:
                    reset = parse_duration(headers.get(f"x-ratelimit-reset-{suffix}"))
                    if reset is not None:
                        self.pause_until = max(self.pause_until, now + reset)


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None


def estimate_tokens(messages: list[dict[str, Any]]) -> int:
    """A cheap prompt-size estimate for the limiter (about 4 characters a token, OpenAI's rule of thumb)."""
    return sum(len(str(m.get("content") or "")) for m in messages) // 4 + 4 * len(messages)
