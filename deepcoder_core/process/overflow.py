"""Fitting an example into ``processing.max_length``: as it is, truncated, dropped or split.

A chat is only ever cut at a step boundary, so every piece is whole steps after the whole
prompt: ``truncate`` keeps the longest prefix of steps that fits, ``split`` cuts the steps
into windows that each repeat the prompt, ``drop`` leaves the record out. A cut chat is
rendered and encoded again, since templates close the last turn differently.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from ..protocols import Span, SpanType
from ..spans import Located, Segment
from .columns import Example

OVERFLOW = ("truncate", "drop", "split")  # processing.overflow: what fit() does with a long example
# tokens the template adds around a cut conversation (end of turn, Qwen3's empty think block)
_MARGIN = 8

Encode = Callable[[list[Segment], list[tuple[Span, ...]]], Example]


def fit(
    example: Example,
    mode: str,
    limit: int,
    segments: list[Segment],
    spans: list[tuple[Span, ...]],
    offsets: Any,
    located: Located,
    encode: Encode,
) -> tuple[list[Example], str]:
    """The pieces of ``example`` within ``limit`` tokens and a note (``""``, ``truncated``,
    ``split``, or ``too_long`` when none is left); ``encode`` renders and encodes a cut chat."""
    if len(example.ids) <= limit:
        return [example], ""
    if mode == "drop":
        return [], "too_long"
    if mode == "split":
        return _split(segments, spans, offsets, located, limit, encode)
    return _truncate(segments, spans, offsets, located, limit, encode)


def _body_start(segments: list[Segment]) -> int:
    """The first segment after the prompt."""
    return next((i for i, seg in enumerate(segments) if not seg.prompt), len(segments))


def _boundaries(segments, spans, located: Located) -> list[tuple[int, int, int]]:
    """Step starts as (segment, offset, rendered position), in order: every assistant
    message after the first, and every span right after an observation inside one text
    (FireAct-style single-message trajectories)."""
    out = []
    body = _body_start(segments)
    for i in range(body, len(segments)):
        seg, where = segments[i], located.ranges[i]
        if where is None:
            continue
        if (
            i > body
            and seg.role == "assistant"
            and seg.field == "content"
            and seg.message != segments[i - 1].message
        ):
            out.append((i, 0, where[0]))
        if where[1] - where[0] == len(seg.text):
            seg_spans = spans[i]
            for a, b in zip(seg_spans, seg_spans[1:], strict=False):
                if a.type == SpanType.OBSERVATION and b.type != SpanType.OBSERVATION:
                    out.append((i, b.start, where[0] + b.start))
    return sorted(set(out), key=lambda t: t[2])


def _cut(segments, spans, start: tuple[int, int] | None, end: tuple[int, int] | None):
    """The prompt plus the body between two step boundaries (None: body start / end)."""
    body = _body_start(segments)
    i0, o0 = start if start else (body, 0)
    i1, o1 = end if end else (len(segments), 0)
    out_seg, out_spans = list(segments[:body]), list(spans[:body])
    for i in range(i0, min(i1 + 1, len(segments))):
        a = o0 if i == i0 else 0
        b = o1 if i == i1 else len(segments[i].text)
        if b <= a:
            continue
        seg = segments[i]
        out_seg.append(dataclasses.replace(seg, text=seg.text[a:b], parts=()))
        out_spans.append(
            tuple(
                Span(max(sp.start, a) - a, min(sp.end, b) - a, sp.type, sp.confidence)
                for sp in spans[i]
                if sp.end > a and sp.start < b
            )
        )
    return out_seg, out_spans


def _truncate(segments, spans, offsets, located, limit: int, encode: Encode):
    """Keep whole steps: the longest prefix ending before a step start that fits."""
    import numpy as np

    ends = offsets[:, 1]
    tries = 0
    for i, off, pos in reversed(_boundaries(segments, spans, located)):
        if int(np.searchsorted(ends, pos, side="right")) + _MARGIN > limit:
            continue
        example = encode(*_cut(segments, spans, None, (i, off)))
        if len(example.ids) <= limit:
            return [example], "truncated"
        tries += 1
        if tries >= 4:
            break
    return [], "too_long"


def _split(segments, spans, offsets, located, limit: int, encode: Encode):
    """Windows of whole steps, each after the prompt, each within ``limit``."""
    import numpy as np

    ends = offsets[:, 1]
    body = _body_start(segments)
    body_pos = located.ranges[body][0] if body < len(segments) and located.ranges[body] else 0
    prompt_tokens = int(np.searchsorted(ends, body_pos, side="right"))
    points: list[tuple[int, int] | None] = [None]
    marks = [body_pos]
    for i, off, pos in _boundaries(segments, spans, located):
        points.append((i, off))
        marks.append(pos)
    points.append(None)
    tokens = [int(np.searchsorted(ends, p, side="right")) for p in marks] + [len(ends)]
    pieces = []
    i = 0
    while i < len(points) - 1:
        j = len(points) - 1
        while j > i and prompt_tokens + tokens[j] - tokens[i] + _MARGIN > limit:
            j -= 1
        example = None
        while j > i:
            start = points[i] if i > 0 else None
            candidate = encode(*_cut(segments, spans, start, points[j]))
            if len(candidate.ids) <= limit:
                example = candidate
                break
            j -= 1
        if example is None:  # one step alone is too long: leave it out
            i += 1
            continue
        pieces.append(example)
        i = j
    return pieces, ("split" if len(pieces) > 1 else "truncated" if pieces else "too_long")
