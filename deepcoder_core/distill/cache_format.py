"""Compact entries of the teacher-logit cache: bit-packed ids and probabilities, pure numpy.

**Top-k entry** of one position: the teacher's ``k`` most likely ids, their probabilities
``p_j`` and the tail ``t = 1 - sum_j p_j``.

- Ids are sorted ascending and coded as gaps ``g_0 = id_0``, ``g_j = id_j - id_{j-1} - 1``
  with an Exp-Golomb code of order ``r`` (Teuhola 1978: ``y = (g >> r) + 1`` written as
  ``floor(log2 y)`` zeros, the bits of ``y``, then the ``r`` low bits of ``g``), ``r``
  chosen per position to make that position's codes shortest. Frequent tokens have small
  ids in BPE vocabularies, so gaps are short: about 9.7 bits an id for SmolLM2's 49,152
  ids where a fixed-width field needs 16.
- Probabilities are quantized in the square-root domain relative to the position's largest,
  ``level_j = round(L sqrt(p_j / p_max))`` with ``L = LEVELS = 255``, kept in id order and
  Exp-Golomb coded with their own per-position order (about 4.7 bits a value). Decoding
  reads level 0 as ``1/4`` (never a zero probability), squares and normalises: that is the
  shape ``r = p / (1 - t)`` of the top-k part. The tail is two bytes, its angle
  ``theta = arcsin(sqrt t)`` in ``M = 65535`` steps of ``pi / 2M`` (``t = sin^2``,
  ``1 - t = cos^2``; the end steps read a quarter step inside, so neither ``t`` nor
  ``1 - t`` decodes to 0).

Error bound. With ``u = sqrt(r_j)`` and ``v`` its reconstruction (both in units where the
step is ``Delta = sqrt(r_max) / L <= 1 / L``), each bucket adds
``f = r ln(r / r~) - r + r~ = u^2 g(v / u)``, ``g(s) = s^2 - 1 - 2 ln s``, and the buckets'
sum bounds ``KL(r || r~ / sum r~)`` from above (``S - 1 >= ln S``). Rounding keeps
``|v - u| <= Delta / 2`` and, for levels >= 1, ``v / u`` in ``[2/3, 2]``, where
``g(s) <= 2.3 (s - 1)^2``; level 0 (``u < Delta / 2``, ``v = Delta / 4``) gives
``f <= 0.16 Delta^2``. By the chain rule,
``KL(p || p~) = KL(Bernoulli(t) || Bernoulli(t~)) + (1 - t) KL(r || r~)``, and the same
argument on the two tail buckets (steps ``pi / 2M`` in ``sqrt t = sin theta`` and
``sqrt(1 - t) = cos theta``) gives the first term ``<= 0.575 * 2 (pi / 2M)^2``. So for
every distribution

    KL(exact top-k + tail || stored) <= 0.575 k / L^2 + 1.6e-9       (5.7e-4 nats at k = 64)

(:func:`kl_bound`); the square-root domain is the one where this error does not depend on
the probabilities (``KL ~ 2 sum_j (sqrt p_j - sqrt p~_j)^2``, twice the squared Hellinger
distance), so small probabilities get coarse steps and large ones fine steps, and the
relative scale keeps a flat distribution (``p_max`` small) as exact as a peaked one.

**Sampled entry** (:func:`encode_sampled`): the distinct ids among ``K`` draws, ascending,
gap coded as above, and their counts (``count - 1``, Exp-Golomb), with one byte (two past
255 draws) holding how many distinct ids the position has. Exact: nothing is quantized.

Every code stream is split into a *prefix* stream (the unary part, ones marking each code's
end) and a *suffix* stream (the binary parts): one ``flatnonzero`` over the prefix bits
finds every code's length, so decoding is a handful of vectorised numpy operations per
example, no Python loop over codes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LEVELS = 255  # square-root quantizer steps: sqrt(p / p_max) in [0, 1] -> 0..LEVELS
ZERO_LEVEL = 0.25  # what level 0 decodes to, in steps
TAIL_STEPS = 65535  # the tail's angle arcsin(sqrt t) in [0, pi/2], two bytes
MAX_ID_ORDER = 31  # 5 bits of the per-position header byte
MAX_VALUE_ORDER = 7  # 3 bits


def kl_bound(k: int, levels: int = LEVELS) -> float:
    """Worst-case ``KL(exact || stored)`` of a top-k entry, nats (module docstring)."""
    return 0.575 * k / levels**2 + 0.575 * 2 * (np.pi / 2 / TAIL_STEPS) ** 2


# ---------------------------------------------------------------------------- Exp-Golomb


def _floor_log2(y: np.ndarray) -> np.ndarray:
    """``floor(log2 y)`` of integers ``y >= 1`` (exact below 2**53)."""
    return np.frexp(y.astype(np.float64))[1].astype(np.int64) - 1


def code_lengths(values: np.ndarray, order: int | np.ndarray) -> np.ndarray:
    """Bits of the Exp-Golomb code of order ``order`` of each value ``>= 0``."""
    order = np.asarray(order, dtype=np.int64)
    return 2 * _floor_log2((values >> order) + 1) + 1 + order


def best_orders(values: np.ndarray, rows: np.ndarray, n_rows: int, max_order: int) -> np.ndarray:
    """Per row, the Exp-Golomb order (0..max_order) giving that row's values the fewest bits."""
    if values.size == 0:
        return np.zeros(n_rows, dtype=np.int64)
    costs = np.stack(
        [
            np.bincount(rows, weights=code_lengths(values, r), minlength=n_rows)
            for r in range(max_order + 1)
        ],
        axis=1,
    )
    return costs.argmin(axis=1).astype(np.int64)


