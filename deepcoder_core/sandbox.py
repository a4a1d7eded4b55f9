"""Run untrusted code in pre-started worker processes with OS resource limits.

Design (a fork server per worker):

- ``SandboxPool`` starts ``size`` worker processes with ``python -I`` (isolated mode), an
  empty environment and a new session (own process group). A worker imports the trusted
  runner modules once and then serves requests from a pipe, one at a time.
- For each request the worker ``fork()``\\ s a fresh child. The child closes every inherited
  descriptor but its result pipe, points stdin/stdout/stderr at ``/dev/null``, enters a new
  temporary directory, sets its limits (``RLIMIT_CPU``, ``RLIMIT_AS``, ``RLIMIT_FSIZE``,
  ``RLIMIT_NOFILE``, ``RLIMIT_CORE`` = 0, ``RLIMIT_NPROC`` = 0 so no process or thread can be
  created), clears the environment, and, when the pool runs as root, switches to uid/gid
  65534 (``nobody``): the kernel ignores ``RLIMIT_NPROC`` for root, and the host's root-owned
  files and ``/proc/<pid>/environ`` must be out of reach. Then it runs the request's runner
  with ``sys.stdout``/``sys.stderr`` captured up to ``max_output_chars``.
- The worker kills the child at the wall-clock deadline; a worker that stops answering
  is killed with its whole process group by the pool and replaced. Every request therefore
  starts from the same clean state (fork copies the warm worker; nothing survives a call),
  and a call costs a fork, not an interpreter start.
- No leaks: workers exit when their request pipe reaches end-of-file, which happens however
  the parent ends (``close()``, ``atexit``, SIGINT, SIGTERM, even SIGKILL); children die with
  their worker (``PR_SET_PDEATHSIG``).

Messages are length-prefixed JSON (4-byte big-endian size), never pickle: the worker side is
untrusted.

A request names a *runner*, ``"module:function"`` of trusted code importable in the worker,
called in the child as ``function(payload: dict, limits: dict) -> dict``. The built-in
``exec`` runner executes ``payload["code"]`` as ordinary Python and reports the repr of a
last expression (REPL-like). ``deepcoder_core.checking`` and the ``python`` tool plugin bring
their own runners. A runner may call ``report_progress(dict)``: the record lands in a page
of memory shared with the worker, so partial results survive a child killed mid-way.

Linux only (``/proc``, ``prctl``, ``RLIMIT_AS`` semantics). Limitations: limits and isolation
protect the host, not a verdict computed inside the child (code under test shares the child
with the runner that counts its asserts); and when not run as root, the child keeps the
parent's uid, so ordinary (unrestricted) code can read what that user can read.
"""

from __future__ import annotations

import atexit
import json
import math
import mmap
import os
import queue
import select
import signal
import struct
import subprocess
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

# Standard-library modules with no I/O, process or interpreter access: the python tool's
# import allow-list, and the modules whose documentation the retriever indexes.
PURE_MODULES = (
    "math",
    "re",
    "itertools",
    "collections",
    "functools",
    "heapq",
    "bisect",
    "string",
    "json",
    "statistics",
    "fractions",
    "decimal",
    "operator",
    "typing",
    "dataclasses",
    "random",
)

__all__ = [
    "Limits",
    "SandboxError",
    "SandboxPool",
    "SandboxRequest",
    "SandboxResult",
    "close_pool",
    "get_pool",
    "register_source",
    "report_progress",
    "short_traceback",
]

EXEC_RUNNER = "deepcoder_core.sandbox:run_exec"
NOBODY = 65534
_HEADER = struct.Struct(">I")
_MAX_MESSAGE = 64 * 1024 * 1024
_GRACE = 5.0  # seconds a worker may take beyond the request timeout before it is presumed hung

# Imported by every worker before it forks: after the switch to ``nobody`` a child may be
# unable to read the interpreter's own files (e.g. a 0700 home holding pyenv), so the
# modules that code under test commonly needs must already be in memory.
PRELOAD = (
    "abc array ast base64 binascii bisect calendar cmath codecs collections collections.abc "
    "contextlib copy csv dataclasses datetime decimal difflib encodings.ascii encodings.latin_1 "
    "encodings.utf_16 encodings.utf_32 encodings.idna encodings.cp1252 enum fractions functools "
    "gc hashlib heapq io itertools json keyword linecache math numbers operator pprint queue "
    "random re secrets statistics string struct textwrap time tokenize traceback types typing "
    "unicodedata uuid warnings weakref zlib"
).split()


