"""Rendered text -> a span type per character -> a span type per token.

:func:`locate` finds each segment (or, when the template changed its text, each span) in the
rendered chat and writes its spans into per-character arrays; tags a template adds around
model text take the type they wrap. :func:`token_spans` then gives each token the label of
its last character, through the fast tokenizer's offset mapping.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..protocols import Span, SpanType
from .segments import Segment

# Tags a model itself emits around reasoning, tool calls and (as the template shows them)
# tool results; the chat template may insert them around text, so they take the span type.
TAG_TYPES = (
    ("<think>", "</think>", SpanType.REASONING),
    ("<tool_call>", "</tool_call>", SpanType.ACTION),
    ("<tool_response>", "</tool_response>", SpanType.OBSERVATION),
)


@dataclass
class Located:
    """Where the segments landed in the rendered text, and what the template left out."""

    ranges: list[tuple[int, int] | None]  # rendered [start, end) of each segment
    prompt_end: int  # rendered position after the prompt (types below are forced to 0)
    missing_chars: int  # segment characters the template did not render


def locate(
    rendered: str,
    segments: list[Segment],
    spans: list[tuple[Span, ...]],
    labels: Any,
    confidence: Any,
) -> Located:
    """Find each segment in ``rendered`` (in order) and write its spans into ``labels``/``confidence``.

    A segment is looked up whole first; when the template changed it (Qwen3 drops the
    ``<think>`` block of earlier turns, templates strip whitespace) each span is looked up
    on its own, stripped, and spans the template left out are counted as missing.
    """
    ranges: list[tuple[int, int] | None] = []
    cursor = 0
    prompt_end = 0
    missing = 0
    for seg, seg_spans in zip(segments, spans, strict=False):
        text = seg.text
        if not text:
            ranges.append(None)
            continue
        pos = rendered.find(text, cursor)
        if pos != -1:
            for span in seg_spans:
                labels[pos + span.start : pos + span.end] = int(span.type)
                confidence[pos + span.start : pos + span.end] = span.confidence
            ranges.append((pos, pos + len(text)))
            cursor = pos + len(text)
        else:
            first: int | None = None
            last: int | None = None
            for span in seg_spans:
                piece = text[span.start : span.end]
                stripped = piece.strip()
                if not stripped:
                    continue
                at = rendered.find(stripped, cursor)
                if at == -1 and "</think>" in stripped:
                    # templates that drop earlier turns' thinking keep what follows </think>
                    stripped = stripped.rsplit("</think>", 1)[1].strip()
                    at = rendered.find(stripped, cursor) if stripped else -1
                if at == -1:
                    missing += len(piece)
                    continue
                missing += len(piece.strip()) - len(stripped)
                end = at + len(stripped)
                tail = piece[len(piece.rstrip()) :]
                if tail and rendered.startswith(tail, end):
                    end += len(tail)  # the whitespace after the piece came along
                labels[at:end] = int(span.type)
                confidence[at:end] = span.confidence
                first = at if first is None else first
                last = cursor = end
            ranges.append((first, last) if first is not None and last is not None else None)
        if seg.prompt and ranges[-1] is not None:
            prompt_end = ranges[-1][1]
    # Tags the template added around model text take the type of what they wrap.
    for open_tag, close_tag, kind in TAG_TYPES:
        start = rendered.find(open_tag, prompt_end)
        while start != -1:
            end = rendered.find(close_tag, start)
            end = len(rendered) if end == -1 else end + len(close_tag)
            while end < len(rendered) and rendered[end] in "\n " and labels[end] == 0:
                end += 1  # the blank line a template puts after the tag goes with it
            window = labels[start:end]
            window[window == 0] = int(kind)
            start = rendered.find(open_tag, end)
    return Located(ranges, prompt_end, missing)


def token_spans(offsets: Any, labels: Any, confidence: Any, special: Any) -> tuple[Any, Any]:
    """Per-token span type and confidence from per-character arrays.

    A token takes the label of its last character (a leading space belongs to the word it
    starts); special tokens and tokens without characters are type 0, confidence 1.
    """
    import numpy as np

    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    ends = offsets[:, 1]
    if len(labels) == 0:
        return np.zeros(len(ends), np.int8), np.ones(len(ends), np.float32)
    real = (ends > offsets[:, 0]) & ~special
    # a real token ends at 1..len(labels); the others may point anywhere, np.where drops them
    index = np.minimum(ends - 1, len(labels) - 1)
    types = np.where(real, labels[index], 0).astype(np.int8, copy=False)
    conf = np.where(real, confidence[index], 1.0).astype(np.float32, copy=False)
    return types, conf
