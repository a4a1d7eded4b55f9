"""Which positions the teacher-logit cache stores: those a weighting can give a weight > 0.

Position ``i`` of an example predicts token ``i + 1``, so its span type is
``span_type[i + 1]``. The cache stores the positions whose span type is in its *stored
span set*, written in the manifest and covered by the fingerprint:

- ``teacher_logits.spans`` given: those span types;
- ``teacher_logits.spans: null`` (the default): the span types the configured weighting
  weights above 0 (:func:`weighted_spans`), which for every shipped weighting is reasoning,
  action and answer; prompt (0) and observation (3) positions only when a weighting's
  options give them a weight.

A weighting does not declare its zero-weight span types, so :func:`weighted_spans` asks it:
``weights()`` on one token of every span type crossed with every difficulty and verdict,
at full detector confidence, at training progress 0, 1/4, 1/2, 3/4 and 1. Training
repeats that check against the cache's span set, and the trainer refuses any batch where a
position outside the set gets a weight above 0, so a weighting that the probe misjudges
stops with an error instead of training on rows that were never stored.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from ..protocols import SPAN_NAMES, TrainingState

PROBE_PROGRESS = (0.0, 0.25, 0.5, 0.75, 1.0)
_BY_NAME = {name: number for number, name in SPAN_NAMES.items()}


def span_numbers(names: Iterable[str | int]) -> tuple[int, ...]:
    """Sorted span numbers of span names (``"reasoning"``) or numbers."""
    numbers = {_BY_NAME[n] if isinstance(n, str) else int(n) for n in names}
    return tuple(sorted(numbers))


def span_names(numbers: Iterable[int]) -> list[str]:
    return [SPAN_NAMES[n] for n in sorted(numbers)]


def weighted_spans(weighting: Any) -> tuple[int, ...]:
    """Span types to which ``weighting.weights`` gives a weight > 0 somewhere in the probe."""
    import torch

    spans, difficulties, verdicts = len(SPAN_NAMES), 3, 2
    grid = torch.cartesian_prod(
        torch.arange(spans), torch.arange(difficulties), torch.arange(verdicts)
    )
    batch = {
        "span_type": grid[:, 0],
        "span_confidence": torch.ones(grid.shape[0]),
        "difficulty": grid[:, 1],
        "success": grid[:, 2],
    }
    found: set[int] = set()
    total = 1000
    for progress in PROBE_PROGRESS:
        state = TrainingState(step=round(progress * total), total_steps=total)
        weights = torch.as_tensor(weighting.weights(batch, state)).reshape(-1)
        found.update(int(s) for s in batch["span_type"][weights > 0].unique())
    return tuple(sorted(found))


def stored_spans(config: Any, weighting: Any = None) -> tuple[int, ...]:
    """The span set a new cache stores under ``config`` (module docstring)."""
    chosen = config.teacher_logits.spans
    if chosen is not None:
        return span_numbers(chosen)
    if weighting is None:
        from ..plugins import build

        weighting = build("weighting", config.weighting.name, **config.weighting.options)
    return weighted_spans(weighting)


def stored_positions(span_type: Any, spans: tuple[int, ...]) -> np.ndarray:
    """Positions ``i`` (0..L-2) of one example whose predicted token ``i+1`` is in ``spans``."""
    predicted = np.asarray(span_type, dtype=np.int64)[1:]
    return np.flatnonzero(np.isin(predicted, np.asarray(spans, dtype=np.int64)))


def position_runs(positions: np.ndarray) -> np.ndarray:
    """``[r, 2]`` (start, length) runs of ascending positions: spans are contiguous, runs few."""
    if positions.size == 0:
        return np.zeros((0, 2), dtype=np.int32)
    breaks = np.flatnonzero(np.diff(positions) != 1) + 1
    starts = np.concatenate([[0], breaks])
    lengths = np.diff(np.concatenate([starts, [positions.size]]))
    return np.stack([positions[starts], lengths], axis=1).astype(np.int32)


def run_positions(runs: np.ndarray) -> np.ndarray:
    """The positions ``[n]`` that :func:`position_runs` encoded."""
    runs = runs.astype(np.int64)
    if runs.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    starts, lengths = runs[:, 0], runs[:, 1]
    first = np.cumsum(lengths) - lengths
    return np.repeat(starts - first, lengths) + np.arange(int(lengths.sum()))