class SandboxError(RuntimeError):
    """The pool itself failed (closed, no worker could start); not an error of the code run."""


@dataclass(frozen=True)
class Limits:
    """Per-child limits. ``cpu_seconds=None``: the wall-clock timeout rounded up, plus one."""

    memory_mb: int = 512  # RLIMIT_AS: address space, interpreter included
    cpu_seconds: float | None = None
    file_size_mb: int = 16  # RLIMIT_FSIZE
    open_files: int = 64  # RLIMIT_NOFILE
    max_output_chars: int = 20_000

    def resolved(self, timeout: float) -> dict[str, Any]:
        limits = asdict(self)
        if self.cpu_seconds is None:
            limits["cpu_seconds"] = math.ceil(timeout) + 1
        return limits


@dataclass
class SandboxRequest:
    """What to run: a runner (``module:function``), its payload, and optional own limits."""

    payload: dict[str, Any]
    runner: str = EXEC_RUNNER
    limits: Limits | None = None


@dataclass
class SandboxResult:
    """The outcome of one request.

    ``status``: ``ok`` | ``error`` (the code raised) | ``timeout`` (wall clock) |
    ``killed`` (a limit or a signal ended the child) | ``crashed`` (no result came back).
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


# ---------------------------------------------------------------------------- framing


def _send(fd: int, message: dict[str, Any]) -> None:
    data = json.dumps(message, ensure_ascii=False, default=repr).encode("utf-8", "surrogatepass")
    data = _HEADER.pack(len(data)) + data
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class _Reader:
    """Reads length-prefixed messages from a pipe with a deadline, without blocking past it."""

    def __init__(self, fd: int):
        self.fd = fd
        self.buf = bytearray()
        self.eof = False

    def _complete(self) -> dict[str, Any] | None:
        if len(self.buf) < _HEADER.size:
            return None
        (size,) = _HEADER.unpack_from(self.buf)
        if size > _MAX_MESSAGE:
            raise ValueError(f"message of {size} bytes exceeds {_MAX_MESSAGE}")
        if len(self.buf) < _HEADER.size + size:
            return None
        body = bytes(self.buf[_HEADER.size : _HEADER.size + size])
        del self.buf[: _HEADER.size + size]
        return json.loads(body.decode("utf-8", "surrogatepass"))

    def fill(self, timeout: float | None) -> bool:
        """Read what is available within ``timeout``; False when nothing came (timeout)."""
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return False
        chunk = os.read(self.fd, 1 << 16)
        if not chunk:
            self.eof = True
        self.buf += chunk
        if len(self.buf) > _MAX_MESSAGE + _HEADER.size:
            raise ValueError("message too large")
        return True

    def read(self, deadline: float | None) -> dict[str, Any] | None:
        """The next message; None at end-of-file; TimeoutError past ``deadline``."""
        while True:
            message = self._complete()
            if message is not None:
                return message
            if self.eof:
                return None
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError
            self.fill(remaining)


# ---------------------------------------------------------------------------- child side


class _CappedText:
    """A text stream that keeps the first ``limit`` characters and counts the rest."""

    def __init__(self, limit: int):
        self.limit = limit
        self.parts: list[str] = []
        self.size = 0
        self.dropped = 0

    def write(self, text: str) -> int:
        text = str(text)
        room = self.limit - self.size
        if room > 0:
            kept = text[:room]
            self.parts.append(kept)
            self.size += len(kept)
            self.dropped += len(text) - len(kept)
        else:
            self.dropped += len(text)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def getvalue(self) -> str:
        text = "".join(self.parts)
        if self.dropped:
            text += f"\n... [output truncated: {self.dropped} more characters]"
        return text


def short_traceback(exc: BaseException, filenames: Iterable[str], max_frames: int = 8) -> str:
    """A traceback of the frames in ``filenames`` only (the user's code), no host paths.

    Register the sources in ``linecache`` under those filenames to get source lines.
    """
    names = set(filenames)
    te = traceback.TracebackException.from_exception(exc, capture_locals=False)
    frames = [f for f in te.stack if f.filename in names]
    lines: list[str] = []
    if frames:
        lines.append("Traceback (most recent call last):\n")
        if len(frames) > max_frames:
            lines.append(f"  ... {len(frames) - max_frames} earlier frames omitted\n")
            frames = frames[-max_frames:]
        lines.extend(traceback.StackSummary.from_list(frames).format())
    lines.extend(te.format_exception_only())
    return "".join(lines).rstrip()


_progress: Any = None  # in the child: the page shared with its worker (mmap, MAP_SHARED)
_PROGRESS_BYTES = 1 << 16


def report_progress(data: dict[str, Any]) -> None:
    """From a runner: record partial results (JSON-able, small). If the child is then killed
    (timeout, limit) the last record comes back as ``data["progress"]``. Costs a memory write,
    no system call: the page is shared with the worker, which reads it after the child ends."""
    if _progress is None:
        return
    body = json.dumps(data).encode()
    if len(body) <= _PROGRESS_BYTES - _HEADER.size:
        _progress[: _HEADER.size] = _HEADER.pack(0)  # torn while writing: reads as empty
        _progress[_HEADER.size : _HEADER.size + len(body)] = body
        _progress[: _HEADER.size] = _HEADER.pack(len(body))


def _read_progress(page: Any) -> dict[str, Any] | None:
    (size,) = _HEADER.unpack_from(page)
    if not 0 < size <= _PROGRESS_BYTES - _HEADER.size:
        return None
    try:
        return json.loads(page[_HEADER.size : _HEADER.size + size])
    except ValueError:
        return None


def register_source(filename: str, source: str) -> None:
    """Make ``source`` known to ``linecache`` so tracebacks show the user's lines."""
    import linecache

    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)


