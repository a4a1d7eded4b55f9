"""``deepcoder show example``'s text: one processed example, each run of a span type coloured."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import click

from ..protocols import SPAN_NAMES, SpanType
from .settings import ProcessError, fast_tokenizer

SPAN_STYLES: dict[SpanType, dict[str, Any]] = {
    SpanType.OTHER: {"dim": True},
    SpanType.REASONING: {"fg": "magenta"},
    SpanType.ACTION: {"fg": "yellow", "bold": True},
    SpanType.OBSERVATION: {"fg": "green"},
    SpanType.ANSWER: {"fg": "blue", "bold": True},
}


def show_example(
    directory: Path, index: int, *, tokenizer: str | None = None, markers: bool = False
) -> str:
    """One processed example as text, runs of one span type coloured (or tagged, ``markers``)."""
    from datasets import load_from_disk

    directory = Path(directory)
    try:
        dataset = load_from_disk(str(directory))
    except (FileNotFoundError, ValueError) as exc:
        raise ProcessError(f"{directory}: not a processed dataset ({exc})") from exc
    if not -len(dataset) <= index < len(dataset):
        raise ProcessError(f"{directory}: index {index} out of range (0..{len(dataset) - 1})")
    example = dataset[index]
    if tokenizer is None:
        summary_path = directory / "summary.json"
        if summary_path.exists():
            tokenizer = json.loads(summary_path.read_text(encoding="utf-8")).get("tokenizer")
    if tokenizer is None:
        raise ProcessError(f"{directory}: no summary.json naming the tokenizer; pass --tokenizer")
    tok = fast_tokenizer(tokenizer)
    ids, types = example["input_ids"], example["span_type"]
    counts = Counter(types)
    header = (
        f"example {index} of {len(dataset)}: trajectory {example['trajectory_id']} "
        f"problem {example['problem_id'] or '-'} ({len(ids)} tokens; "
        + ", ".join(f"{name} {counts.get(t, 0)}" for t, name in SPAN_NAMES.items())
        + ")"
    )
    legend = " ".join(click.style(f"[{SPAN_NAMES[t]}]", **SPAN_STYLES[t]) for t in SpanType)
    parts = [header, legend, ""]
    start = 0
    for end in range(1, len(ids) + 1):
        if end == len(ids) or types[end] != types[start]:
            text = tok.decode(ids[start:end], skip_special_tokens=False)
            kind = SpanType(types[start])
            if markers:
                text = f"⟦{SPAN_NAMES[kind]}⟧{text}"
            parts.append(click.style(text, **SPAN_STYLES[kind]))
            start = end
    return "\n".join(parts[:3]) + "".join(parts[3:])
