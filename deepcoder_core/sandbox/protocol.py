"""Messages between host, worker and children: length-prefixed JSON, checked on arrival.

Every frame is a 4-byte big-endian size and a UTF-8 JSON body, never pickle: the far side
may be hostile. A child's result is checked by its worker (``check_child_result``) and a
worker's response again by the host (``check_response``): fields, types and sizes; anything
else becomes a ``crashed`` result saying "sandbox protocol error", never an exception.
"""

from __future__ import annotations

import json
import os
import select
import struct
import time
from typing import Any

HEADER = struct.Struct(">I")
STATUSES = ("ok", "error", "timeout", "killed", "crashed")
CHILD_STATUSES = ("ok", "error")
_RESERVED = ("status", "stdout", "error", "duration", "truncated")
MAX_DEPTH = 32  # nesting allowed in runner data (checking sends flat records)


class ProtocolError(ValueError):
    """A frame or message that breaks the protocol (size, JSON, fields, types)."""


def max_message_bytes(max_output_chars: int) -> int:
    """Bound on one result: three texts of ``max_output_chars`` at 6 bytes a char (JSON ``\\u`` escapes)."""
    return 18 * max_output_chars + (1 << 16)


def encode(message: Any) -> bytes:
    data = json.dumps(message, ensure_ascii=False, default=repr).encode("utf-8", "surrogatepass")
    return HEADER.pack(len(data)) + data


def send(fd: int, message: Any) -> None:
    view = memoryview(encode(message))
    while view:
        view = view[os.write(fd, view) :]


def decode_frame(body: bytes) -> Any:
    try:
        return json.loads(body.decode("utf-8", "surrogatepass"))
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"malformed message ({type(exc).__name__})") from None


class Reader:
    """Reads frames from a pipe with a deadline, refusing any frame over ``max_bytes``."""

    def __init__(self, fd: int, max_bytes: int = 64 * 1024 * 1024):
        self.fd = fd
        self.max_bytes = max_bytes
        self.buf = bytearray()
        self.eof = False

    def complete(self) -> Any:
        """The next whole frame in the buffer, or None."""
        if len(self.buf) < HEADER.size:
            return None
        (size,) = HEADER.unpack_from(self.buf)
        if size > self.max_bytes:
            raise ProtocolError(f"message of {size} bytes exceeds {self.max_bytes}")
        if len(self.buf) < HEADER.size + size:
            return None
        body = bytes(self.buf[HEADER.size : HEADER.size + size])
        del self.buf[: HEADER.size + size]
        return decode_frame(body)

    def fill(self, timeout: float | None) -> bool:
        """Read what is available within ``timeout``; False when nothing came (timeout)."""
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return False
        chunk = os.read(self.fd, 1 << 16)
        if not chunk:
            self.eof = True
        self.buf += chunk
        if len(self.buf) > self.max_bytes + HEADER.size:
            raise ProtocolError("message too large")
        return True

    def read(self, deadline: float | None) -> Any:
        """The next frame; None at end-of-file; TimeoutError past ``deadline``."""
        while True:
            message = self.complete()
            if message is not None:
                return message
            if self.eof:
                return None
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError
            self.fill(remaining)


def _plain(value: Any, depth: int = 0) -> bool:
    """JSON data of bounded depth: what runner data may hold."""
    if value is None or type(value) in (bool, int, float, str):
        return True
    if depth >= MAX_DEPTH:
        return False
    if type(value) is list:
        return all(_plain(v, depth + 1) for v in value)
    if type(value) is dict:
        return all(type(k) is str and _plain(v, depth + 1) for k, v in value.items())
    return False


def _check_common(message: Any, statuses: tuple[str, ...], text_limit: int) -> dict[str, Any]:
    if type(message) is not dict:
        raise ProtocolError(f"expected an object, got {type(message).__name__}")
    status = message.get("status")
    if status not in statuses:
        raise ProtocolError(f"unknown status {status!r}")
    for key in ("stdout", "error"):
        value = message.get(key)
        if value is not None and type(value) is not str:
            raise ProtocolError(f"{key} must be text, got {type(value).__name__}")
        if value is not None and len(value) > text_limit:
            raise ProtocolError(f"{key} of {len(value)} characters exceeds {text_limit}")
    if "truncated" in message and type(message["truncated"]) is not bool:
        raise ProtocolError("truncated must be true or false")
    data = {k: v for k, v in message.items() if k not in _RESERVED}
    if not _plain(data):
        raise ProtocolError("runner data must be plain JSON values")
    return message


def check_child_result(message: Any, max_output_chars: int) -> dict[str, Any]:
    """What a child sent, checked by its worker (the child may have written it itself)."""
    message = _check_common(message, CHILD_STATUSES, max_output_chars + 200)
    if "duration" in message:
        raise ProtocolError("a child does not report its duration")
    return message


def check_response(message: Any, max_output_chars: int) -> dict[str, Any]:
    """What a worker sent, checked again by the host."""
    message = _check_common(message, STATUSES, max_output_chars + 200)
    duration = message.get("duration", 0.0)
    if type(duration) not in (int, float) or not 0 <= duration < 1e7:
        raise ProtocolError(f"duration must be a number of seconds, got {duration!r}")
    return message