def run_exec(payload: dict[str, Any], limits: dict[str, Any]) -> dict[str, Any]:
    """Built-in runner: ordinary ``exec`` of ``payload["code"]``; a last expression's repr is the value."""
    import ast

    code, filename = payload["code"], "<sandbox>"
    register_source(filename, code)
    namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        tree = ast.parse(code, filename)
        last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
        exec(compile(tree, filename, "exec"), namespace)
        value = None
        if last is not None:
            expr = ast.Expression(last.value)
            value = eval(compile(expr, filename, "eval"), namespace)
    except BaseException as exc:  # the code's own failure, reported as its observation
        namespace.clear()
        return {"status": "error", "error": short_traceback(exc, [filename])}
    out: dict[str, Any] = {"status": "ok"}
    if value is not None:
        out["value"] = repr(value)[: limits["max_output_chars"]]
    return out


def _set_limits(limits: dict[str, Any]) -> None:
    import resource

    mb = 1024 * 1024
    cpu = math.ceil(limits["cpu_seconds"])
    wanted = [
        (resource.RLIMIT_CORE, 0, 0),
        (resource.RLIMIT_CPU, cpu, cpu + 1),  # SIGXCPU at the soft limit, SIGKILL one second later
        (resource.RLIMIT_AS, limits["memory_mb"] * mb, limits["memory_mb"] * mb),
        (resource.RLIMIT_FSIZE, limits["file_size_mb"] * mb, limits["file_size_mb"] * mb),
        (resource.RLIMIT_NOFILE, limits["open_files"], limits["open_files"]),
        (resource.RLIMIT_NPROC, 0, 0),
    ]
    for which, soft, hard in wanted:
        _, ceiling = resource.getrlimit(which)
        if ceiling != resource.RLIM_INFINITY:  # an unprivileged child cannot raise a hard limit
            soft, hard = min(soft, ceiling), min(hard, ceiling)
        resource.setrlimit(which, (soft, hard))


