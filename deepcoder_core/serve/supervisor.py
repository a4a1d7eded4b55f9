"""``--watch``: a small process that restarts a server whose process exited, with backoff.

It runs as ``python -m deepcoder_core.serve --supervise STATE`` (see ``__main__``), reads the
state file of one server, and relaunches the recorded command into the same log whenever the
server's process is gone. It ends when the state file is removed or on SIGTERM.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

from ..io import atomic_write_json
from .backends import ServerError
from .manager import wait_ready
from .processes import launch, pid_alive, reap
from .state import read_state


class _Stop(Exception):
    pass


def supervise(path: Path, interval: float = 0.5) -> None:
    """Restart the server of ``path`` whenever its process exits, with exponential backoff.

    The n-th consecutive failed restart waits ``min(backoff_max, backoff * 2**n)`` seconds;
    a restart that becomes ready resets n. SIGTERM ends the supervisor (``stop`` then
    stops the server); one arriving while a restart is launched and recorded is held until
    the new pid is in the state file, so a stop never misses a freshly started process.
    (The signal is deferred by a flag, not masked: a mask would be inherited by the server.)
    """
    flags = {"critical": False, "pending": False}

    def on_term(signum: int, frame: Any) -> None:
        if flags["critical"]:
            flags["pending"] = True
        else:
            raise _Stop

    signal.signal(signal.SIGTERM, on_term)
    failures = 0
    try:
        while True:
            state = read_state(path)
            if state is None:
                return
            code = reap(state["pid"])
            if code is None and pid_alive(state["pid"]):
                time.sleep(interval)
                continue
            base, cap = state.get("backoff", [1.0, 60.0])
            delay = min(cap, base * 2**failures)
            _log_line(
                state["log"],
                f"server pid {state['pid']} exited (code {code}); "
                f"restart {state['restarts'] + 1} in {delay:g}s",
            )
            time.sleep(delay)
            flags["critical"] = True
            process = launch(state["command"], Path(state["log"]), append=True)
            state["pid"] = state["pgid"] = process.pid
            state["started_at"] = time.time()
            state["restarts"] += 1
            atomic_write_json(path, state)
            flags["critical"] = False
            if flags["pending"]:
                raise _Stop
            try:
                wait_ready(state, state.get("startup_timeout", 600.0), process.poll)
                failures = 0
                _log_line(state["log"], f"server pid {process.pid} is ready again")
            except ServerError as exc:
                failures += 1
                _log_line(state["log"], str(exc).splitlines()[0])
    except _Stop:
        return


def _log_line(log: str, message: str) -> None:
    with open(log, "a", encoding="utf-8") as handle:
        handle.write(f"[deepcoder watch] {time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")
