"""Packed teacher-logit entries: exact codes, the stated KL bound, and the sampled format's
unbiased loss and gradient through the loss engine."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deepcoder_core import models
from deepcoder_core.config.schema import SPAN_TYPE_NAMES
from deepcoder_core.distill import cache_format as cf
from deepcoder_core.distill.data import topk_for_student
from deepcoder_core.distill.engine import distill_loss
from deepcoder_core.distill.teacher_logits import sample_from_logits, topk_from_logits
from deepcoder_core.plugins import build
from deepcoder_core.protocols import SPAN_NAMES

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def kl_rows(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Per-row ``KL(p || q)`` of the k + 1 buckets (top-k probabilities and the tail)."""
    return (p * (np.log(np.maximum(p, 1e-300)) - np.log(q))).sum(-1)


def buckets(indices, logprobs, tail) -> np.ndarray:
    """``[n, k + 1]`` probabilities in ascending-id order, the tail last (order-free compare)."""
    order = np.argsort(indices, axis=1)
    p = np.exp(np.take_along_axis(np.asarray(logprobs, dtype=np.float64), order, axis=1))
    return np.concatenate([p, np.asarray(tail, dtype=np.float64)[:, None]], axis=1)


def test_exp_golomb_codes_round_trip_every_width():
    rng = np.random.default_rng(0)
    values = np.concatenate(
        [rng.integers(0, 4, 500), rng.integers(0, 2**20, 500), [0, 1, 2**40, 2**45 - 1]]
    )
    orders = np.concatenate([rng.integers(0, 12, values.size - 4), [0, 0, 0, 31]])
    prefix, suffix = cf.encode_codes(values, orders)
    assert np.array_equal(cf.decode_codes(prefix, suffix, orders, values.size), values)
    lengths = cf.code_lengths(values, orders).sum()
    assert prefix.size + suffix.size <= lengths // 8 + 2  # two streams, each padded to a byte
    with pytest.raises(ValueError, match="codes"):
        cf.decode_codes(prefix[: prefix.size // 2], suffix, orders, values.size)


def _distributions(rng, n, vocab, k):
    """Peaked, flat, power-law and near-one-hot rows: what a quantizer can get wrong."""
    scales = np.concatenate([np.full(n // 4, 0.1), np.full(n // 4, 3.0), np.full(n - n // 2, 8.0)])
    logits = rng.standard_normal((n, vocab)) * scales[:, None]
    logits[: n // 8] = -np.log(np.arange(1, vocab + 1))[None] * 1.1  # Zipf
    logits[n // 8 : n // 4, 0] += 40.0  # tail ~ e^-40: 1 - t would round to 1 in float32
    top = topk_from_logits(torch.as_tensor(logits), k)
    return tuple(t.numpy() for t in top)


@pytest.mark.parametrize("k", [1, 8, 64])
def test_stored_top_k_stays_within_the_stated_kl_bound(k):
    indices, logprobs, tail = _distributions(np.random.default_rng(k), 400, 3000, k)
    packed = cf.encode_topk(indices, logprobs, tail)
    ids, stored, stored_tail = cf.decode_topk(packed, k)
    assert np.array_equal(np.sort(ids, 1), np.sort(indices, 1))
    assert np.all(np.diff(stored, axis=1) <= 0)  # most likely first, as topk gives them
    kl = kl_rows(buckets(indices, logprobs, tail), buckets(ids, stored, stored_tail))
    assert kl.max() <= cf.kl_bound(k)
    assert np.all(np.isfinite(stored)) and np.all((stored_tail > 0) & (stored_tail < 1))


def test_a_real_teachers_top_64_packs_under_150_bytes_within_1e_3_nats():
    """SmolLM2 (the embedded teacher) on code: the distributions the cache really stores."""
    path = models.default_teacher_path()
    tokenizer = models.load_tokenizer(path)
    model = models.load_causal_lm(path)
    text = (
        "Thought: I should check the function on the example first.\n"
        "Action: python\nAction Input:\n```python\ndef two_sum(nums, target):\n"
        "    seen = {}\n    for i, n in enumerate(nums):\n        if target - n in seen:\n"
        "            return [seen[target - n], i]\n        seen[n] = i\n\n"
        "print(two_sum([2, 7, 11, 15], 9))\n```\nFinal Answer: the loop keeps a map of "
        "values already seen, so one pass over the list finds both indices in O(n) time."
    )
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    with torch.no_grad():
        logits = model(ids).logits[0, :-1]
    indices, logprobs, tail = (t.numpy() for t in topk_from_logits(logits, 64))
    packed = cf.encode_topk(indices, logprobs, tail)
    n = indices.shape[0]
    size = packed.header.nbytes + packed.extra.nbytes + packed.prefix.size + packed.suffix.size
    assert size / n <= 150
    stored = cf.decode_topk(packed, 64)
    kl = kl_rows(buckets(indices, logprobs, tail), buckets(*stored))
    assert kl.mean() <= 1e-3 and kl.max() <= cf.kl_bound(64)


def test_sampled_entries_round_trip_exactly():
    rng = np.random.default_rng(1)
    for draws in (1, 12, 300):  # past 255 draws the distinct-id count takes two bytes
        samples = rng.zipf(1.3, size=(50, draws)) % 40_000
        packed = cf.encode_sampled(samples)
        ids, counts = cf.decode_sampled(packed, draws)
        assert packed.extra.dtype == (np.uint8 if draws <= 255 else np.uint16)
        for row, got_ids, got_counts in zip(samples, ids, counts, strict=True):
            want = dict(zip(*np.unique(row, return_counts=True), strict=True))
            got = {int(i): int(c) for i, c in zip(got_ids, got_counts, strict=True) if i >= 0}
            assert got == want
            assert np.all(np.diff(got_ids[got_ids >= 0]) > 0)  # ascending, padding at the end
            assert np.all(got_ids[len(want) :] == -1)


def test_fillers_are_distinct_ids_with_no_mass():
    indices = torch.tensor([[5, -1, 1, -1], [0, 1, 2, 3], [-1, -1, -1, -1], [9, 0, 600, 7]])
    logprobs = torch.log(torch.tensor([[0.5, 0, 0.5, 0], [0.25] * 4, [0.0] * 4, [0.4] * 4]))
    tail = torch.tensor([0.0, 0.0, 0.0, 0.0])
    top = topk_for_student(indices, logprobs, tail, 512)
    for row in top.indices:
        assert len(set(row.tolist())) == 4 and int(row.min()) >= 0 and int(row.max()) < 512
    assert top.indices[0].tolist()[::2] == [5, 1] and torch.equal(top.indices[1], indices[1])
    assert torch.all(top.logprobs[indices < 0] == -1e4)
    assert float(top.tail_mass[3]) == pytest.approx(0.4)  # id 600 is past the student's 512


def _sampled_and_dense(temperature, draws, rounds, seed=0):
    """Dense and sampled KL (loss, grad) on the same student; the sampled one over ``rounds``
    independent draws, each row a copy of the same positions (one engine call)."""
    gen = torch.Generator().manual_seed(seed)
    n, vocab = 3, 30
    teacher = torch.randn(n, vocab, generator=gen, dtype=torch.float64) * 2
    student = torch.randn(n, vocab, generator=gen, dtype=torch.float64).requires_grad_(True)
    kl = build("loss", "kl")
    span = torch.ones(n, dtype=torch.long)
    dense = distill_loss(
        kl, span_type=span, student_logits=student, teacher_logits=teacher, temperature=temperature
    )
    (dense_grad,) = torch.autograd.grad(dense.loss, student)

    samples = sample_from_logits(teacher.repeat(rounds, 1), draws, temperature, gen)
    ids, counts = cf.decode_sampled(cf.encode_sampled(samples.numpy()), draws)  # as stored
    with np.errstate(divide="ignore"):
        logprobs = torch.from_numpy(np.log(counts / draws))
    top = topk_for_student(
        torch.from_numpy(ids).long(), logprobs, torch.zeros(ids.shape[0]), None, vocab=vocab
    )
    repeated = student.repeat(rounds, 1)
    sampled = distill_loss(
        kl,
        span_type=span.repeat(rounds),
        student_logits=repeated,
        teacher_topk=top,
        temperature=temperature,
        teacher_topk_tempered=True,
    )
    (sampled_grad,) = torch.autograd.grad(sampled.loss, student)
    p = torch.softmax(teacher / temperature, -1)
    q_hat = torch.from_numpy(counts / draws)
    return dense, dense_grad, sampled, sampled_grad, p, q_hat, ids, student


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_sampled_gradient_is_the_dense_gradient_in_expectation(temperature):
    """Mean over 4000 draws of K = 8 ids is within 5 standard errors of the dense gradient.

    The gradient of ``T^2 KL(p_T || softmax(z / T))`` in ``z`` is ``T (q_T - p_T)`` per
    position, divided by the n positions; with ``p~ = count / K`` in place of ``p_T`` its
    standard error over R draws is ``T sqrt(p (1 - p) / (K R)) / n`` per logit.
    """
    rounds, draws = 4000, 8
    dense, dense_grad, _, sampled_grad, p, *_ = _sampled_and_dense(temperature, draws, rounds)
    n = p.shape[0]
    stderr = temperature * torch.sqrt(p * (1 - p) / (draws * rounds)) / n
    assert torch.all((sampled_grad - dense_grad).abs() <= 5 * stderr + 1e-9)
    # the same test catches top-k's bias: k = 4 ids and one tail bucket
    *_, student = _sampled_and_dense(temperature, draws, 1)
    k_ids, k_logp, k_tail = topk_from_logits(torch.log(p), 4)
    topk = distill_loss(
        build("loss", "kl"),
        span_type=torch.ones(n, dtype=torch.long),
        student_logits=student,
        teacher_topk=topk_for_student(k_ids.long(), k_logp, k_tail, None),
        temperature=temperature,
        teacher_topk_tempered=True,  # p is the tempered distribution already
    )
    (topk_grad,) = torch.autograd.grad(topk.loss, student)
    assert not torch.all((topk_grad - dense_grad).abs() <= 5 * stderr + 1e-9)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_sampled_loss_is_the_dense_cross_entropy_in_expectation(temperature):
    """``loss - T^2 mean(sum p~ log p~)`` averages to ``dense - T^2 mean(sum p log p)``:
    the cross-entropy part ``-T^2 sum_j p_j log q_j`` is unbiased (5 standard errors); the
    teacher-entropy part is a constant of the teacher, not of the student."""
    rounds, draws = 4000, 8
    dense, _, sampled, _, p, q_hat, ids, student = _sampled_and_dense(temperature, draws, rounds)
    t2 = temperature**2
    with np.errstate(divide="ignore", invalid="ignore"):
        negentropy = np.nansum(q_hat.numpy() * np.log(q_hat.numpy()), axis=1)
    dense_ce = float(dense.loss) - t2 * float((p * p.log()).sum(-1).mean())
    sampled_ce = float(sampled.loss) - t2 * negentropy.mean()
    log_q = torch.log_softmax(student.detach() / temperature, -1).repeat(rounds, 1)
    safe = np.where(ids >= 0, ids, 0)
    per_row = -t2 * (q_hat * log_q.gather(1, torch.from_numpy(safe).long())).sum(-1)
    assert sampled_ce == pytest.approx(float(per_row.mean()), abs=1e-9)  # what the engine computed
    stderr = float(per_row.reshape(rounds, -1).mean(1).std()) / rounds**0.5
    assert abs(sampled_ce - dense_ce) <= 5 * stderr


def test_config_span_names_are_the_span_vocabulary():
    assert SPAN_TYPE_NAMES == tuple(SPAN_NAMES.values())
