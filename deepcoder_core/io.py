"""File helpers every stage shares: atomic writes, durable JSONL appends, tolerant JSONL reads.

Stages write outputs either atomically (temp file + rename) or as append-only JSONL with
each line flushed and fsynced, so a killed run never leaves a half-written file behind.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

_BOM = b"\xef\xbb\xbf"  # what Windows editors put before the first line of a UTF-8 file
# how compressed files and archives start: they are not JSON until unpacked
_PACKED = (
    (re.compile(rb"\x1f\x8b"), "gzip-compressed: decompress it first, e.g. with gunzip"),
    (re.compile(rb"BZh[1-9]1AY&SY"), "bzip2-compressed: decompress it first, e.g. with bunzip2"),
    (re.compile(rb"\xfd7zXZ\x00"), "xz-compressed: decompress it first, e.g. with unxz"),
    (re.compile(rb"\x28\xb5\x2f\xfd"), "zstd-compressed: decompress it first, e.g. with unzstd"),
    (re.compile(rb"PK\x03\x04"), "like a zip archive: extract the file first, e.g. with unzip"),
)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` so readers see the old file or the new one, never a mix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: str | Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


class JsonlWriter:
    """Append-only JSONL: each record is one line, flushed and fsynced before ``write`` returns.

    On open, a truncated last line left by a killed writer is cut off, so appends start on
    a clean line and readers never see a broken record.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        repair_truncated_tail(self.path)
        self._handle = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._handle.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def repair_truncated_tail(path: Path) -> int:
    """Drop bytes after the last newline (a line cut by a kill). Returns bytes dropped."""
    if not path.exists() or path.stat().st_size == 0:
        return 0
    with open(path, "rb+") as handle:
        size = handle.seek(0, os.SEEK_END)
        block = min(size, 1 << 16)
        pos = size
        while pos > 0:
            start = max(0, pos - block)
            handle.seek(start)
            chunk = handle.read(pos - start)
            idx = chunk.rfind(b"\n")
            if idx != -1:
                keep = start + idx + 1
                break
            pos = start
        else:
            keep = 0
        if keep < size:
            handle.truncate(keep)
            handle.flush()
            os.fsync(handle.fileno())
        return size - keep


def packed_format(head: bytes) -> str | None:
    """What a file starting with ``head`` (its first 16 bytes) looks like when it is
    compressed or an archive, and what to do (``"gzip-compressed: decompress it first, e.g.
    with gunzip"``); None for anything else."""
    return next((what for magic, what in _PACKED if magic.match(head)), None)


@dataclass
class BadLine:
    """A JSONL line that could not be read, kept for reporting (file:line: reason)."""

    path: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


def jsonl_lines(
    path: str | Path, errors: list[BadLine] | None = None, max_line_bytes: int | None = None
) -> Iterator[tuple[int, bytes]]:
    """Yield ``(line_number, raw_line)`` of the non-blank lines, undecoded; a truncated last
    line and lines over ``max_line_bytes`` go to ``errors`` (or raise ValueError if None).

    A UTF-8 byte order mark before the first line is dropped. A line over ``max_line_bytes``
    is measured and skipped in bounded chunks, never held in memory whole.
    """
    path = Path(path)
    limit = -1 if max_line_bytes is None else max_line_bytes + 1
    with open(path, "rb") as handle:
        for number in itertools.count(1):
            raw = handle.readline(limit)
            if not raw:
                return
            if len(raw) == limit and not raw.endswith(b"\n"):
                size = len(raw) + _skip_line(handle)
                problem = f"record too large ({size:,} bytes > {max_line_bytes:,})"
            else:
                if number == 1 and raw.startswith(_BOM):
                    raw = raw[len(_BOM) :]
                if not raw.strip():
                    continue
                if not raw.endswith(b"\n"):
                    problem = "truncated last line (writer was interrupted)"
                elif max_line_bytes is not None and len(raw) > max_line_bytes:
                    problem = f"record too large ({len(raw):,} bytes > {max_line_bytes:,})"
                else:
                    yield number, raw
                    continue
            bad = BadLine(str(path), number, problem)
            if errors is None:
                raise ValueError(str(bad))
            errors.append(bad)


def _skip_line(handle: BinaryIO) -> int:
    """Read past the end of the current line, 1 MiB at a time; returns the bytes skipped."""
    skipped = 0
    while chunk := handle.readline(1 << 20):
        skipped += len(chunk)
        if chunk.endswith(b"\n"):
            break
    return skipped


def decode_record(raw: bytes) -> dict[str, Any]:
    """One JSONL line as a JSON object; ValueError saying what is wrong with it."""
    try:
        record = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"invalid UTF-8 at byte {exc.start}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON: {exc.msg} (column {exc.colno})") from None
    except RecursionError:  # the decoder recurses once per level: [[[[...]]]] exhausts the stack
        raise ValueError("JSON nested too deeply to decode") from None
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    return record


def read_jsonl(
    path: str | Path, errors: list[BadLine] | None = None, max_line_bytes: int | None = None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, record)``; bad lines go to ``errors`` (or raise ValueError if None).

    A final line without a newline (a writer killed mid-line) is reported as truncated.
    Invalid UTF-8, non-object JSON and lines over ``max_line_bytes`` are reported too.
    """
    for number, raw in jsonl_lines(path, errors, max_line_bytes):
        try:
            record = decode_record(raw)
        except ValueError as exc:
            bad = BadLine(str(path), number, str(exc))
            if errors is None:
                raise ValueError(str(bad)) from None
            errors.append(bad)
            continue
        yield number, record
