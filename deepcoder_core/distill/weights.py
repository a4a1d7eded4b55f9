"""Span lambdas: the per-span-type weights every weighting strategy starts from.

Loss is never taken on prompt (0) or observation (3) tokens unless a strategy's options
give those span types a weight: the teacher did not write them, the environment did.
"""

from __future__ import annotations

from collections.abc import Mapping

from deepcoder_core.protocols import SPAN_NAMES

DEFAULT_SPAN_WEIGHTS = {0: 0.0, 1: 1.0, 2: 1.0, 3: 0.0, 4: 1.0}


def span_lambdas(
    overrides: Mapping[str | int, float] | None = None,
    base: Mapping[int, float] = DEFAULT_SPAN_WEIGHTS,
    *,
    where: str = "lambdas",
) -> dict[int, float]:
    """``base`` updated with ``overrides`` keyed by span name ("reasoning") or number (1)."""
    lambdas = dict(base)
    by_name = {name: number for number, name in SPAN_NAMES.items()}
    for key, value in (overrides or {}).items():
        number = by_name.get(key) if isinstance(key, str) else key
        if isinstance(key, str) and key.isdigit():
            number = int(key)
        if number not in SPAN_NAMES:
            raise ValueError(
                f"{where}: unknown span type {key!r}; use one of {', '.join(by_name)} or 0-4"
            )
        if not isinstance(value, int | float) or value < 0:
            raise ValueError(f"{where}.{key}: weight must be a number >= 0, got {value!r}")
        lambdas[number] = float(value)
    return lambdas


def span_weights(span_type, lambdas: Mapping[int, float]):
    """Per-token weights ``[n]`` (float32) looked up from ``span_type`` ``[n]``."""
    import torch

    span_type = span_type.long()
    if span_type.numel() and (span_type.min() < 0 or span_type.max() >= len(SPAN_NAMES)):
        raise ValueError(f"span_type values must be 0-{len(SPAN_NAMES) - 1} (SpanType)")
    table = torch.tensor(
        [lambdas.get(i, 0.0) for i in range(len(SPAN_NAMES))], device=span_type.device
    )
    return table[span_type]
