"""Measuring span detectors: a chat as one flat text with its spans, and token agreement.

Used to export FireAct-style text, to score a detector against known spans
(:func:`detector_accuracy`), and for the structured-vs-regex agreement figure of
``deepcoder process`` (:func:`compare_tokens`).
"""

from __future__ import annotations

from typing import Any

from ..protocols import SPAN_NAMES, Span, SpanType
from .align import token_spans
from .segments import Segment, normalize_spans


def flatten(
    segments: list[Segment], spans: list[tuple[Span, ...]], *, system: bool = False
) -> tuple[str, tuple[Span, ...]]:
    """One plain text of the chat (messages joined by newlines) with its spans shifted into it.

    System messages are left out unless ``system``: their format instructions would otherwise
    read as a trajectory.
    """
    chunks: list[str] = []
    out: list[Span] = []
    pos = 0
    last = None
    for seg, seg_spans in zip(segments, spans, strict=False):
        if seg.role == "system" and not system:
            continue
        if seg.field != "content":
            continue
        if last is not None and seg.message != last and chunks:
            chunks.append("\n")
            out.append(Span(pos, pos + 1, out[-1].type if out else SpanType.OTHER, 1.0))
            pos += 1
        last = seg.message
        chunks.append(seg.text)
        out.extend(Span(pos + s.start, pos + s.end, s.type, s.confidence) for s in seg_spans)
        pos += len(seg.text)
    text = "".join(chunks)
    return text, normalize_spans(text, out)


def char_labels(text: str, spans: tuple[Span, ...] | list[Span]) -> Any:
    import numpy as np

    labels = np.zeros(len(text), np.int8)
    for span in spans:
        labels[span.start : span.end] = int(span.type)
    return labels


def compare_tokens(truth: Any, predicted: Any) -> dict[str, Any]:
    """Token accuracy and per-type precision/recall of ``predicted`` against ``truth`` (int arrays)."""
    import numpy as np

    truth = np.asarray(truth)
    predicted = np.asarray(predicted)
    total = int(truth.size)
    correct = int((truth == predicted).sum())
    per_type = {}
    for kind, name in SPAN_NAMES.items():
        t = truth == kind
        p = predicted == kind
        hit = int((t & p).sum())
        per_type[name] = {
            "tokens": int(t.sum()),
            "precision": round(hit / int(p.sum()), 4) if p.any() else None,
            "recall": round(hit / int(t.sum()), 4) if t.any() else None,
        }
    return {
        "tokens": total,
        "accuracy": round(correct / total, 4) if total else None,
        "per_type": per_type,
    }


def detector_accuracy(
    cases: list[tuple[str, tuple[Span, ...]]], tokenizer: Any, detector: Any
) -> dict[str, Any]:
    """Token accuracy of ``detector.detect`` on flat texts against their true spans.

    Each text is encoded with ``tokenizer`` (offsets), both span sets are mapped to tokens
    with the same rule as processing, and the results are compared token by token.
    """
    import numpy as np

    truth_all, predicted_all = [], []
    encodings = tokenizer.backend_tokenizer.encode_batch(
        [text for text, _ in cases], add_special_tokens=False
    )
    for (text, truth), enc in zip(cases, encodings, strict=True):
        offsets = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)
        none = np.zeros(len(offsets), bool)
        ones = np.ones(len(text), np.float32)
        truth_tokens, _ = token_spans(offsets, char_labels(text, truth), ones, none)
        predicted = normalize_spans(text, list(detector.detect(text)))
        predicted_tokens, _ = token_spans(offsets, char_labels(text, predicted), ones, none)
        truth_all.append(truth_tokens)
        predicted_all.append(predicted_tokens)
    result = compare_tokens(np.concatenate(truth_all), np.concatenate(predicted_all))
    result["texts"] = len(cases)
    return result
