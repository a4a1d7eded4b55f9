"""What the manager asks a running server over HTTP: health, the served model, one token.

Every server speaks the OpenAI chat API at ``http://HOST:PORT/v1`` (:func:`base_url`); these
probes use only the standard library, so checking a server loads no client package.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


def base_url(host: str, port: int) -> str:
    """The OpenAI-compatible root of a server: ``http://HOST:PORT/v1``."""
    return f"http://{_client_host(host)}:{port}/v1"


def _http(url: str, payload: Any = None, timeout: float = 5.0) -> tuple[int, Any]:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    try:
        return status, json.loads(body.decode("utf-8") or "null")
    except (UnicodeDecodeError, json.JSONDecodeError):
        return status, body.decode("utf-8", errors="replace")


def health(host: str, port: int, timeout: float = 2.0) -> str:
    """``healthy`` | ``unhealthy`` (answers with an error) | ``unreachable`` (no answer)."""
    root = f"http://{_client_host(host)}:{port}"
    try:
        status, _ = _http(f"{root}/health", timeout=timeout)
        if status == 404:  # no /health route: the model list tells the same
            status, _ = _http(f"{root}/v1/models", timeout=timeout)
    except (OSError, ValueError):
        return "unreachable"
    return "healthy" if 200 <= status < 300 else "unhealthy"


def served_model(host: str, port: int, fallback: str, timeout: float = 5.0) -> str:
    """The model id the server answers to (its first ``/v1/models`` entry)."""
    try:
        status, body = _http(f"{base_url(host, port)}/models", timeout=timeout)
        if status == 200 and isinstance(body, dict) and body.get("data"):
            return str(body["data"][0]["id"])
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        pass
    return fallback


def generate_one_token(host: str, port: int, model: str, timeout: float = 60.0) -> str | None:
    """Ask for one token; None when it worked, else the reason it did not."""
    payload = {
        "model": model,
        "messages": [{"role": "user", "content": "Say OK."}],
        "max_tokens": 1,
        "temperature": 0.0,
    }
    try:
        status, body = _http(f"{base_url(host, port)}/chat/completions", payload, timeout=timeout)
    except (OSError, ValueError) as exc:
        return f"no answer ({exc})"
    if status == 200 and isinstance(body, dict) and body.get("choices"):
        return None
    return f"HTTP {status}: {str(body)[:200]}"
