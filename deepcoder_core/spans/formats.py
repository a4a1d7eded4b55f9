"""Which format a record is in, and its parser: one record in, :class:`Parsed` out.

Formats (detected per record from its keys, or forced with ``--format``): ``deepcoder``
(ours, :mod:`.trajectory`), ``openai``, ``fireact``, ``sharegpt`` and ``text``
(:mod:`.chat_formats`). Messages before the first assistant message are the prompt.
"""

from __future__ import annotations

from typing import Any

from ..errors import RecordError
from .chat_formats import parse_fireact, parse_openai, parse_sharegpt, parse_text
from .segments import Parsed, Segment
from .trajectory import parse_deepcoder

_PARSERS = {
    "deepcoder": parse_deepcoder,
    "openai": parse_openai,
    "fireact": parse_fireact,
    "sharegpt": parse_sharegpt,
    "text": parse_text,
}
FORMATS = tuple(_PARSERS)


def detect_format(record: dict[str, Any]) -> str:
    """The format of one record, from its keys (the parser then checks their types);
    RecordError when none fits."""
    if "steps" in record and ("problem_id" in record or "schema" in record):
        return "deepcoder"
    if record.get("conversations") is not None:
        return "sharegpt"
    if record.get("messages") is not None:
        return "openai"
    if "instruction" in record and "output" in record:
        return "fireact"
    if record.get("text") is not None:
        return "text"
    keys = ", ".join(sorted(record)[:8]) or "none"
    raise RecordError(
        f"unknown record format (keys: {keys}); expected steps (deepcoder), messages (openai), "
        "conversations (sharegpt), instruction/output (fireact) or text"
    )


def parse_record(record: dict[str, Any], fmt: str = "auto") -> Parsed:
    """Segments and metadata of one record in ``fmt`` (``auto``: detected)."""
    if fmt == "auto":
        fmt = detect_format(record)
    parser = _PARSERS.get(fmt)
    if parser is None:
        raise RecordError(f"unknown format {fmt!r}; formats: auto, {', '.join(FORMATS)}")
    segments, meta = parser(record)
    _mark_prompt(segments)
    if not any(seg.text for seg in segments if not seg.prompt):
        raise RecordError("empty record: no assistant text after the prompt")
    return Parsed(segments, fmt, meta)


def _mark_prompt(segments: list[Segment]) -> None:
    """Messages before the first assistant message are the prompt (type 0)."""
    for seg in segments:
        if seg.role in ("assistant", "text"):
            return
        seg.prompt = True