def _child(
    result_fd: int, workdir: str, runner: Any, request: dict[str, Any], prctl: Any, progress: Any
) -> None:
    """Runs in the forked child: isolate, limit, run, write the result, exit."""
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.closerange(3, result_fd)
    os.closerange(result_fd + 1, 65536)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an oversized write raises OSError instead
    os.chdir(workdir)
    limits = request["limits"]
    _set_limits(limits)
    if os.geteuid() == 0:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
    if prctl is not None:
        prctl(
            1, signal.SIGKILL
        )  # PR_SET_PDEATHSIG: die with the worker (set after setuid, which clears it)
    os.environ.clear()
    global _progress
    _progress = progress
    out = _CappedText(limits["max_output_chars"])
    sys.stdout = sys.stderr = out
    sys.stdin = open(os.devnull)  # noqa: SIM115 -- the child exits right after
    try:
        result = runner(request["payload"], limits)
    except BaseException as exc:  # a runner must not take the child down without a result
        result = {"status": "error", "error": short_traceback(exc, ["<sandbox>"])}
    sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    result.setdefault("status", "ok")
    result["stdout"] = out.getvalue()
    result["truncated"] = bool(out.dropped)
    _send(result_fd, result)


# ---------------------------------------------------------------------------- worker side

_SIGNAL_MEANING = {
    signal.SIGXCPU: "CPU time limit exceeded",
    signal.SIGXFSZ: "file size limit exceeded",
    signal.SIGKILL: "killed (out of memory, or the CPU hard limit)",
    signal.SIGSEGV: "crashed with SIGSEGV (stack overflow or a fault in native code)",
    signal.SIGABRT: "aborted (SIGABRT)",
}


def _resolve(runner: str, cache: dict[str, Any]) -> Any:
    if runner not in cache:
        import importlib

        module_name, attr = runner.split(":")
        cache[runner] = getattr(importlib.import_module(module_name), attr)
    return cache[runner]


def _load_prctl() -> Any:
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def _run_one(
    request: dict[str, Any], control: _Reader, runners: dict, prctl: Any, page: Any
) -> dict | None:
    """Fork a child for ``request``; the response, or None when the parent went away."""
    import shutil
    import tempfile

    start = time.monotonic()
    try:
        runner = _resolve(request["runner"], runners)
    except Exception as exc:
        return {"status": "crashed", "error": f"cannot load runner {request['runner']}: {exc}"}
    workdir = tempfile.mkdtemp(prefix="deepcoder-sandbox-")
    if os.geteuid() == 0:
        os.chown(workdir, NOBODY, NOBODY)
    page[: _HEADER.size] = _HEADER.pack(0)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(read_fd)
            _child(write_fd, workdir, runner, request, prctl, page)
        except BaseException:
            code = 70
        finally:
            os._exit(code)
    os.close(write_fd)
    deadline = start + request["timeout"]
    result_reader = _Reader(read_fd)
    status, message, parent_gone = None, None, False
    try:
        while True:
            message = result_reader._complete()
            if message is not None or result_reader.eof:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                status = "timeout"
                break
            ready, _, _ = select.select([read_fd, control.fd], [], [], remaining)
            if control.fd in ready:
                control.fill(0)
                if control.eof:
                    parent_gone = True
                    break
            if read_fd in ready:
                result_reader.fill(0)
    except ValueError:
        status = "crashed"
    finally:
        os.close(read_fd)
        done, wait_status = os.waitpid(pid, os.WNOHANG)
        if not done:
            os.kill(pid, signal.SIGKILL)
            done, wait_status = os.waitpid(pid, 0)
        shutil.rmtree(workdir, ignore_errors=True)
    if parent_gone:
        return None
    duration = time.monotonic() - start
    if message is not None and status is None:
        message["duration"] = duration
        return message
    progress = _read_progress(page)
    extra = (
        {"duration": duration} if progress is None else {"duration": duration, "progress": progress}
    )
    if status == "timeout":
        return {
            "status": "timeout",
            "error": f"timed out after {request['timeout']:g} s (wall clock)",
            **extra,
        }
    if os.WIFSIGNALED(wait_status):
        sig = os.WTERMSIG(wait_status)
        meaning = _SIGNAL_MEANING.get(sig, f"killed by signal {signal.Signals(sig).name}")
        if sig == signal.SIGXCPU:
            meaning += f" ({request['limits']['cpu_seconds']} s)"
        return {"status": "killed", "error": meaning, **extra}
    code = os.WEXITSTATUS(wait_status) if os.WIFEXITED(wait_status) else -1
    reason = "result too large" if status == "crashed" else f"exited with code {code}"
    return {"status": "crashed", "error": f"the code ended without a result ({reason})", **extra}


