"""The worker side: a fork server inside the isolation boundary, one child per request.

Runs as ``python -I -c`` (under bubblewrap at the ``namespaces`` level). For each request the
worker forks a child that closes every descriptor but its own pipes, points
stdin/stdout/stderr at ``/dev/null``, enters a fresh scratch directory (the only place it
may write), sets its rlimits (``RLIMIT_NPROC`` = 0: no process or thread can be created),
clears the environment, switches to an unprivileged uid when the worker is root, becomes
non-dumpable (its ``/proc`` entries and memory are closed to other processes of that uid),
and runs the request's runner with ``sys.stdout``/``sys.stderr`` captured. A request with
a *partner* gets two children under two uids, joined by pipes: the judge (the runner, which
holds the result pipe and the progress page) and the partner (the code under test, which
holds neither). The worker kills every child at the deadline, checks what came back
(``protocol.check_child_result``) and removes the scratch directories.
"""

from __future__ import annotations

import importlib
import json
import math
import mmap
import os
import select
import shutil
import signal
import sys
import tempfile
import time
from typing import Any

from . import isolation, runtime
from .protocol import ProtocolError, Reader, check_child_result, max_message_bytes, send

NOBODY = 65534  # uid of the code under test when the worker is root
JUDGE_UID = 65533  # uid of a judge child: the code under test cannot signal or read it

# Imported by every worker before it forks, so children need not read them (and to keep
# the first call as fast as the rest).
PRELOAD = (
    "abc array ast base64 binascii bisect calendar cmath codecs collections collections.abc "
    "contextlib copy csv dataclasses datetime decimal difflib encodings.ascii encodings.latin_1 "
    "encodings.utf_16 encodings.utf_32 encodings.idna encodings.cp1252 enum fractions functools "
    "gc hashlib heapq io itertools json keyword linecache math numbers operator pprint queue "
    "random re secrets statistics string struct textwrap time tokenize traceback types typing "
    "unicodedata uuid warnings weakref zlib"
).split()

_SIGNAL_MEANING = {
    signal.SIGXCPU: "CPU time limit exceeded",
    signal.SIGXFSZ: "file size limit exceeded",
    signal.SIGKILL: "killed (out of memory, or the CPU hard limit)",
    signal.SIGSEGV: "crashed with SIGSEGV (stack overflow or a fault in native code)",
    signal.SIGABRT: "aborted (SIGABRT)",
    signal.SIGSYS: "killed by the seccomp filter (a system call of another ABI)",
}
_PR_SET_PDEATHSIG, _PR_SET_DUMPABLE = 1, 4


class CappedText:
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


def _set_limits(limits: dict[str, Any], *, processes: bool = True) -> None:
    """The child's rlimits; ``processes=False`` leaves RLIMIT_NPROC to a partner's interpreter
    (the kernel fails an ``execve`` after ``setuid`` when the uid is already over it)."""
    import resource

    mb = 1024 * 1024
    cpu = math.ceil(limits["cpu_seconds"])
    wanted = [
        (resource.RLIMIT_CORE, 0, 0),
        (resource.RLIMIT_CPU, cpu, cpu + 1),  # SIGXCPU at the soft limit, SIGKILL one second later
        (resource.RLIMIT_AS, limits["memory_mb"] * mb, limits["memory_mb"] * mb),
        (resource.RLIMIT_FSIZE, limits["file_size_mb"] * mb, limits["file_size_mb"] * mb),
        (resource.RLIMIT_NOFILE, limits["open_files"], limits["open_files"]),
    ]
    if processes:
        wanted.append((resource.RLIMIT_NPROC, 0, 0))
    for which, soft, hard in wanted:
        _, ceiling = resource.getrlimit(which)
        if ceiling != resource.RLIM_INFINITY:  # an unprivileged child cannot raise a hard limit
            soft, hard = min(soft, ceiling), min(hard, ceiling)
        resource.setrlimit(which, (soft, hard))


def _close_all_but(keep: list[int]) -> None:
    low = 3
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 65536)


def _cap_texts(result: dict[str, Any], limit: int) -> None:
    """Cut every text of a runner's result at the source, before it crosses a pipe."""
    for key, value in result.items():
        if isinstance(value, str) and len(value) > limit:
            result[key] = value[:limit] + f"\n... [truncated: {len(value) - limit} more characters]"


