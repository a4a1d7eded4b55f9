"""The host side: a pool of pre-started sandbox workers, and the process-wide pool.

``SandboxPool`` starts ``size`` workers (``python -I`` with an empty environment, in a new
session; under bubblewrap at the ``namespaces`` level, see ``isolation``) and hands each
request to an idle one. A worker that stops answering is killed with its process group and
replaced. Workers exit when their request pipe reaches end-of-file, which happens however
this process ends (``close()``, ``atexit``, SIGINT, SIGTERM, even SIGKILL); children die
with their worker (``PR_SET_PDEATHSIG``), and with bubblewrap the whole namespace dies with
it. Every response is checked (``protocol.check_response``) before it becomes a result.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import DeepcoderError
from . import isolation as _isolation
from .protocol import ProtocolError, Reader, check_response, max_message_bytes, send

EXEC_RUNNER = "deepcoder_core.sandbox:run_exec"
_GRACE = 5.0  # seconds a worker may take beyond the request timeout before it is presumed hung


class SandboxError(DeepcoderError, RuntimeError):
    """The pool itself failed (closed, no worker could start); not an error of the code run."""


@dataclass(frozen=True)
class Limits:
    """Per-child limits. ``cpu_seconds=None``: the wall-clock timeout rounded up, plus one."""

    memory_mb: int = 512  # RLIMIT_AS: address space, interpreter included
    cpu_seconds: float | None = None
    file_size_mb: int = 16  # RLIMIT_FSIZE
    open_files: int = 64  # RLIMIT_NOFILE
    max_output_chars: int = 20_000

    def __post_init__(self) -> None:
        for name in ("memory_mb", "file_size_mb", "open_files", "max_output_chars"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"sandbox limit {name} must be a whole number >= 1, got {value!r}")
        cpu = self.cpu_seconds
        if cpu is not None and (
            type(cpu) not in (int, float) or not math.isfinite(cpu) or cpu <= 0
        ):
            raise ValueError(f"sandbox limit cpu_seconds must be a finite number > 0, got {cpu!r}")

    def resolved(self, timeout: float) -> dict[str, Any]:
        limits = asdict(self)
        if self.cpu_seconds is None:
            limits["cpu_seconds"] = math.ceil(timeout) + 1
        return limits


@dataclass
class SandboxRequest:
    """What to run: a runner (``module:function``), its payload, and optional own limits.

    With ``partner`` (another runner) the request runs in two children: the runner as the
    judge, which reports the result, and the partner with ``partner_payload``, reachable
    from the judge through ``runtime.partner()`` only.
    """

    payload: dict[str, Any]
    runner: str = EXEC_RUNNER
    limits: Limits | None = None
    partner: str | None = None
    partner_payload: dict[str, Any] | None = None


@dataclass
class SandboxResult:
    """The outcome of one request.

    ``status``: ``ok`` | ``error`` (the code raised) | ``timeout`` (wall clock) |
    ``killed`` (a limit or a signal ended the child) | ``crashed`` (no valid result came back).
    ``data`` holds the runner's structured result (e.g. ``value``, ``passed``/``total``).
    """

    status: str
    stdout: str = ""
    error: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    duration: float = 0.0
    truncated: bool = False

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def check_timeout(timeout: Any) -> float:
    """A request timeout: a finite number of seconds > 0."""
    if type(timeout) not in (int, float) or not math.isfinite(timeout) or timeout <= 0:
        raise ValueError(f"sandbox timeout must be a finite number of seconds > 0, got {timeout!r}")
    return float(timeout)


class _WorkerLost(Exception):
    pass


# The parent's import path travels as an argument: -I and the empty environment drop PYTHONPATH.
_BOOT = (
    "import json, sys; sys.path.extend(p for p in json.loads(sys.argv[2]) if p not in sys.path); "
    "from deepcoder_core.sandbox.worker import serve; serve()"
)


class _Worker:
    def __init__(
        self,
        preload: list[str],
        isolation_level: str,
        scratch_mb: int,
        start_timeout: float = 30.0,
    ):
        command = [
            sys.executable,
            "-I",
            "-c",
            _BOOT,
            json.dumps(preload),
            json.dumps([os.path.abspath(p) for p in sys.path if p]),  # '' (the cwd) left out
            isolation_level,
            json.dumps(_isolation.host_namespaces()),
        ]
        if isolation_level == "namespaces":
            try:
                command = _isolation.bwrap_command(command, preload=preload, scratch_mb=scratch_mb)
            except _isolation.IsolationUnavailable as exc:
                raise SandboxError(str(exc)) from None
        self.proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={},
            start_new_session=True,
            close_fds=True,
            cwd="/",
        )
        self.pid = self.proc.pid
        assert self.proc.stdin and self.proc.stdout and self.proc.stderr  # all three are pipes
        self.stdin, self.stdout, self.stderr = self.proc.stdin, self.proc.stdout, self.proc.stderr
        self.reader = Reader(self.stdout.fileno())
        try:
            hello = self.reader.read(time.monotonic() + start_timeout)
        except (TimeoutError, ProtocolError) as exc:
            self.kill()
            raise SandboxError(f"sandbox worker did not start: {exc or 'timeout'}") from None
        if type(hello) is not dict or hello.get("ready") is not True:
            code = self.kill()
            why = hello.get("error") if type(hello) is dict else None
            if why is None:
                why = self._stderr() or f"exit code {code}"
            raise SandboxError(f"sandbox worker could not start ({isolation_level}): {why}")
        if hello.get("isolation") != isolation_level:
            self.kill()
            raise SandboxError(f"sandbox worker reports isolation {hello.get('isolation')!r}")
        self.stderr.close()  # the worker sends nothing there once it serves

    def _stderr(self) -> str:
        try:
            text = self.stderr.read(4000).decode("utf-8", "replace").strip()
        except (OSError, ValueError):
            return ""
        return text.splitlines()[-1] if text else ""

    def request(self, message: dict[str, Any], deadline: float) -> Any:
        try:
            send(self.stdin.fileno(), message)
            response = self.reader.read(deadline)
        except (OSError, ProtocolError, TimeoutError) as exc:
            raise _WorkerLost(type(exc).__name__) from None
        if response is None:
            raise _WorkerLost("end of file")
        return response

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self, wait: float = 1.0) -> None:
        """Ask politely (end-of-file), then kill the process group."""
        try:
            self.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(wait)
        except subprocess.TimeoutExpired:
            pass
        self.kill()

    def kill(self) -> int | None:
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            code = self.proc.wait(5)
        except subprocess.TimeoutExpired:
            code = None
        for stream in (self.stdin, self.stdout, self.stderr):
            try:
                stream.close()
            except OSError:
                pass
        return code


_live_pools: weakref.WeakSet[SandboxPool] = weakref.WeakSet()


class SandboxPool:
    """A pool of pre-started sandbox workers; ``run`` is thread-safe.

    ``preload``: extra modules (or ``module:function`` runners) each worker imports once at
    start, so the first call with them is as fast as the rest. ``isolation``: ``namespaces``
    or ``rlimits`` (see ``isolation``; default: the level set by ``configure``);
    ``scratch_mb``: the size cap of a call's private ``/tmp``.
    """

    def __init__(
        self,
        size: int = 2,
        limits: Limits | None = None,
        *,
        preload: Iterable[str] = (),
        isolation: str | None = None,
        scratch_mb: int | None = None,
    ):
        if size < 1:
            raise ValueError(f"sandbox pool size must be >= 1, got {size}")
        self.isolation = isolation or _settings["isolation"]
        if self.isolation not in ISOLATION_LEVELS:
            raise ValueError(
                f"sandbox isolation {self.isolation!r} is not one of {', '.join(ISOLATION_LEVELS)}"
            )
        self.scratch_mb = scratch_mb or _settings["scratch_mb"]
        if self.isolation == "namespaces":
            try:
                _isolation.probe()
            except _isolation.IsolationUnavailable as exc:
                raise SandboxError(f"untrusted code will not run: {exc}") from None
        else:
            _warn_weak(self.isolation)
        self.size = size
        self.limits = limits or Limits()
        self.preload = list(preload)
        self.grace = _GRACE
        self.replaced = 0
        self.requests = 0
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._workers: set[_Worker] = set()
        self._lock = threading.Lock()
        self._closed = False
        _live_pools.add(self)
        threads = [threading.Thread(target=self._spawn_into_pool) for _ in range(size)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if not self._workers:
            raise SandboxError(f"no sandbox worker could start ({self._last_error})")

    _last_error: str = ""

    def _spawn_into_pool(self) -> None:
        try:
            worker = _Worker(self.preload, self.isolation, self.scratch_mb)
        except (SandboxError, OSError) as exc:
            self._last_error = str(exc)
            return
        with self._lock:
            if self._closed:
                worker.close(0)
                return
            self._workers.add(worker)
        self._idle.put(worker)

    @property
    def worker_pids(self) -> list[int]:
        with self._lock:
            return sorted(w.pid for w in self._workers)

    def stats(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "isolation": self.isolation,
            "workers": len(self.worker_pids),
            "idle": self._idle.qsize(),
            "requests": self.requests,
            "replaced": self.replaced,
        }

    def _acquire(self) -> _Worker:
        while True:
            if self._closed:
                raise SandboxError("the sandbox pool is closed")
            with self._lock:
                empty = not self._workers
            if empty:  # every replacement failed so far: one more try, then give up
                self._spawn_into_pool()
                with self._lock:
                    if not self._workers:
                        raise SandboxError(f"no sandbox worker is running ({self._last_error})")
            try:
                return self._idle.get(timeout=0.5)
            except queue.Empty:
                continue

    def _replace(self, worker: _Worker) -> None:
        with self._lock:
            self._workers.discard(worker)
            self.replaced += 1
        worker.kill()
        if not self._closed:
            self._spawn_into_pool()

    def run(self, request: str | SandboxRequest, timeout: float = 10.0) -> SandboxResult:
        """Run code (a string: the ``exec`` runner) or a request; never raises for the code's faults."""
        if isinstance(request, str):
            request = SandboxRequest(payload={"code": request})
        timeout = check_timeout(timeout)
        limits = (request.limits or self.limits).resolved(timeout)
        message = {
            "runner": request.runner,
            "payload": request.payload,
            "limits": limits,
            "timeout": timeout,
        }
        if request.partner:
            message["partner"] = request.partner
            message["partner_payload"] = request.partner_payload or {}
        worker = self._acquire()
        with self._lock:
            self.requests += 1
        started = time.monotonic()
        # The worker's answer: the child's texts, the runner's data and the progress page.
        worker.reader.max_bytes = max_message_bytes(limits["max_output_chars"]) + (1 << 17)
        try:
            response = worker.request(message, started + timeout + self.grace)
        except _WorkerLost as exc:
            self._replace(worker)
            if self._closed:
                raise SandboxError("the sandbox pool was closed during the call") from None
            return SandboxResult(
                status="crashed",
                error=f"sandbox worker stopped answering ({exc}); it was replaced",
                duration=time.monotonic() - started,
            )
        self._idle.put(worker)
        try:
            response = check_response(response, limits["max_output_chars"])
        except ProtocolError as exc:
            return SandboxResult(
                status="crashed",
                error=f"sandbox protocol error: {exc}",
                duration=time.monotonic() - started,
            )
        data = {
            k: v
            for k, v in response.items()
            if k not in ("status", "stdout", "error", "duration", "truncated")
        }
        return SandboxResult(
            status=response["status"],
            stdout=response.get("stdout") or "",
            error=response.get("error"),
            data=data,
            duration=response.get("duration", time.monotonic() - started),
            truncated=bool(response.get("truncated")),
        )

    def close(self) -> None:
        """Stop every worker (and any child it runs). Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            workers = list(self._workers)
            self._workers.clear()
        for worker in workers:
            worker.close()
        _live_pools.discard(self)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            self.close()


ISOLATION_LEVELS = _isolation.LEVELS
_settings: dict[str, Any] = {"isolation": "namespaces", "scratch_mb": 64}


def configure(*, isolation: str | None = None, scratch_mb: int | None = None) -> None:
    """Set how the process-wide pool isolates its children (the config's ``sandbox`` section).

    Takes effect for pools started afterwards; a running shared pool with other settings is
    closed so the next ``get_pool`` starts one that matches.
    """
    if isolation is not None and isolation not in ISOLATION_LEVELS:
        raise ValueError(
            f"sandbox isolation {isolation!r} is not one of {', '.join(ISOLATION_LEVELS)}"
        )
    if scratch_mb is not None and not (isinstance(scratch_mb, int) and scratch_mb >= 1):
        raise ValueError(f"sandbox scratch_mb must be an integer >= 1, got {scratch_mb!r}")
    new = dict(_settings)
    if isolation is not None:
        new["isolation"] = isolation
    if scratch_mb is not None:
        new["scratch_mb"] = scratch_mb
    if new != _settings:
        _settings.update(new)
        close_pool()


def _warn_weak(level: str) -> None:
    """Every pool started below the ``namespaces`` level says so, on standard error."""
    print(
        f"deepcoder: warning: sandbox isolation is {level!r}: untrusted code runs with resource "
        "limits only, and can reach the network and read what an unprivileged user can read "
        "(set sandbox.isolation: namespaces to isolate it)",
        file=sys.stderr,
    )


def isolation_level() -> str:
    """The level the process-wide pool starts with (``configure``)."""
    return _settings["isolation"]


_shared: SandboxPool | None = None
_shared_lock = threading.Lock()


def get_pool() -> SandboxPool:
    """The process-wide pool (size: CPU count, 2..8), started on first use, closed at exit."""
    global _shared
    with _shared_lock:
        if _shared is None or _shared.closed:
            _shared = SandboxPool(size=max(2, min(8, os.cpu_count() or 2)))
        return _shared


def close_pool() -> None:
    """Close the process-wide pool (a later ``get_pool`` starts a new one)."""
    global _shared
    with _shared_lock:
        if _shared is not None:
            _shared.close()
            _shared = None


def _close_all() -> None:
    for pool in list(_live_pools):
        pool.close()


def _forget_after_fork() -> None:
    """A forked copy of the host must not use (or keep alive) the parent's workers."""
    global _shared
    for pool in list(_live_pools):
        for worker in pool._workers:
            for stream in (worker.stdin, worker.stdout):
                try:
                    stream.close()
                except OSError:
                    pass
        pool._closed = True
        pool._workers.clear()
    _live_pools.clear()
    _shared = None


atexit.register(_close_all)
os.register_at_fork(after_in_child=_forget_after_fork)
