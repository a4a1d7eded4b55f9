"""What a processing run reports: which rows are kept, why the others went, and the figures
of ``summary.json`` (span shares, bad input by reason, detector agreement)."""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

from ..io import BadLine
from ..protocols import SPAN_NAMES
from ..spans import compare_tokens
from .settings import other_detector

MAX_LISTED_BAD = 100  # bad lines listed in summary.json (all are counted)

_BAD_KINDS = (  # a phrase of the reason -> its key in bad_input.by_reason
    ("nested too deeply", "too_deep"),
    ("invalid JSON", "invalid_json"),
    ("invalid UTF-8", "invalid_utf8"),
    ("too large", "too_large"),
    ("truncated", "truncated_line"),
    ("expected a JSON object", "not_an_object"),
    ("empty steps", "empty_steps"),
    ("empty step", "empty_steps"),
    ("empty record", "empty_record"),
    ("has type", "wrong_type"),
    ("missing field", "missing_field"),
    ("unknown record format", "unknown_format"),
)


@dataclasses.dataclass
class Tally:
    """One pass over the worker rows: the rows to keep and what became of each record."""

    keep: list[int]  # row numbers of the examples kept
    drops: Counter[str]  # records dropped, by reason
    formats: Counter[str]  # readable records, by format
    notes: Counter[str]  # records truncated or split
    bad_lines: list[dict[str, Any]]  # {line, reason} of every unreadable record, in line order
    missing: int  # characters of kept examples the chat template did not render


def tally(table: Any, bad: list[BadLine], *, dedup: bool) -> Tally:
    """Drops, bad records and, with ``dedup``, duplicates (the same rendered text: the first
    record keeps it) from the private columns of ``table``."""
    result = Tally([], Counter(), Counter(), Counter(), [], 0)
    result.bad_lines = [{"line": b.line, "reason": b.reason} for b in bad]
    meta = table.select(
        ["_line", "_index", "_format", "_hash", "_drop", "_message", "_note", "_missing"]
    ).to_pydict()
    first_index_of: dict[str, int] = {}
    counted: set[int] = set()
    for row, (line, index, fmt_name, digest, drop, message, note, miss) in enumerate(
        zip(*(meta[k] for k in meta), strict=False)
    ):
        new_record = index not in counted
        counted.add(index)
        if new_record and fmt_name and drop != "bad_record":
            result.formats[fmt_name] += 1
        if drop:
            if drop == "bad_record":
                result.bad_lines.append({"line": line, "reason": message})
            else:
                result.drops[drop] += 1
            continue
        if dedup and digest:
            owner = first_index_of.setdefault(digest, index)
            if owner != index:
                if new_record:
                    result.drops["duplicate"] += 1
                continue
        if note and new_record:
            result.notes[note] += 1
        result.missing += miss
        result.keep.append(row)
    result.bad_lines.sort(key=lambda b: b["line"])
    return result


def bad_input(bad_lines: list[dict[str, Any]]) -> dict[str, Any]:
    """``bad_input`` of the summary: the count, the count by kind, the first lines."""
    kinds = Counter(_bad_kind(b["reason"]) for b in bad_lines)
    return {
        "count": len(bad_lines),
        "by_reason": dict(sorted(kinds.items())),
        "lines": bad_lines[:MAX_LISTED_BAD],
    }


def _bad_kind(reason: str) -> str:
    for key, kind in _BAD_KINDS:
        if key in reason:
            return kind
    return "bad_record"


def span_figures(table: Any) -> dict[str, Any]:
    """``tokens``, ``span_tokens`` and ``span_ratios`` of the kept examples."""
    import numpy as np

    span_type = table.column("span_type").combine_chunks().flatten().to_numpy()
    counts = np.bincount(span_type.astype(np.int64), minlength=len(SPAN_NAMES))
    total = int(counts.sum())
    return {
        "tokens": total,
        "span_tokens": {name: int(counts[t]) for t, name in SPAN_NAMES.items()},
        "span_ratios": {
            name: round(int(counts[t]) / total, 4) if total else 0.0
            for t, name in SPAN_NAMES.items()
        },
    }


def agreement(table: Any, detector: str, available: bool, sample: int) -> dict[str, Any] | None:
    """Token agreement of ``structured`` and ``regex`` on ``sample`` records spread evenly
    over the file."""
    import numpy as np

    if sample <= 0:
        return None
    other = other_detector(detector)
    if not available:
        return {"detectors": [detector, other], "error": f"span detector '{other}' not installed"}
    column = table.column("_agree_this").combine_chunks()
    this = column.flatten().to_numpy()
    that = table.column("_agree_other").combine_chunks().flatten().to_numpy()
    records = int(np.count_nonzero(np.diff(column.offsets.to_numpy())))
    result = compare_tokens(this, that)
    return {
        "detectors": [detector, other],
        "records": records,
        "tokens": result["tokens"],
        "agreement": result["accuracy"],
        # precision/recall of the other detector, taking this one as the reference
        "per_type": result["per_type"],
    }