def _child(
    *,
    keep: list[int],
    workdir: str,
    uid: int,
    runner: Any,
    request: dict[str, Any],
    prctl: Any,
    page: Any,
    result_fd: int | None,
    channel: runtime.Channel | None,
) -> None:
    """Runs in a forked child: isolate, limit, then run the runner and write its result (a
    judge or a single child, ``result_fd`` set) or become the partner's interpreter."""
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    _close_all_but(keep)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an oversized write raises OSError instead
    os.chdir(workdir)
    tempfile.tempdir = workdir  # the worker's cached choice (/tmp) is not writable here
    limits = request["limits"]
    _set_limits(limits, processes=result_fd is not None)
    if os.geteuid() == 0:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    if prctl is not None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # die with the worker (setuid cleared it)
        prctl(_PR_SET_DUMPABLE, 0)
    os.environ.clear()
    if result_fd is None:
        # A partner gets a fresh interpreter: this copy of the worker's memory may still hold
        # tests of earlier requests, and the progress page is the judge's alone.
        _exec_partner(channel)
    runtime._progress = page
    runtime._partner = channel
    out = CappedText(limits["max_output_chars"])
    sys.stdout = sys.stderr = out
    sys.stdin = open(os.devnull)  # noqa: SIM115 -- the child exits right after
    try:
        result = runner(request["payload"], limits)
    except BaseException as exc:  # a runner must not take the child down without a result
        result = {"status": "error", "error": runtime.short_traceback(exc, ["<sandbox>"])}
    sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    if not isinstance(result, dict):
        result = {"status": "error", "error": f"runner returned {type(result).__name__}"}
    result.setdefault("status", "ok")
    _cap_texts(result, limits["max_output_chars"])
    result["stdout"] = out.getvalue()
    result["truncated"] = bool(out.dropped)
    assert result_fd is not None  # a partner became its own interpreter above
    send(result_fd, result)


# The partner's interpreter: the worker's import path, then the runtime's partner loop.
_PARTNER_BOOT = (
    "import json, sys; sys.path.extend(p for p in json.loads(sys.argv[1]) if p not in sys.path); "
    "from deepcoder_core.sandbox.runtime import partner_main; "
    "partner_main(int(sys.argv[2]), int(sys.argv[3]))"
)


def _exec_partner(channel: Any) -> None:
    """Replace this forked copy of the worker with a new interpreter holding only the channel."""
    for fd in (channel.read_fd, channel.write_fd):
        os.set_inheritable(fd, True)
    paths = json.dumps([p for p in sys.path if p and os.path.isabs(p)])
    argv = [
        sys.executable,
        "-I",
        "-c",
        _PARTNER_BOOT,
        paths,
        str(channel.read_fd),
        str(channel.write_fd),
    ]
    os.execve(sys.executable, argv, {})


def _resolve(runner: str, cache: dict[str, Any]) -> Any:
    if runner not in cache:
        module_name, attr = runner.split(":")
        cache[runner] = getattr(importlib.import_module(module_name), attr)
    return cache[runner]


def _load_prctl() -> Any:
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def _scratch(uid: int) -> str:
    workdir = tempfile.mkdtemp(prefix="deepcoder-sandbox-")
    if os.geteuid() == 0:
        os.chown(workdir, uid, uid)
    return workdir


def _fork(**child: Any) -> int:
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            _child(**child)
        except BaseException:
            code = 70
        finally:
            os._exit(code)
    return pid


def _end(pid: int) -> int:
    """Kill a child if it still runs; its wait status."""
    done, status = os.waitpid(pid, os.WNOHANG)
    if not done:
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    return status


