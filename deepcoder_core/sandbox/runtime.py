"""What a runner may use inside a sandbox child: progress, the partner channel, tracebacks.

A runner is trusted code (``"module:function"``) called in the child as
``function(payload: dict, limits: dict) -> dict`` after isolation and limits are in force;
the untrusted code it runs shares its process, so nothing a runner computes there is a
verdict the host can trust, unless it comes from a *judge* child (see ``Channel``).
"""

from __future__ import annotations

import json
import os
import select
import time
import traceback
from collections.abc import Iterable
from typing import Any

from .protocol import HEADER, ProtocolError, decode_frame, max_message_bytes

_progress: Any = None  # in the child: the page shared with its worker (mmap, MAP_SHARED)
PROGRESS_BYTES = 1 << 16
_partner: Channel | None = None


def report_progress(data: dict[str, Any]) -> None:
    """From a runner: record partial results (JSON-able, small). If the child is then killed
    (timeout, limit) the last record comes back as ``data["progress"]``. Costs a memory write,
    no system call: the page is shared with the worker, which reads it after the child ends.
    A partner child has no page: only the judge can report."""
    if _progress is None:
        return
    body = json.dumps(data).encode()
    if len(body) <= PROGRESS_BYTES - HEADER.size:
        _progress[: HEADER.size] = HEADER.pack(0)  # torn while writing: reads as empty
        _progress[HEADER.size : HEADER.size + len(body)] = body
        _progress[: HEADER.size] = HEADER.pack(len(body))


def read_progress(page: Any) -> dict[str, Any] | None:
    (size,) = HEADER.unpack_from(page)
    if not 0 < size <= PROGRESS_BYTES - HEADER.size:
        return None
    try:
        data = json.loads(page[HEADER.size : HEADER.size + size])
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


class Channel:
    """Length-prefixed JSON frames between a judge child and its partner child.

    The two run the same request in separate processes under separate uids: the judge holds
    the result pipe to the worker, the partner (the code under test) only this channel, so
    whatever the partner sends is data the judge decodes, never code or a verdict.
    """

    def __init__(self, read_fd: int, write_fd: int, max_frame: int):
        self.read_fd, self.write_fd, self.max_frame = read_fd, write_fd, max_frame
        self.buf = bytearray()

    def send(self, message: Any) -> None:
        data = json.dumps(message, ensure_ascii=False, allow_nan=True).encode(
            "utf-8", "surrogatepass"
        )
        if len(data) > self.max_frame:
            raise ProtocolError(f"message of {len(data)} bytes exceeds {self.max_frame}")
        view = memoryview(HEADER.pack(len(data)) + data)
        while view:
            view = view[os.write(self.write_fd, view) :]

    def recv(self, deadline: float | None = None) -> Any:
        """The next frame; ProtocolError on end-of-file, a malformed frame or the deadline."""
        while True:
            if len(self.buf) >= HEADER.size:
                (size,) = HEADER.unpack_from(self.buf)
                if size > self.max_frame:
                    raise ProtocolError(f"message of {size} bytes exceeds {self.max_frame}")
                if len(self.buf) >= HEADER.size + size:
                    body = bytes(self.buf[HEADER.size : HEADER.size + size])
                    del self.buf[: HEADER.size + size]
                    return decode_frame(body)
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise ProtocolError("no answer before the deadline")
            ready, _, _ = select.select([self.read_fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(self.read_fd, 1 << 16)
            if not chunk:
                raise ProtocolError("the other side ended")
            self.buf += chunk


def partner() -> Channel:
    """The channel to the other child of a two-child request (judge or partner side)."""
    if _partner is None:
        raise RuntimeError("this request has no partner child")
    return _partner


def partner_main(read_fd: int, write_fd: int) -> None:
    """A partner child's interpreter: read its runner and payload from the worker, run it.

    Started by ``execve`` from the forked child, so it holds nothing of the worker's memory;
    its limits, uid, seccomp filter and namespaces carried over the exec.
    """
    import ctypes
    import importlib
    import resource
    import sys

    ctypes.CDLL(None).prctl(4, 0)  # PR_SET_DUMPABLE: exec made this process dumpable again
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))  # no process or thread, from here on
    global _partner
    _partner = Channel(read_fd, write_fd, 1 << 26)
    try:
        start = _partner.recv()
        _partner.max_frame = max_message_bytes(start["limits"]["max_output_chars"])
        module_name, attr = start["runner"].split(":")
        runner = getattr(importlib.import_module(module_name), attr)
    except Exception:
        os._exit(70)
    sys.stdout = sys.stderr = _Discard()
    try:
        runner(start["payload"], start["limits"])
    finally:
        os._exit(0)


class _Discard:
    """The partner's output: nobody reads it."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


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
