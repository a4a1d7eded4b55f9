"""The ``python`` tool: run the agent's code with RestrictedPython inside the sandbox.

Each call runs in a fresh, resource-limited sandbox child (``deepcoder_core.sandbox``), where
``restricted.run_cell`` compiles the code with RestrictedPython and executes it with every
guard wired. The observation is what a REPL shows: printed output, the repr of a last
expression, or a short traceback.

State per trajectory (``session``) by replay: the tool keeps, in this process, the cells of
a session that ran without error, and each call re-runs them silently in the new child
before the new cell. Chosen over pinning a session to a long-lived worker because a cell
that times out or crashes (the child is killed) cannot take the session's state with it,
any number of sessions share a small pool, and no state can cross sessions: each child
starts from the same clean fork. Replay is deterministic because only pure modules can be
imported and ``random`` is seeded per session; its cost is re-running earlier cells, which
counts against the call's timeout. A cell that fails leaves no trace, like a transaction.
"""

from __future__ import annotations

import math
import threading
import zlib
from typing import Any

from deepcoder_core import (
    Limits,
    Observation,
    SandboxError,
    SandboxPool,
    SandboxRequest,
    get_pool,
    hookimpl,
)

RUNNER = "deepcoder_python_executor.restricted:run_cell"
_ALLOWED = (
    "math, re, itertools, collections, functools, heapq, bisect, string, json, statistics, "
    "fractions, decimal, operator, typing, dataclasses, random"
)


class PythonTool:
    """Run Python code (RestrictedPython, sandboxed); names persist within a trajectory."""

    name = "python"
    description = (
        "Run Python code and see printed output and the value of the last expression, like a "
        "REPL. Names defined in earlier calls stay available. Imports allowed: "
        f"{_ALLOWED}. No files, network, or names starting with '_'."
    )

    def __init__(
        self,
        timeout: float = 10.0,
        memory_mb: int = 256,
        max_output_chars: int = 4000,
        pool: SandboxPool | None = None,
    ):
        if type(timeout) not in (int, float) or not math.isfinite(timeout) or timeout <= 0:
            raise ValueError(
                f"python tool: timeout must be a finite number of seconds > 0, got {timeout!r}"
            )
        for name, value, low in (
            ("memory_mb", memory_mb, 32),
            ("max_output_chars", max_output_chars, 100),
        ):
            if type(value) is not int or value < low:
                raise ValueError(
                    f"python tool: {name} must be a whole number >= {low}, got {value!r}"
                )
        self.timeout = float(timeout)
        self.limits = Limits(memory_mb=memory_mb, max_output_chars=max_output_chars)
        self.max_output_chars = max_output_chars
        self._pool = pool
        self._sessions: dict[str, list[str]] = {}
        self._lock = threading.Lock()

    def run(
        self, input: str, *, timeout: float | None = None, session: str | None = None
    ) -> Observation:
        if timeout is not None and (
            type(timeout) not in (int, float) or not math.isfinite(timeout) or timeout <= 0
        ):
            return Observation(
                f"python tool: timeout must be a finite number of seconds > 0, got {timeout!r}",
                ok=False,
                meta={"status": "invalid"},
            )
        timeout = self.timeout if timeout is None else min(timeout, self.timeout)
        with self._lock:
            history = list(self._sessions.get(session, [])) if session is not None else []
        request = SandboxRequest(
            runner=RUNNER,
            payload={
                "code": input,
                "history": history,
                "seed": zlib.crc32((session or "").encode()),
            },
            limits=self.limits,
        )
        try:
            result = (self._pool or get_pool()).run(request, timeout=timeout)
        except SandboxError as exc:  # the pool, not the code, failed: an observation all the same
            return Observation(
                f"sandbox unavailable: {exc}", ok=False, meta={"status": "unavailable"}
            )
        if result.ok and session is not None:
            with self._lock:
                self._sessions.setdefault(session, []).append(input)
        parts = [result.stdout.rstrip("\n")] if result.stdout else []
        if result.data.get("value") is not None:
            parts.append(result.data["value"])
        if result.error:
            parts.append(result.error)
        text = "\n".join(parts) or "(no output)"
        if len(text) > self.max_output_chars:
            cut = len(text) - self.max_output_chars
            text = (
                text[: self.max_output_chars] + f"\n... [output truncated: {cut} more characters]"
            )
        meta: dict[str, Any] = {
            "status": result.status,
            "duration": round(result.duration, 4),
            "truncated": result.truncated,
            "session_cells": len(history) + int(result.ok and session is not None),
        }
        return Observation(text=text, ok=result.ok, meta=meta)

    def close(self, session: str) -> None:
        """Forget a trajectory's state."""
        with self._lock:
            self._sessions.pop(session, None)


@hookimpl
def register_tools(register):
    register("python", PythonTool)
