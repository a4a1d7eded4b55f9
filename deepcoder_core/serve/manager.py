"""A server's life: start it and wait until it is ready, stop it, describe it.

:func:`start_server` returns once ``/health`` (or ``/v1/models`` for backends without it)
answers and a one-token chat completion succeeds; on any failure it stops what it launched
and leaves no state behind. With ``watch`` it also starts the supervisor
(:mod:`.supervisor`, ``python -m deepcoder_core.serve --supervise STATE``).
:func:`stop_server` stops the supervisor first, then the server's whole process family.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TypedDict

from ..io import atomic_write_json
from . import backends
from .backends import ServerError, ServerSpec
from .client import base_url, generate_one_token, health, served_model
from .processes import launch, pid_alive, terminate
from .state import SCHEMA, ServerState, log_path, log_tail, read_state, state_path


class StopResult(TypedDict):
    port: int
    pid: int
    signal: str  # the last signal needed: "SIGTERM", "SIGKILL", or "none" (was not running)


class StatusRow(TypedDict):
    """One line of ``deepcoder server status`` (a JSON object with ``--json``)."""

    port: int
    pid: int
    backend: str
    model: str
    url: str
    alive: bool
    health: str  # healthy | unhealthy | unreachable | dead
    uptime_s: float | None
    restarts: int
    watch: bool  # a supervisor is running
    log: str


def wait_ready(
    state: ServerState,
    timeout: float,
    exit_code: Callable[[], int | None],
) -> None:
    """Block until the server answers health checks and one generation, or raise ServerError."""
    host, port, log = state["host"], state["port"], state["log"]
    deadline = time.monotonic() + timeout
    delay = 0.05
    reason = "no answer yet"
    while True:
        code = exit_code()
        if code is not None:
            raise ServerError(
                f"the {state['backend']} server exited during start-up (exit code {code}); "
                f"last lines of {log}:\n{log_tail(log)}"
            )
        if health(host, port) == "healthy":
            model = served_model(host, port, state["model"])
            left = max(1.0, deadline - time.monotonic())
            failure = generate_one_token(host, port, model, timeout=min(120.0, left))
            if failure is None:
                return
            reason = f"health answers but a one-token generation failed: {failure}"
        if time.monotonic() >= deadline:
            raise ServerError(
                f"the {state['backend']} server on port {port} was not ready after {timeout:g}s "
                f"({reason}); last lines of {log}:\n{log_tail(log)}"
            )
        time.sleep(delay)
        delay = min(1.0, delay * 1.5)


def start_server(
    spec: ServerSpec,
    directory: Path,
    *,
    timeout: float = 600.0,
    watch: bool = False,
    backoff: float = 1.0,
    backoff_max: float = 60.0,
) -> ServerState:
    """Launch ``spec`` detached, wait until it is ready, record its state; returns the state.

    On any start-up failure the process group is stopped and no state is left behind.
    """
    backends.check_model(spec.model)
    backends.check_backend(spec)
    command = backends.build_command(spec)
    path = state_path(directory, spec.port)
    old = read_state(path)
    if old is not None:
        old_watch_pid = old.get("watch_pid")
        if pid_alive(old["pid"]) or (old_watch_pid and pid_alive(old_watch_pid)):
            raise ServerError(
                f"a {old['backend']} server already runs on port {spec.port} (pid {old['pid']}); "
                f"stop it with `deepcoder server stop --port {spec.port}`"
            )
        path.unlink(missing_ok=True)  # a dead server's leftover state
    backends.check_port_free(spec.host, spec.port)
    log = log_path(directory, spec.port)
    process = launch(command, log)
    now = time.time()
    state: ServerState = {
        "schema": SCHEMA,
        "backend": spec.backend,
        "model": spec.model,
        "host": spec.host,
        "port": spec.port,
        "url": base_url(spec.host, spec.port),
        "pid": process.pid,
        "pgid": process.pid,  # start_new_session: the server leads its own group
        "command": command,
        "log": str(log),
        "started_at": now,
        "first_started_at": now,
        "restarts": 0,
        "watch": watch,
        "watch_pid": None,
        "backoff": [backoff, backoff_max],
        "startup_timeout": timeout,
        "spec": asdict(spec),
    }
    atomic_write_json(path, state)
    try:
        wait_ready(state, timeout, process.poll)
    except BaseException:
        terminate(process.pid, process.pid, grace=5.0)
        path.unlink(missing_ok=True)
        raise
    if watch:
        with open(log, "a", encoding="utf-8") as output:  # a supervisor failure shows in `logs`
            supervisor = subprocess.Popen(
                [sys.executable, "-m", "deepcoder_core.serve", "--supervise", str(path)],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        state["watch_pid"] = supervisor.pid
        atomic_write_json(path, state)
    return state


def stop_server(path: Path, grace: float = 15.0) -> StopResult:
    """Stop the supervisor (if any), then the server's whole process family; drop the state."""
    state = read_state(path)
    if state is None:
        raise ServerError(f"no server recorded in {path}")
    watch_pid = state.get("watch_pid")
    if watch_pid:
        terminate(watch_pid, watch_pid, grace=5.0)
        state = read_state(path) or state  # the supervisor may have restarted the server
    how = terminate(state["pid"], state["pgid"], grace=grace)
    path.unlink(missing_ok=True)
    return {"port": state["port"], "pid": state["pid"], "signal": how}


def describe(state: ServerState) -> StatusRow:
    """The status row of one server: pid, backend, model, port, uptime, health, restarts."""
    alive = pid_alive(state["pid"])
    watch_pid = state.get("watch_pid")
    return {
        "port": state["port"],
        "pid": state["pid"],
        "backend": state["backend"],
        "model": state["model"],
        "url": state["url"],
        "alive": alive,
        "health": health(state["host"], state["port"]) if alive else "dead",
        "uptime_s": round(time.time() - state["started_at"], 1) if alive else None,
        "restarts": state.get("restarts", 0),
        "watch": bool(watch_pid and pid_alive(watch_pid)),
        "log": state["log"],
    }