def encode_codes(values: np.ndarray, orders: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(prefix, suffix)`` byte streams of the Exp-Golomb codes of ``values`` (one order each)."""
    values = values.astype(np.int64)
    orders = orders.astype(np.int64)
    y = (values >> orders) + 1
    nb = _floor_log2(y) if values.size else values
    ends = np.cumsum(nb + 1) - 1
    prefix = np.zeros(int(ends[-1]) + 1 if values.size else 0, dtype=np.uint8)
    prefix[ends] = 1  # nb zeros, then a one: the unary part
    width = nb + orders
    suffix_value = ((y - (1 << nb)) << orders) | (values & ((1 << orders) - 1))
    total = int(width.sum())
    owner = np.repeat(np.arange(values.size), width)
    last_bit = np.cumsum(width) - 1  # index of each code's lowest bit in the stream
    shift = last_bit[owner] - np.arange(total)
    bits = ((suffix_value[owner] >> shift) & 1).astype(np.uint8)
    return np.packbits(prefix), np.packbits(bits)


def decode_codes(
    prefix: np.ndarray, suffix: np.ndarray, orders: np.ndarray, count: int
) -> np.ndarray:
    """The ``count`` values of :func:`encode_codes`' streams (``orders``: one per code)."""
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    ends = np.flatnonzero(np.unpackbits(prefix))[:count]
    if ends.size != count:
        raise ValueError(f"code stream holds {ends.size} codes, expected {count}")
    nb = np.diff(ends, prepend=-1).astype(np.int64) - 1
    orders = orders.astype(np.int64)
    width = nb + orders
    if int(width.max()) > 57:
        raise ValueError("code wider than 57 bits: corrupt stream")
    start = np.cumsum(width) - width
    padded = np.concatenate([suffix, np.zeros(8, dtype=np.uint8)])
    if (int(start[-1] + width[-1]) + 7) // 8 > suffix.size:
        raise ValueError("suffix stream is shorter than its codes")
    byte = start >> 3
    # every code's bits lie in the 8 bytes from its first byte (width <= 57, offset <= 7)
    window = padded[byte[:, None] + np.arange(8)].view(">u8").reshape(-1).astype(np.uint64)
    word = window << (start & 7).astype(np.uint64)
    # two shifts: a shift by 64 (a width-0 code) is undefined in one
    bits = (word >> (63 - width).astype(np.uint64)) >> np.uint64(1)
    bits = bits.astype(np.int64)
    y = (np.int64(1) << nb) + (bits >> orders)
    return ((y - 1) << orders) | (bits & ((np.int64(1) << orders) - 1))


# ---------------------------------------------------------------------------- entries


@dataclass
class Packed:
    """One example's entries: per-position fixed fields and the two code streams."""

    header: np.ndarray  # uint8 [n]: id order | value order << 5
    extra: np.ndarray  # top-k: tail angle uint16 [n]; sampled: distinct ids uint8/uint16 [n]
    prefix: np.ndarray  # uint8 bytes
    suffix: np.ndarray  # uint8 bytes


def _header(id_orders: np.ndarray, value_orders: np.ndarray) -> np.ndarray:
    return (id_orders | (value_orders << 5)).astype(np.uint8)


def _split_header(header: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    header = header.astype(np.int64)
    return header & 31, header >> 5


def quantize(p: np.ndarray) -> np.ndarray:
    """Levels ``round(LEVELS * sqrt(p / p_max))`` of each row of probabilities ``[n, k]``."""
    top = np.maximum(p.max(axis=1, keepdims=True), np.finfo(np.float64).tiny)
    return np.rint(np.sqrt(np.clip(p / top, 0.0, 1.0)) * LEVELS).astype(np.int64)


def dequantize(levels: np.ndarray) -> np.ndarray:
    """The top-k shape ``r~`` of levels ``[n, k]``: squared, level 0 read as a quarter step,
    each row normalised to 1."""
    steps = np.where(levels == 0, ZERO_LEVEL, levels.astype(np.float64))
    weights = steps**2
    return weights / weights.sum(axis=1, keepdims=True)


def quantize_tail(tail: np.ndarray) -> np.ndarray:
    """The tail's angle ``arcsin(sqrt t)`` in :data:`TAIL_STEPS` steps (uint16)."""
    angle = np.arcsin(np.sqrt(np.clip(tail.astype(np.float64), 0.0, 1.0)))
    return np.rint(angle / (np.pi / 2) * TAIL_STEPS).astype(np.uint16)


def dequantize_tail(code: np.ndarray) -> np.ndarray:
    """``t~ = sin^2`` of the angle; the end steps read a quarter step inside (0 < t~ < 1)."""
    steps = np.clip(code.astype(np.float64), ZERO_LEVEL, TAIL_STEPS - ZERO_LEVEL)
    return np.sin(steps / TAIL_STEPS * (np.pi / 2)) ** 2


def encode_topk(indices: np.ndarray, logprobs: np.ndarray, tail: np.ndarray) -> Packed:
    """Pack ``n`` top-k rows (ids ``[n, k]``, log-probabilities ``[n, k]``, tail ``[n]``)."""
    n, k = indices.shape
    order = np.argsort(indices, axis=1, kind="stable")
    ids = np.take_along_axis(indices.astype(np.int64), order, axis=1)
    p = np.exp(np.take_along_axis(logprobs.astype(np.float64), order, axis=1))
    gaps = np.diff(ids, axis=1, prepend=-1) - 1
    if n and int(gaps.min()) < 0:
        raise ValueError("top-k ids must be distinct and >= 0")
    levels = quantize(p)
    rows = np.repeat(np.arange(n), k)
    id_orders = best_orders(gaps.reshape(-1), rows, n, MAX_ID_ORDER)
    value_orders = best_orders(levels.reshape(-1), rows, n, MAX_VALUE_ORDER)
    values = np.concatenate([gaps.reshape(-1), levels.reshape(-1)])
    orders = np.concatenate([np.repeat(id_orders, k), np.repeat(value_orders, k)])
    prefix, suffix = encode_codes(values, orders)
    tail_code = quantize_tail(np.asarray(tail))
    return Packed(_header(id_orders, value_orders), tail_code, prefix, suffix)


def decode_topk(packed: Packed, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(ids int32 [n, k], logprobs float32 [n, k], tail float32 [n])``, most likely first."""
    n = packed.header.shape[0]
    id_orders, value_orders = _split_header(packed.header)
    orders = np.concatenate([np.repeat(id_orders, k), np.repeat(value_orders, k)])
    values = decode_codes(packed.prefix, packed.suffix, orders, 2 * n * k)
    ids = np.cumsum(values[: n * k].reshape(n, k) + 1, axis=1) - 1
    tail = dequantize_tail(packed.extra)
    p = dequantize(values[n * k :].reshape(n, k)) * (1.0 - tail)[:, None]
    rank = np.argsort(-p, axis=1, kind="stable")
    ids = np.take_along_axis(ids, rank, axis=1)
    logprobs = np.log(np.take_along_axis(p, rank, axis=1))
    return ids.astype(np.int32), logprobs.astype(np.float32), tail.astype(np.float32)


def sample_counts(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct ids of each row of draws ``[n, K]``: ``(ids, counts, rows)``, flat, ids ascending."""
    n, draws = samples.shape
    ordered = np.sort(samples.astype(np.int64), axis=1)
    new = np.ones_like(ordered, dtype=bool)
    new[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    starts = np.flatnonzero(new.reshape(-1))
    counts = np.diff(np.append(starts, n * draws))
    return ordered.reshape(-1)[starts], counts, starts // draws


def encode_sampled(samples: np.ndarray) -> Packed:
    """Pack ``n`` rows of ``K`` ids drawn with replacement (``[n, K]``)."""
    n, draws = samples.shape
    ids, counts, rows = sample_counts(samples)
    distinct = np.bincount(rows, minlength=n)
    first = np.cumsum(distinct) - distinct  # flat index of each row's first id
    previous = np.where(np.arange(ids.size) == first[rows], -1, np.roll(ids, 1))
    gaps = ids - previous - 1
    id_orders = best_orders(gaps, rows, n, MAX_ID_ORDER)
    value_orders = best_orders(counts - 1, rows, n, MAX_VALUE_ORDER)
    values = np.concatenate([gaps, counts - 1])
    orders = np.concatenate([id_orders[rows], value_orders[rows]])
    prefix, suffix = encode_codes(values, orders)
    dtype = np.uint8 if draws <= 255 else np.uint16
    return Packed(_header(id_orders, value_orders), distinct.astype(dtype), prefix, suffix)


def decode_sampled(packed: Packed, draws: int) -> tuple[np.ndarray, np.ndarray]:
    """``(ids int32 [n, w], counts int32 [n, w])``, ``w`` = most distinct ids of a row; padding
    has id -1 and count 0."""
    n = packed.header.shape[0]
    distinct = packed.extra.astype(np.int64)
    total = int(distinct.sum())
    rows = np.repeat(np.arange(n), distinct)
    id_orders, value_orders = _split_header(packed.header)
    orders = np.concatenate([id_orders[rows], value_orders[rows]])
    values = decode_codes(packed.prefix, packed.suffix, orders, 2 * total)
    first = np.cumsum(distinct) - distinct
    column = np.arange(total) - first[rows]
    width = int(distinct.max()) if n else 0
    # ids: per-row running sum of (gap + 1), restarted at each row
    steps = values[:total] + 1
    running = np.cumsum(steps)
    before = np.where(first > 0, running[np.maximum(first - 1, 0)], 0)
    ids = np.full((n, width), -1, dtype=np.int64)
    counts = np.zeros((n, width), dtype=np.int64)
    ids[rows, column] = running - before[rows] - 1
    counts[rows, column] = values[total:] + 1
    if n and not np.all(counts.sum(axis=1) == draws):
        raise ValueError(f"sampled entry counts do not sum to {draws} draws: corrupt stream")
    return ids.astype(np.int32), counts.astype(np.int32)
