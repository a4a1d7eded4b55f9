"""Teacher `openai`: any OpenAI-compatible chat server (SGLang, vLLM, `transformers serve`, Ollama).

``chat_template_kwargs`` (e.g. Qwen3's ``{"enable_thinking": true}``) travel in the request
body as SGLang and vLLM expect; thinking returned apart (``reasoning_content`` from a
server-side reasoning parser) or inline (``<think>...</think>``) lands in
``Completion.reasoning``. Retries are ours (counted, ``retry-after`` honoured), not the SDK's.

``score`` needs input-token log-probabilities, which the OpenAI API does not give. SGLang's
native ``/generate`` does (``return_logprob``, ``logprob_start_len=0``, ``top_logprobs_num=k``);
the first call checks for it and, on other servers, raises a clear error.
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
    TopK,
    Usage,
    classify_http_error,
    estimate_tokens,
    hookimpl,
    retry_call,
    split_thinking,
)

_PARAMS = {"temperature", "top_p", "max_new_tokens", "max_tokens", "stop", "seed"}


class OpenAITeacher:
    """Chat completions from an OpenAI-compatible server; ``score`` through SGLang's ``/generate``."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:30000/v1",
        model: str = "default",
        api_key_env: str = "OPENAI_API_KEY",
        chat_template_kwargs: dict[str, Any] | None = None,
        timeout: float = 60.0,
        max_retries: int = 3,
        max_backoff: float = 30.0,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        extra_body: dict[str, Any] | None = None,
    ) -> None:
        if not base_url:
            raise PluginError("teacher 'openai': base_url is empty; set teacher.options.base_url")
        from openai import OpenAI

        # Local servers need no key; the SDK insists on a non-empty string.
        key = os.environ.get(api_key_env, "").strip()
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.extra_body = dict(extra_body or {})
        self.max_retries = max_retries
        self.max_backoff = max_backoff
        self.timeout = timeout
        self.stats = TeacherStats()
        self.limiter = RateLimiter(requests_per_minute, tokens_per_minute)
        self._client = OpenAI(
            base_url=self.base_url, api_key=key or "none", max_retries=0, timeout=timeout
        )
        self._auth = {"Authorization": f"Bearer {key}"} if key else {}
        self._scrub = (lambda text: text.replace(key, "***")) if key else (lambda text: text)
        self._native: bool | None = None  # does the server offer SGLang's /generate?

    def __repr__(self) -> str:
        return f"OpenAITeacher(base_url={self.base_url!r}, model={self.model!r})"

    def _classify(self, exc: BaseException) -> TeacherError | None:
        return classify_http_error(exc, f"openai server {self.base_url}", self._scrub)

    def complete(self, messages: list[dict[str, Any]], **params: Any) -> Completion:
        unknown = set(params) - _PARAMS
        if unknown:
            raise TypeError(f"teacher 'openai': unknown parameters {sorted(unknown)}")
        request: dict[str, Any] = {"model": self.model, "messages": messages}
        for name in ("temperature", "top_p", "seed"):
            if params.get(name) is not None:
                request[name] = params[name]
        max_tokens = params.get("max_new_tokens", params.get("max_tokens"))
        if max_tokens is not None:
            request["max_tokens"] = int(max_tokens)
        if params.get("stop"):
            request["stop"] = list(params["stop"])
        extra = dict(self.extra_body)
        if self.chat_template_kwargs:
            extra["chat_template_kwargs"] = self.chat_template_kwargs
        if extra:
            request["extra_body"] = extra
        estimate = estimate_tokens(messages) + int(max_tokens or 512)

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
            self.limiter.settle(
                estimate, completion.usage.prompt_tokens + completion.usage.completion_tokens
            )
            return completion

        return retry_call(
            attempt,
            self._classify,
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
            if not isinstance(text, str):
                raise TypeError("content is not text")
        except Exception as exc:
            raise TeacherError(
                f"openai server {self.base_url}: malformed response "
                f"({type(exc).__name__}: {self._scrub(str(exc))[:200]})",
                kind="bad_response",
                retryable=True,
            ) from exc
        # SGLang/vLLM reasoning parsers: reasoning_content; some servers: reasoning.
        extra = getattr(message, "model_extra", None) or {}
        reasoning = extra.get("reasoning_content") or extra.get("reasoning")
        if not reasoning:
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

    # ------------------------------------------------------------------ white-box scoring

    @property
    def native_url(self) -> str:
        """SGLang's native endpoint lives at the server root, beside ``/v1``."""
        root = self.base_url[: -len("/v1")] if self.base_url.endswith("/v1") else self.base_url
        return f"{root}/generate"

    def score(self, token_ids: Any, top_k: int | None = 64) -> TopK:
        """Top-k next-token log-probabilities at every position of ``token_ids``.

        Row ``i`` is the distribution that predicts token ``i + 1`` (the last row predicts
        the token after the input). SGLang reports ``input_top_logprobs[j]`` as the
        distribution *of* token ``j`` (``None`` for ``j = 0``), so row ``i`` is entry ``i + 1``
        and the last row is ``output_top_logprobs[0]`` of one generated token.
        """
        import httpx
        import torch

        if top_k is None:
            raise TeacherError(
                f"openai server {self.base_url}: dense log-probabilities are not available "
                "over HTTP; ask for top_k (e.g. teacher_logits.top_k: 64)",
                kind="bad_request",
                fatal=True,
            )
        ids = [int(t) for t in (token_ids.tolist() if hasattr(token_ids, "tolist") else token_ids)]
        if self._native is False:
            raise self._no_logprobs()
        body = {
            "input_ids": ids,
            "sampling_params": {"max_new_tokens": 1, "temperature": 0.0},
            "return_logprob": True,
            "logprob_start_len": 0,
            "top_logprobs_num": int(top_k),
        }

        def attempt() -> dict[str, Any]:
            self.stats.add(requests=1)
            response = httpx.post(
                self.native_url, json=body, headers=self._auth, timeout=self.timeout
            )
            if response.status_code in (404, 405):
                self._native = False
                raise self._no_logprobs()
            response.raise_for_status()
            return response.json()

        def classify(exc: BaseException) -> TeacherError | None:
            if isinstance(exc, httpx.HTTPStatusError):
                exc.status_code = exc.response.status_code  # type: ignore[attr-defined]  # the shape classify_http_error reads
            return self._classify(exc)

        data = retry_call(
            attempt,
            classify,
            max_retries=self.max_retries,
            max_delay=self.max_backoff,
            stats=self.stats,
        )
        meta = data.get("meta_info") if isinstance(data, dict) else None
        rows = None
        if isinstance(meta, dict) and meta.get("input_top_logprobs") is not None:
            rows = list(meta["input_top_logprobs"][1 : len(ids)])
            rows += list(meta.get("output_top_logprobs") or [])[:1]
        if rows is None or len(rows) != len(ids) or any(r is None for r in rows):
            self._native = False
            raise self._no_logprobs()
        self._native = True
        indices = torch.zeros(len(ids), top_k, dtype=torch.int32)
        logprobs = torch.full((len(ids), top_k), float("-inf"))
        for i, row in enumerate(rows):
            for j, entry in enumerate(row[:top_k]):  # [logprob, token_id, text]
                logprobs[i, j] = float(entry[0])
                indices[i, j] = int(entry[1])
        tail = (1.0 - logprobs.exp().sum(-1)).clamp_min(0.0)
        return TopK(indices=indices, logprobs=logprobs, tail_mass=tail)

    def _no_logprobs(self) -> TeacherError:
        return TeacherError(
            f"openai server {self.base_url} gives no input-token logprobs: score() needs "
            f"SGLang's native {self.native_url} (return_logprob, top_logprobs_num); serve the "
            "teacher with SGLang or use the hf teacher for white-box distillation",
            kind="no_logprobs",
            fatal=True,
        )


@hookimpl
def register_teachers(register):
    register("openai", OpenAITeacher)