def _run_one(
    request: dict[str, Any], control: Reader, runners: dict, prctl: Any, page: Any
) -> dict | None:
    """Fork the child(ren) for ``request``; the response, or None when the parent went away."""
    start = time.monotonic()
    try:
        runner = _resolve(request["runner"], runners)
        partner = request.get("partner")  # resolved by the partner's own interpreter
    except Exception as exc:
        return {"status": "crashed", "error": f"cannot load runner: {exc}"}
    limits = request["limits"]
    max_bytes = max_message_bytes(limits["max_output_chars"])
    page[: runtime.HEADER.size] = runtime.HEADER.pack(0)
    workdirs, pids = [], []
    judge_channel = None
    common = {"request": request, "prctl": prctl, "page": page}
    if partner is not None:
        to_partner_r, to_partner_w = os.pipe()
        to_judge_r, to_judge_w = os.pipe()
        workdirs.append(_scratch(NOBODY))
        pids.append(
            _fork(
                keep=[to_partner_r, to_judge_w],
                workdir=workdirs[-1],
                uid=NOBODY,
                runner=None,
                result_fd=None,
                channel=runtime.Channel(to_partner_r, to_judge_w, max_bytes),
                **common,
            )
        )
        os.close(to_partner_r)
        os.close(to_judge_w)
        start_message = {
            "runner": request["partner"],
            "payload": request.get("partner_payload") or {},
            "limits": limits,
        }
        judge_channel = runtime.Channel(to_judge_r, to_partner_w, max_bytes)
        try:
            judge_channel.send(start_message)
        except (ProtocolError, OSError) as exc:  # too large, or the partner is gone already
            for fd in (to_judge_r, to_partner_w):
                os.close(fd)
            for pid in pids:
                _end(pid)
            for workdir in workdirs:
                shutil.rmtree(workdir, ignore_errors=True)
            return {
                "status": "crashed",
                "error": f"the partner could not be started: {exc}",
                "duration": time.monotonic() - start,
            }
    read_fd, write_fd = os.pipe()
    uid = JUDGE_UID if partner is not None else NOBODY
    workdirs.append(_scratch(uid))
    keep = [write_fd] + ([judge_channel.read_fd, judge_channel.write_fd] if judge_channel else [])
    pids.append(
        _fork(
            keep=keep,
            workdir=workdirs[-1],
            uid=uid,
            runner=runner,
            result_fd=write_fd,
            channel=judge_channel,
            **common,
        )
    )
    os.close(write_fd)
    if judge_channel is not None:
        os.close(judge_channel.read_fd)
        os.close(judge_channel.write_fd)
    deadline = start + request["timeout"]
    result_reader = Reader(read_fd, max_bytes)
    status, message, parent_gone, problem = None, None, False, None
    try:
        while True:
            message = result_reader.complete()
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
        if message is not None:
            message = check_child_result(message, limits["max_output_chars"])
    except ProtocolError as exc:
        status, message, problem = "crashed", None, str(exc)
    finally:
        os.close(read_fd)
        # The judge first: once its partner dies it would go on counting failed asserts.
        statuses = [_end(pid) for pid in reversed(pids)][::-1]
        for workdir in workdirs:
            shutil.rmtree(workdir, ignore_errors=True)
    if parent_gone:
        return None
    wait_status = statuses[-1]
    duration = time.monotonic() - start
    if message is not None and status is None:
        message["duration"] = duration
        return message
    progress = runtime.read_progress(page)
    extra: dict[str, Any] = {"duration": duration}
    if progress is not None:
        extra["progress"] = progress
    if problem is not None:
        return {"status": "crashed", "error": f"sandbox protocol error: {problem}", **extra}
    if status == "timeout":
        return {
            "status": "timeout",
            "error": f"timed out after {request['timeout']:g} s (wall clock)",
            **extra,
        }
    if os.WIFSIGNALED(wait_status):
        sig = os.WTERMSIG(wait_status)
        meaning = _SIGNAL_MEANING.get(
            signal.Signals(sig), f"killed by signal {signal.Signals(sig).name}"
        )
        if sig == signal.SIGXCPU:
            meaning += f" ({limits['cpu_seconds']} s)"
        return {"status": "killed", "error": meaning, **extra}
    code = os.WEXITSTATUS(wait_status) if os.WIFEXITED(wait_status) else -1
    return {
        "status": "crashed",
        "error": f"the code ended without a result (exited with code {code})",
        **extra,
    }


def serve() -> None:
    """Worker main loop: preload, enter isolation, announce, serve until end-of-file.

    argv: ``[_, preload (JSON), sys.path (JSON), level, host namespaces (JSON)]``.
    """
    # Protocol on private descriptors; 0/1 become /dev/null so nothing stray corrupts it.
    control_fd, reply_fd = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when workers end
    preload = json.loads(sys.argv[1]) if len(sys.argv) > 1 else []
    level = sys.argv[3] if len(sys.argv) > 3 else "rlimits"
    outside = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
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
    page = mmap.mmap(-1, runtime.PROGRESS_BYTES)  # anonymous and shared: children inherit it
    os.environ.clear()
    try:
        facts = isolation.enter_worker(level, outside)
    except Exception as exc:  # fail closed: say why, serve nothing
        send(reply_fd, {"ready": False, "error": f"{type(exc).__name__}: {exc}"})
        return
    os.dup2(devnull, 2)
    control = Reader(control_fd)
    send(reply_fd, {"ready": True, "pid": os.getpid(), **facts})
    while True:
        request = control.read(None)
        if request is None:
            return
        response = _run_one(request, control, runners, prctl, page)
        if response is None:
            return
        send(reply_fd, response)
