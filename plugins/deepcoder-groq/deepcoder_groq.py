"""Teacher `groq`: chat completions from Groq's API with the official ``groq`` SDK.

The key comes from ``GROQ_API_KEY`` only (never config, never logged). The SDK's own
retries are off: :func:`deepcoder_core.teachers.retry_call` retries 429/5xx/timeouts/
connection errors with backoff, honouring ``retry-after``, and counts every retry. A
client-side :class:`~deepcoder_core.teachers.RateLimiter` keeps within the configured
requests/tokens per minute and follows the ``x-ratelimit-remaining-*`` headers down.
Reasoning models' thinking comes back in ``message.reasoning`` (``reasoning_format="parsed"``)
or inline as ``<think>...</think>`` (``"raw"``), which is split off. Groq returns no
input-token logprobs, so this teacher has no ``score``.
"""

from __future__ import annotations

import os
from typing import Any

from deepcoder_core import (
    Completion,
    PluginError,
    RateLimiter,
    TeacherError,
    TeacherStats,
    Usage,
    classify_http_error,
    estimate_tokens,
    hookimpl,
    retry_call,
    split_thinking,
)

_PARAMS = {"temperature", "top_p", "max_new_tokens", "max_tokens", "stop", "seed"}


class GroqTeacher:
    """Groq chat completions with retries, a rate limiter and thinking capture."""

    def __init__(
        self,
        model: str = "qwen/qwen3-32b",
        requests_per_minute: float | None = 30,
        tokens_per_minute: float | None = 6000,
        max_retries: int = 5,
        reasoning_format: str | None = "parsed",
        base_url: str | None = None,
        timeout: float = 60.0,
        max_backoff: float = 60.0,
        api_key_env: str = "GROQ_API_KEY",
    ) -> None:
        key = os.environ.get(api_key_env, "").strip()
        if not key:
            raise PluginError(
                f"teacher 'groq': the environment variable {api_key_env} is not set; "
                "create a key at https://console.groq.com/keys and `export "
                f"{api_key_env}=...` (keys are never read from config files)"
            )
        if reasoning_format not in (None, "parsed", "raw", "hidden"):
            raise PluginError(
                f"teacher 'groq': reasoning_format {reasoning_format!r}: "
                "expected parsed, raw, hidden or null"
            )
        from groq import Groq

        self.model = model
        self.reasoning_format = reasoning_format
        self.max_retries = max_retries
        self.max_backoff = max_backoff
        self.stats = TeacherStats()
        self.limiter = RateLimiter(requests_per_minute, tokens_per_minute)
        # max_retries=0: our retry loop counts retries and honours retry-after itself.
        self._client = Groq(api_key=key, base_url=base_url, max_retries=0, timeout=timeout)
        self._scrub = lambda text: text.replace(key, "***") if key in text else text

    def __repr__(self) -> str:
        return f"GroqTeacher(model={self.model!r})"

    def _request(self, messages: list[dict[str, Any]], params: dict[str, Any]) -> dict[str, Any]:
        unknown = set(params) - _PARAMS
        if unknown:
            raise TypeError(f"teacher 'groq': unknown parameters {sorted(unknown)}")
        request: dict[str, Any] = {"model": self.model, "messages": messages}
        if self.reasoning_format is not None:
            request["reasoning_format"] = self.reasoning_format
        for name in ("temperature", "top_p", "seed"):
            if params.get(name) is not None:
                request[name] = params[name]
        max_tokens = params.get("max_new_tokens", params.get("max_tokens"))
        if max_tokens is not None:
            request["max_completion_tokens"] = int(max_tokens)
        if params.get("stop"):
            request["stop"] = list(params["stop"])[:4]  # Groq accepts at most 4 stop sequences
        return request

    def complete(self, messages: list[dict[str, Any]], **params: Any) -> Completion:
        request = self._request(messages, params)
        estimate = estimate_tokens(messages) + int(request.get("max_completion_tokens") or 512)

        def attempt() -> Completion:
            self.limiter.acquire(estimate)
            self.stats.add(requests=1)
            try:
                raw = self._client.chat.completions.with_raw_response.create(**request)
            except Exception as exc:
                self.limiter.observe(getattr(getattr(exc, "response", None), "headers", None))
                self.limiter.settle(estimate, 0)
                raise
            self.limiter.observe(raw.headers)
            completion = self._parse(raw)
            used = completion.usage.prompt_tokens + completion.usage.completion_tokens
            self.limiter.settle(estimate, used)
            return completion

        return retry_call(
            attempt,
            lambda exc: classify_http_error(exc, "groq", self._scrub),
            max_retries=self.max_retries,
            max_delay=self.max_backoff,
            stats=self.stats,
        )

    def _parse(self, raw: Any) -> Completion:
        try:
            response = raw.parse()
            choice = response.choices[0]
            message = choice.message
            text = message.content or ""
        except Exception as exc:
            raise TeacherError(
                f"groq: malformed response ({type(exc).__name__}: {self._scrub(str(exc))[:200]})",
                kind="bad_response",
                retryable=True,
            ) from exc
        if not isinstance(text, str):
            raise TeacherError(
                "groq: malformed response (content is not text)",
                kind="bad_response",
                retryable=True,
            )
        reasoning = getattr(message, "reasoning", None)
        if reasoning is None:
            reasoning, text = split_thinking(text)
        usage = getattr(response, "usage", None)
        return Completion(
            text=text,
            reasoning=reasoning or None,
            usage=Usage(
                prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
                completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
            ),
            raw={"id": getattr(response, "id", None), "model": getattr(response, "model", None)},
            finish_reason=getattr(choice, "finish_reason", None),
        )


@hookimpl
def register_teachers(register):
    register("groq", GroqTeacher)