def serve() -> None:
    """Worker main loop (run as ``python -I -c``): preload, announce, serve until end-of-file."""
    # Protocol on private descriptors; 0/1 become /dev/null so nothing stray corrupts it.
    control_fd, reply_fd = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when workers end
    import importlib

    preload = json.loads(sys.argv[1]) if len(sys.argv) > 1 else []
    for name in [*PRELOAD, *preload]:
        try:
            importlib.import_module(name.partition(":")[0])
        except ImportError:
            pass
    runners: dict[str, Any] = {}
    for name in preload:
        if ":" in name:
            _resolve(name, runners)
    prctl = _load_prctl()
    page = mmap.mmap(-1, _PROGRESS_BYTES)  # anonymous and shared: children inherit it
    os.environ.clear()
    control = _Reader(control_fd)
    _send(reply_fd, {"ready": True, "pid": os.getpid()})
    while True:
        request = control.read(None)
        if request is None:
            return
        response = _run_one(request, control, runners, prctl, page)
        if response is None:
            return
        _send(reply_fd, response)


# ---------------------------------------------------------------------------- pool side


class _WorkerLost(Exception):
    pass


# The parent's import path travels as an argument: -I and the empty environment drop PYTHONPATH.
_BOOT = (
    "import json, sys; sys.path.extend(p for p in json.loads(sys.argv[2]) if p not in sys.path); "
    "from deepcoder_core.sandbox import serve; serve()"
)


class _Worker:
    def __init__(self, preload: list[str], start_timeout: float = 30.0):
        command = [
            sys.executable,
            "-I",
            "-c",
            _BOOT,
            json.dumps(preload),
            json.dumps([os.path.abspath(p) for p in sys.path if p]),  # '' (the cwd) left out
        ]
        self.proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={},
            start_new_session=True,
            close_fds=True,
            cwd="/",
        )
        self.pid = self.proc.pid
        self.reader = _Reader(self.proc.stdout.fileno())
        try:
            hello = self.reader.read(time.monotonic() + start_timeout)
        except (TimeoutError, ValueError) as exc:
            self.kill()
            raise SandboxError(f"sandbox worker did not start: {exc or 'timeout'}") from None
        if not hello or not hello.get("ready"):
            code = self.kill()
            raise SandboxError(f"sandbox worker exited at start (exit code {code})")

    def request(self, message: dict[str, Any], deadline: float) -> dict[str, Any]:
        try:
            _send(self.proc.stdin.fileno(), message)
            response = self.reader.read(deadline)
        except (OSError, ValueError, TimeoutError) as exc:
            raise _WorkerLost(type(exc).__name__) from None
        if response is None:
            raise _WorkerLost("end of file")
        return response

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self, wait: float = 1.0) -> None:
        """Ask politely (end-of-file), then kill the process group."""
        try:
            self.proc.stdin.close()
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
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        return code


_live_pools: weakref.WeakSet[SandboxPool] = weakref.WeakSet()


class SandboxPool:
    """A pool of pre-started sandbox workers; ``run`` is thread-safe.

    ``preload``: extra modules (or ``module:function`` runners) each worker imports once at
    start, so the first call with them is as fast as the rest.
    """

    def __init__(self, size: int = 2, limits: Limits | None = None, *, preload: Iterable[str] = ()):
        if size < 1:
            raise ValueError(f"sandbox pool size must be >= 1, got {size}")
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
            worker = _Worker(self.preload)
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
        limits = (request.limits or self.limits).resolved(timeout)
        message = {
            "runner": request.runner,
            "payload": request.payload,
            "limits": limits,
            "timeout": float(timeout),
        }
        worker = self._acquire()
        with self._lock:
            self.requests += 1
        started = time.monotonic()
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
        data = {
            k: v
            for k, v in response.items()
            if k not in ("status", "stdout", "error", "duration", "truncated")
        }
        return SandboxResult(
            status=response.get("status", "crashed"),
            stdout=response.get("stdout", ""),
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
            for stream in (worker.proc.stdin, worker.proc.stdout):
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
