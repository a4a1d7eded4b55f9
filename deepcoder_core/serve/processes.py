"""The server's processes: launch detached, tell whether they live, signal the whole family.

A server runs in its own session (so one signal reaches its whole process group); since a
worker may call ``setsid`` itself, :func:`family` also follows every descendant through
``/proc``. :func:`terminate` sends SIGTERM to all of them, then SIGKILL after a grace period,
and waits until none is left.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

from .backends import ServerError


def reap(pid: int) -> int | None:
    """The exit code of our own child ``pid`` if it has exited (reaping it), else None."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    if done == 0:
        return None
    return os.waitstatus_to_exitcode(status)


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgrp) from /proc, or None when the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[2])


def pid_alive(pid: int) -> bool:
    """True when ``pid`` runs (a zombie, exited but not yet reaped, counts as dead)."""
    reap(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = _proc_stat(pid)
    if stat is None:
        return not os.path.isdir("/proc")  # without /proc, kill(pid, 0) is all we know
    return stat[0] != "Z"


def family(pid: int, pgid: int) -> set[int]:
    """Live processes of the group ``pgid`` plus every descendant of ``pid`` (they may setsid)."""
    if not os.path.isdir("/proc"):
        try:
            os.killpg(pgid, 0)
        except OSError:
            return set()
        return {pgid}
    children: dict[int, list[int]] = {}
    members: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _proc_stat(int(entry))
        if stat is None or stat[0] == "Z":
            continue
        children.setdefault(stat[1], []).append(int(entry))
        if stat[2] == pgid:
            members.add(int(entry))
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in members:
                members.add(child)
                stack.append(child)
    if pid_alive(pid):
        members.add(pid)
    return members


def _signal_family(pid: int, pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except OSError:
        pass
    for member in family(pid, pgid):
        try:
            os.kill(member, sig)
        except OSError:
            pass


def terminate(pid: int, pgid: int, grace: float = 15.0) -> str:
    """SIGTERM the process group and descendants, SIGKILL what is left after ``grace`` seconds.

    Returns the last signal needed ("none" when nothing was running). Our own exited
    children are reaped, so no zombie is left either.
    """
    if not family(pid, pgid):
        reap(pid)
        return "none"
    _signal_family(pid, pgid, signal.SIGTERM)
    if _wait_gone(pid, pgid, grace):
        return "SIGTERM"
    _signal_family(pid, pgid, signal.SIGKILL)
    if _wait_gone(pid, pgid, 10.0):
        return "SIGKILL"
    left = sorted(family(pid, pgid))
    raise ServerError(f"processes {left} survived SIGKILL; check them with `ps -o pid,stat,cmd`")


def _wait_gone(pid: int, pgid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        reap(pid)
        if not family(pid, pgid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def launch(command: list[str], log_path: Path, *, append: bool = False) -> subprocess.Popen:
    """Start ``command`` detached (own session and process group), output to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a" if append else "w", encoding="utf-8") as log:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        log.write(f"[deepcoder] {stamp} starting: {shlex.join(command)}\n")
        log.flush()
        try:
            return subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        except OSError as exc:
            raise ServerError(f"cannot run {command[0]}: {exc.strerror}") from None
