"""The normalized form every input format is parsed into, and the rules span lists follow.

A :class:`Segment` is one piece of a chat (a message's content, or a tool call's name or
arguments); a span list covers a segment's text with typed character ranges. The rules every
detector's output is brought to (:func:`normalize_spans`): sorted, non-overlapping, a marker
(``Thought:``, ``Action:``...) belongs to the span it opens, whitespace between two spans
belongs to the earlier one, neighbours of one type merge.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..protocols import Span, SpanType


@dataclass
class Segment:
    """A piece of a chat: one message's content, or one tool call's name or arguments.

    ``message`` groups segments into chat messages. ``kind`` is a span type fixed by the data
    format itself (a tool call is an action, a tool result an observation); ``parts`` are
    typed character ranges known from our own step structure, used by the ``structured``
    detector. ``prompt`` marks messages before the first assistant turn.
    """

    role: str  # system | user | assistant | tool | text
    text: str
    message: int = 0
    field: str = "content"  # content | tool_call.name | tool_call.arguments
    kind: SpanType | None = None
    parts: tuple[Span, ...] = ()
    prompt: bool = False


@dataclass
class Parsed:
    """One input record as segments plus the example metadata of the processed dataset."""

    segments: list[Segment]
    format: str
    meta: dict[str, Any] = field(default_factory=dict)


def fill_gaps(
    text: str, pieces: list[tuple[int, int, SpanType]], leading: SpanType
) -> tuple[Span, ...]:
    """Cover ``text`` with spans: located ranges at confidence 1; a gap takes the type of the
    range before it (``leading`` at the start), at confidence 0.5 unless it is whitespace."""
    spans: list[Span] = []
    cur = 0
    for begin, end, kind in sorted(pieces):
        begin = max(begin, cur)
        if end <= begin:
            continue
        if begin > cur:
            gap = text[cur:begin]
            conf = 1.0 if gap.isspace() else 0.5
            spans.append(Span(cur, begin, spans[-1].type if spans else leading, conf))
        spans.append(Span(begin, end, kind, 1.0))
        cur = end
    if cur < len(text):
        gap = text[cur:]
        conf = 1.0 if gap.isspace() else 0.5
        kind = spans[-1].type if spans else leading
        spans.append(Span(cur, len(text), kind, conf))
    return normalize_spans(text, spans)


def normalize_spans(text: str, spans: list[Span]) -> tuple[Span, ...]:
    """Sorted, non-overlapping spans; whitespace at the start of a span moves to the span
    before it, neighbours of one type merge (lowest confidence kept)."""
    if len(spans) == 1:  # the common case (a whole message of one type) needs no sorting
        span = spans[0]
        start, end = max(span.start, 0), min(span.end, len(text))
        if end <= start:
            return ()
        kind = span.type if type(span.type) is SpanType else SpanType(span.type)
        return (Span(start, end, kind, span.confidence),)
    out: list[Span] = []
    for span in sorted(spans, key=lambda s: (s.start, -s.end)):
        start = max(span.start, out[-1].end if out else 0)
        end = min(span.end, len(text))
        if end <= start:
            continue
        if out and out[-1].end == start and text[start].isspace():
            # leading whitespace goes to the span before (the blank line after a block)
            piece = text[start:end]
            lead = len(piece) - len(piece.lstrip())
            prev = out[-1]
            out[-1] = Span(prev.start, start + lead, prev.type, prev.confidence)
            start += lead
            if end <= start:
                continue
        if out and out[-1].end == start and out[-1].type == span.type:
            prev = out[-1]
            out[-1] = Span(prev.start, end, prev.type, min(prev.confidence, span.confidence))
            continue
        kind = span.type if type(span.type) is SpanType else SpanType(span.type)
        out.append(Span(start, end, kind, span.confidence))
    return tuple(out)


def detect_spans(detector: Any, segments: list[Segment]) -> list[tuple[Span, ...]]:
    """Spans per segment (ranges of each segment's text) from ``detector``.

    Detectors with ``detect_segments`` see every segment with its role; the others see the
    text of each non-prompt segment whose type the format does not already fix.
    """
    if hasattr(detector, "detect_segments"):
        found = detector.detect_segments(segments)
        if len(found) != len(segments):
            raise ValueError(
                f"span detector returned {len(found)} span lists for {len(segments)} segments"
            )
        # a segment's own parts come normalized (fill_gaps): passed on as they are
        return [
            spans if spans is seg.parts and spans else normalize_spans(seg.text, list(spans))
            for seg, spans in zip(segments, found, strict=False)
        ]
    out: list[tuple[Span, ...]] = []
    for seg in segments:
        if not seg.text:
            out.append(())
        elif seg.prompt:
            out.append((Span(0, len(seg.text), SpanType.OTHER, 1.0),))
        elif seg.kind is not None:
            out.append((Span(0, len(seg.text), seg.kind, 1.0),))
        else:
            out.append(normalize_spans(seg.text, list(detector.detect(seg.text))))
    return out
