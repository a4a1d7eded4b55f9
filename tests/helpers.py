"""Test helpers: throwaway plugin distributions that importlib.metadata really discovers, a
fake OpenAI-compatible teacher, a loopback listener."""

from __future__ import annotations

import contextlib
import json
import socket
import textwrap
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def make_distribution(
    root: Path, dist: str, module: str, source: str, version: str = "1.0"
) -> Path:
    """Write ``module.py`` and a ``dist-info`` with a ``deepcoder`` entry point under ``root``.

    Put ``root`` on ``sys.path`` (or PYTHONPATH) and the plugin is an installed distribution.
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[deepcoder]\n{module} = {module}\n")
    return root


def view_entries_in_tmp() -> list[str]:
    """Names under ``/tmp`` that the sandbox's read-only view binds (a checkout living in /tmp)."""
    from deepcoder_core.sandbox import isolation

    return sorted(
        {Path(p).parts[2] for p in isolation.view_paths([]) if Path(p).parts[1:2] == ("tmp",)}
    )


def chat_completion(
    model: str, text: str, prompt_tokens: int = 50, completion_tokens: int = 20
) -> bytes:
    """An OpenAI chat-completion response body whose one choice says ``text``."""
    return json.dumps(
        {
            "id": "c",
            "object": "chat.completion",
            "created": 0,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": text},
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
    ).encode()


class ChatHandler(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat endpoint answering ``text`` after ``delay`` seconds."""

    text = "Final Answer: done"
    delay = 0.0

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        time.sleep(self.delay)
        data = chat_completion(body["model"], self.text)
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def problem_record(**changes: object) -> dict:
    """A valid problem record (``add``), with ``changes`` applied."""
    return {
        "id": "add",
        "title": "Add",
        "prompt": "Write add(a, b).",
        "category": "math",
        "difficulty": "easy",
        "entry_point": "add",
        "tests": "def check(candidate):\n    assert candidate(1, 2) == 3\n",
        "canonical_solution": "def add(a, b):\n    return a + b\n",
        **changes,
    }


@contextlib.contextmanager
def fake_teacher(text: str) -> Iterator[str]:
    """An OpenAI-compatible server on loopback that always answers ``text``; yields its base URL."""
    handler = type("Answering", (ChatHandler,), {"text": text})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def loopback_listener(timeout: float = 0.5) -> Iterator[tuple[socket.socket, int]]:
    """A TCP listener on 127.0.0.1 (an ephemeral port) that nothing should ever reach."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(timeout)
    try:
        yield listener, listener.getsockname()[1]
    finally:
        listener.close()
