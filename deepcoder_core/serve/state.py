"""The files of ``<cache>/servers/``: one :class:`ServerState` record and one log per port.

``<port>.json`` (written atomically) records a running server: its pid and process group,
backend, model, command, start time and restarts, and the supervisor's pid with ``--watch``.
``<port>.log`` collects the server's output and the supervisor's lines.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, TypedDict

from .backends import ServerError

SCHEMA = 1
LOG_TAIL_LINES = 20


class ServerState(TypedDict):
    """The record of ``<port>.json`` (``schema`` = :data:`SCHEMA`)."""

    schema: int
    backend: str
    model: str
    host: str
    port: int
    url: str  # the OpenAI-compatible root, http://HOST:PORT/v1
    pid: int
    pgid: int
    command: list[str]
    log: str
    started_at: float  # of the running process: a restart resets it
    first_started_at: float
    restarts: int
    watch: bool
    watch_pid: int | None  # the supervisor, once it runs
    backoff: list[float]  # [base, cap] seconds between restarts
    startup_timeout: float
    spec: dict[str, Any]  # the ServerSpec, as asdict() gives it


def state_dir(cache: str | os.PathLike) -> Path:
    return Path(cache).expanduser() / "servers"


def state_path(directory: Path, port: int) -> Path:
    return directory / f"{port}.json"


def log_path(directory: Path, port: int) -> Path:
    return directory / f"{port}.log"


def read_state(path: Path) -> ServerState | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as exc:
        raise ServerError(f"{path}: unreadable server state ({exc}); delete the file") from None


def list_states(directory: Path) -> list[ServerState]:
    states = []
    for path in sorted(directory.glob("*.json"), key=lambda p: (len(p.stem), p.stem)):
        state = read_state(path)
        if state is not None:
            states.append(state)
    return states


def log_tail(path: str | Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - 64 * 1024))
            data = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:]) if lines > 0 else ""
