"""The per-span training metrics, named once for the engine, the trainer, weightings and logs.

For each span type (its name from :data:`~deepcoder_core.protocols.SPAN_NAMES`) present
among the tokens the loss was taken on:

    divergence       mean per-token divergence D(p || q) over the span's tokens
                     (no T^2 factor, no weights)
    top1_agreement   share of those tokens where the student's and the teacher's most
                     likely next token are the same
    tokens           how many tokens (weight > 0)

The same three names are used everywhere: the engine's ``metrics["spans"][span]``, what a
weighting's ``observe`` receives, ``TrainingState.span_divergence_ema`` (the running
``divergence``), ``metrics.jsonl`` keys ``<metric>/<span>`` (:func:`span_key`, e.g.
``divergence/reasoning``), and ``summary.json``'s ``span_divergence``.

Means are merged through their sums (:func:`span_totals`, :func:`span_means`), so
micro-batches and processes combine exactly, weighted by their token counts (the trainer
sums each optimizer step's window this way, and all-reduces the sums across processes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..protocols import SPAN_NAMES

SPAN_NUMBERS = {name: number for number, name in SPAN_NAMES.items()}


def span_key(metric: str, span: str) -> str:
    """The ``metrics.jsonl`` key of one span's metric: ``divergence/reasoning``."""
    return f"{metric}/{span}"


def span_totals(
    spans: Mapping[str, Mapping[str, float]], totals: list[list[float]] | None = None
) -> list[list[float]]:
    """Per span number, ``[divergence x tokens, top1_agreement x tokens, tokens]``, added to
    ``totals`` when given.

    Totals add up across micro-batches and processes; :func:`span_means` turns them back.
    """
    totals = [[0.0, 0.0, 0.0] for _ in SPAN_NAMES] if totals is None else totals
    for name, values in spans.items():
        tokens = float(values["tokens"])
        row = totals[SPAN_NUMBERS[name]]
        row[0] += float(values["divergence"]) * tokens
        row[1] += float(values["top1_agreement"]) * tokens
        row[2] += tokens
    return totals


def span_means(totals: Sequence[Sequence[float]]) -> dict[str, dict[str, Any]]:
    """``{span name: {divergence, top1_agreement, tokens}}`` for the spans with tokens."""
    spans = {}
    for number, name in SPAN_NAMES.items():
        divergence, agreement, tokens = (float(x) for x in totals[number])
        if tokens > 0:
            spans[name] = {
                "divergence": divergence / tokens,
                "top1_agreement": agreement / tokens,
                "tokens": int(round(tokens)),
            }
    return spans
