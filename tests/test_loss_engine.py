"""The loss engine: fusion, chunking, sparse teachers, reduction, metrics, errors."""

import pytest
import torch

from deepcoder_core import plugins
from deepcoder_core.distill.engine import DistillError, check_signal, distill_loss
from deepcoder_core.distill.metrics import span_means, span_totals
from deepcoder_core.plugins import PluginManager, build
from deepcoder_core.protocols import TopK

N, V, H = 40, 300, 16


def make(seed=0, dtype=torch.float32, n=N, v=V, h=H):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g, dtype=dtype)
    head = torch.randn(v, h, generator=g, dtype=dtype) / h**0.5 * 3
    teacher = torch.randn(n, v, generator=g, dtype=dtype) * 2
    span = torch.randint(0, 5, (n,), generator=g)
    return hidden, head, teacher, span


def leaves(*tensors):
    return [t.detach().clone().requires_grad_() for t in tensors]


def reference(loss_fn, logits, teacher, weights, temperature=1.0):
    """sum_i w_i T^2 D_i / sum_i w_i, with plain autograd over full logits."""
    values = loss_fn(
        (logits / temperature).log_softmax(-1), (teacher / temperature).log_softmax(-1)
    )
    return (weights * values).sum() * temperature**2 / weights.sum()


DEFAULT = torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0])


@pytest.mark.parametrize("name", ["kl", "jsd", "tvd"])
def test_fused_equals_unfused_values_and_grads(name):
    loss_fn = build("loss", name)
    hidden, head, teacher, span = make()
    h1, w1 = leaves(hidden, head)
    fused = distill_loss(
        loss_fn, span_type=span, student_logits=(h1, w1), teacher_logits=teacher, chunk_size=7
    )
    fused.loss.backward()
    h2, w2 = leaves(hidden, head)
    plain = distill_loss(
        loss_fn, span_type=span, student_logits=h2 @ w2.t(), teacher_logits=teacher, chunk_size=64
    )
    plain.loss.backward()
    h3, w3 = leaves(hidden, head)
    ref = reference(loss_fn, h3 @ w3.t(), teacher, DEFAULT[span])
    ref.backward()
    for got in (fused.loss, plain.loss):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    for a, b in ((h1.grad, h3.grad), (w1.grad, w3.grad), (h2.grad, h3.grad), (w2.grad, w3.grad)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_fused_teacher_equals_dense_teacher():
    loss_fn = build("loss", "kl")
    hidden, head, _, span = make(1)
    t_hidden, t_head, _, _ = make(2)
    dense = distill_loss(
        loss_fn, span_type=span, student_logits=(hidden, head), teacher_logits=t_hidden @ t_head.t()
    )
    fused = distill_loss(
        loss_fn,
        span_type=span,
        student_logits=(hidden, head),
        teacher_logits=(t_hidden, t_head),
        chunk_size=9,
    )
    torch.testing.assert_close(fused.loss, dense.loss)


@pytest.mark.parametrize("name", ["kl", "reverse_kl", "jsd", "alpha", "tvd", "focal"])
def test_topk_with_k_equal_to_vocab_equals_dense(name):
    loss_fn = build("loss", name)
    hidden, head, teacher, span = make(3)
    logp = teacher.log_softmax(-1)
    values, ids = logp.sort(dim=-1, descending=True)
    topk = TopK(ids.int(), values, torch.zeros(N))
    h1, w1 = leaves(hidden, head)
    sparse = distill_loss(
        loss_fn, span_type=span, student_logits=(h1, w1), teacher_topk=topk, chunk_size=11
    )
    sparse.loss.backward()
    h2, w2 = leaves(hidden, head)
    dense = distill_loss(loss_fn, span_type=span, student_logits=(h2, w2), teacher_logits=teacher)
    dense.loss.backward()
    torch.testing.assert_close(sparse.loss, dense.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h1.grad, h2.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(w1.grad, w2.grad, rtol=1e-4, atol=1e-6)
    for span_name, metrics in dense.metrics["spans"].items():
        assert sparse.metrics["spans"][span_name] == pytest.approx(metrics, rel=1e-4)


def test_topk_maps_the_student_onto_k_ids_plus_a_tail_bucket():
    loss_fn = build("loss", "kl")
    g = torch.Generator().manual_seed(4)
    student = torch.randn(6, 20, generator=g, dtype=torch.float64)
    teacher = torch.randn(6, 20, generator=g, dtype=torch.float64)
    values, ids = teacher.log_softmax(-1).topk(4, dim=-1)
    tail = 1 - values.exp().sum(-1)
    out = distill_loss(
        loss_fn,
        span_type=torch.ones(6),
        student_logits=student,
        teacher_topk=TopK(ids, values, tail),
    )
    q = student.softmax(-1)
    q_top = q.gather(1, ids)
    q_sup = torch.cat([q_top, 1 - q_top.sum(-1, keepdim=True)], 1)
    p_sup = torch.cat([values.exp(), tail.unsqueeze(1)], 1)
    expected = (p_sup * (p_sup.log() - q_sup.log())).sum(-1).mean()
    torch.testing.assert_close(out.loss, expected)


def test_invariant_to_chunk_size_and_micro_batch_split():
    loss_fn = build("loss", "jsd")
    hidden, head, teacher, span = make(5)
    weights = torch.rand(N, generator=torch.Generator().manual_seed(0))
    results = []
    for chunk in (1, 6, 1000):
        h, w = leaves(hidden, head)
        out = distill_loss(
            loss_fn,
            span_type=span,
            student_logits=(h, w),
            teacher_logits=teacher,
            weights=weights,
            chunk_size=chunk,
        )
        out.loss.backward()
        results.append((out.loss.detach(), h.grad, w.grad))
    # micro-batches of 10 tokens, each normalised by the whole window's weight
    h, w = leaves(hidden, head)
    total = 0.0
    for part in torch.arange(N).split(10):
        out = distill_loss(
            loss_fn,
            span_type=span[part],
            student_logits=(h[part], w),
            teacher_logits=teacher[part],
            weights=weights[part],
            normalizer=weights.sum(),
        )
        out.loss.backward()
        total += out.loss.detach()
    results.append((total, h.grad, w.grad))
    for loss, h_grad, w_grad in results[1:]:
        torch.testing.assert_close(loss, results[0][0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(h_grad, results[0][1], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(w_grad, results[0][2], rtol=1e-5, atol=1e-6)


def test_temperature_scales_by_t_squared():
    loss_fn = build("loss", "kl")
    hidden, head, teacher, span = make(6)
    logits = (hidden @ head.t()).requires_grad_()
    out = distill_loss(
        loss_fn, span_type=span, student_logits=logits, teacher_logits=teacher, temperature=2.0
    )
    ref = reference(loss_fn, logits, teacher, DEFAULT[span], temperature=2.0)
    torch.testing.assert_close(out.loss, ref)
    (got,) = torch.autograd.grad(out.loss, logits)
    (want,) = torch.autograd.grad(ref, logits)
    torch.testing.assert_close(got, want)


def test_default_weights_skip_prompt_and_observation_and_mask_applies():
    loss_fn = build("loss", "kl")
    _, _, teacher, _ = make(7)
    student = torch.randn(N, V)
    span = torch.tensor([0, 1, 2, 3, 4] * (N // 5))
    mask = torch.ones(N)
    mask[:10] = 0
    out = distill_loss(
        loss_fn, span_type=span, student_logits=student, teacher_logits=teacher, mask=mask
    )
    keep = (DEFAULT[span] * mask).bool()
    values = loss_fn(student.log_softmax(-1), teacher.log_softmax(-1))
    torch.testing.assert_close(out.loss, values[keep].mean())
    assert out.metrics["tokens"] == int(keep.sum()) == 18
    assert set(out.metrics["spans"]) == {"reasoning", "action", "answer"}
    weights = torch.zeros(N)
    weights[span == 3] = 2.0  # a weighting that does train on observations
    out = distill_loss(
        loss_fn, span_type=span, student_logits=student, teacher_logits=teacher, weights=weights
    )
    torch.testing.assert_close(out.loss, values[span == 3].mean())


def test_metrics_per_span():
    loss_fn = build("loss", "kl")
    student = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0], [2.0, 0.0, 0.0]])
    teacher = torch.tensor([[3.0, 0.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, 3.0], [0.0, 3.0, 0.0]])
    span = torch.tensor([1, 1, 2, 4])
    out = distill_loss(loss_fn, span_type=span, student_logits=student, teacher_logits=teacher)
    values = loss_fn(student.log_softmax(-1), teacher.log_softmax(-1))
    spans = out.metrics["spans"]
    assert spans["reasoning"]["tokens"] == 2 and spans["action"]["tokens"] == 1
    assert spans["reasoning"]["top1_agreement"] == 0.5
    assert spans["action"]["top1_agreement"] == 1.0 and spans["answer"]["top1_agreement"] == 0.0
    assert spans["reasoning"]["divergence"] == pytest.approx(float(values[:2].mean()))
    assert out.metrics["top1_agreement"] == 0.5
    merged = span_means(span_totals(spans, span_totals(spans)))  # two micro-batches, summed
    assert merged["reasoning"]["tokens"] == 4 and merged["answer"]["top1_agreement"] == 0.0
    assert merged["action"]["divergence"] == pytest.approx(spans["action"]["divergence"])


def test_half_precision_inputs_accumulate_in_float32():
    loss_fn = build("loss", "kl")
    hidden, head, teacher, span = make(8)
    h16, w16 = leaves(hidden.bfloat16(), head.bfloat16())
    out = distill_loss(
        loss_fn,
        span_type=span,
        student_logits=(h16, w16),
        teacher_logits=teacher.bfloat16(),
        chunk_size=8,
    )
    out.loss.backward()
    assert out.loss.dtype == torch.float32 and h16.grad.dtype == torch.bfloat16
    assert w16.grad.dtype == torch.bfloat16
    ref = reference(
        loss_fn,
        h16.detach().float() @ w16.detach().float().t(),
        teacher.bfloat16().float(),
        DEFAULT[span],
    )
    torch.testing.assert_close(out.loss, ref, rtol=2e-2, atol=1e-2)


def test_generic_path_equals_fast_path():
    """A loss without value_and_grad goes through autograd; same numbers."""
    kl = build("loss", "kl")

    class Plain:
        signals = ("distribution",)

        def __call__(self, student_logp, teacher_logp):
            return kl(student_logp, teacher_logp)

    hidden, head, teacher, span = make(9)
    grads = []
    for loss_fn in (kl, Plain()):
        h, w = leaves(hidden, head)
        out = distill_loss(
            loss_fn, span_type=span, student_logits=(h, w), teacher_logits=teacher, temperature=1.7
        )
        out.loss.backward()
        grads.append((out.loss.detach(), h.grad, w.grad))
    for a, b in zip(grads[0], grads[1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("where", "name"),
    [
        ("student", "student_logits"),
        ("teacher", "teacher_logits"),
        ("hidden", "student_hidden"),
        ("topk", "teacher_topk.logprobs"),
    ],
)
def test_nonfinite_inputs_raise_naming_the_tensor(where, name):
    loss_fn = build("loss", "kl")
    hidden, head, teacher, span = make(10)
    span[:] = 1
    student = hidden @ head.t()
    values, ids = teacher.log_softmax(-1).topk(5, dim=-1)
    inputs = {"student_logits": student, "teacher_logits": teacher}
    if where == "student":
        student[7, 3] = float("nan")
    elif where == "teacher":
        teacher[7, 3] = float("inf")
    elif where == "hidden":
        hidden[7, 0] = float("nan")
        inputs["student_logits"] = (hidden, head)
    else:
        values[7, 2] = float("nan")
        del inputs["teacher_logits"]
        inputs["teacher_topk"] = TopK(ids, values, 1 - values.exp().sum(-1))
    with pytest.raises(
        DistillError, match=rf"{name} holds NaN/Inf at 1 token\(s\) \(first: position 7\)"
    ):
        distill_loss(loss_fn, span_type=span, **inputs)


def test_nonfinite_skip_drops_and_counts_tokens():
    loss_fn = build("loss", "kl")
    hidden, head, teacher, span = make(11)
    span[:] = 2
    teacher[[3, 30]] = float("nan")
    h, w = leaves(hidden, head)
    out = distill_loss(
        loss_fn,
        span_type=span,
        student_logits=(h, w),
        teacher_logits=teacher,
        nonfinite="skip",
        chunk_size=8,
    )
    out.loss.backward()
    keep = torch.ones(N, dtype=torch.bool)
    keep[[3, 30]] = False
    h2, w2 = leaves(hidden, head)
    ref = distill_loss(
        loss_fn, span_type=span[keep], student_logits=(h2[keep], w2), teacher_logits=teacher[keep]
    )
    ref.loss.backward()
    assert out.metrics["skipped_nonfinite"] == 2 and out.metrics["tokens"] == N - 2
    torch.testing.assert_close(out.loss, ref.loss)
    assert torch.isfinite(h.grad).all() and not h.grad[[3, 30]].any()
    torch.testing.assert_close(w.grad, w2.grad)


def test_labels_only_teacher_is_refused_before_any_work():
    calls = []

    class KLike:
        name = "my_kl"
        signals = ("distribution",)

        def __call__(self, student_logp, teacher_logp):
            calls.append(1)
            return (teacher_logp.exp() * (teacher_logp - student_logp)).sum(-1)

    with pytest.raises(
        DistillError, match=r"loss 'my_kl' needs the teacher signal 'distribution'.*labels.*: ce"
    ):
        distill_loss(
            KLike(),
            span_type=torch.ones(4),
            student_logits=torch.randn(4, 9),
            labels=torch.zeros(4, dtype=torch.long),
        )
    assert calls == []
    with pytest.raises(DistillError, match="losses that work from labels: ce"):
        check_signal(build("loss", "jsd"), {"labels"})
    check_signal(build("loss", "ce"), {"labels", "distribution"})


def test_shape_and_vocabulary_errors():
    kl = build("loss", "kl")
    with pytest.raises(
        DistillError,
        match=r"teacher vocabulary \(12\) differs from the student's \(9\).*wasserstein",
    ):
        distill_loss(
            kl,
            span_type=torch.ones(4),
            student_logits=torch.randn(4, 9),
            teacher_logits=torch.randn(4, 12),
        )
    with pytest.raises(DistillError, match="span_type must have one entry per position"):
        distill_loss(
            kl,
            span_type=torch.ones(3),
            student_logits=torch.randn(4, 9),
            teacher_logits=torch.randn(4, 9),
        )

    class Bad:
        signals = ("distribution",)

        def __call__(self, student_logp, teacher_logp):
            return (student_logp - teacher_logp).sum()

    with pytest.raises(
        DistillError, match=r"returned shape \(\); a loss returns one value per token"
    ):
        distill_loss(
            Bad(),
            span_type=torch.ones(4),
            student_logits=torch.randn(4, 9),
            teacher_logits=torch.randn(4, 9),
        )


def test_wasserstein_works_across_vocabularies():
    uld = build("loss", "wasserstein")
    g = torch.Generator().manual_seed(12)
    student = torch.randn(5, 9, generator=g, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(5, 14, generator=g, dtype=torch.float64)
    out = distill_loss(uld, span_type=torch.ones(5), student_logits=student, teacher_logits=teacher)
    p = teacher.softmax(-1).sort(-1, descending=True).values
    q = torch.nn.functional.pad(student.softmax(-1).sort(-1, descending=True).values, (0, 5))
    torch.testing.assert_close(out.loss, (p - q).abs().sum(-1).mean())
    out.loss.backward()
    assert torch.isfinite(student.grad).all()


HELLINGER_PLUGIN = '''
"""Squared Hellinger distance: H^2(p, q) = 1 - sum_v sqrt(p(v) q(v))  (Hellinger, 1909)."""

from deepcoder_core import hookimpl


class Hellinger:
    name = "hellinger"
    signals = ("distribution",)

    def __call__(self, student_logp, teacher_logp):
        return 1.0 - ((student_logp + teacher_logp) / 2).exp().sum(-1)


@hookimpl
def register_losses(register):
    register("hellinger", Hellinger)
'''


def test_a_third_party_divergence_gets_the_engine_for_free(tmp_path, monkeypatch):
    assert len(HELLINGER_PLUGIN.strip().splitlines()) < 40
    (tmp_path / "my_hellinger.py").write_text(HELLINGER_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    import my_hellinger

    manager = PluginManager()
    manager.add(my_hellinger, name="my-hellinger")
    plugins.reset_plugin_manager(manager)
    loss_fn = plugins.build("loss", "hellinger")
    hidden, head, teacher, span = make(13)
    h, w = leaves(hidden, head)
    weights = torch.rand(N, generator=torch.Generator().manual_seed(1))
    out = distill_loss(
        loss_fn,
        span_type=span,
        student_logits=(h, w),
        teacher_logits=teacher,
        weights=weights,
        temperature=2.0,
        chunk_size=6,
    )
    out.loss.backward()
    h2, w2 = leaves(hidden, head)
    p, q = (teacher / 2).softmax(-1), (h2 @ w2.t() / 2).softmax(-1)
    ref = (weights * (1 - (p * q).sqrt().sum(-1))).sum() * 4 / weights.sum()
    ref.backward()
    torch.testing.assert_close(out.loss, ref)
    torch.testing.assert_close(h.grad, h2.grad)
    assert out.metrics["tokens"] == N  # every weighted token, prompt included


def test_a_trainers_autocast_does_not_lower_the_engines_precision():
    loss_fn = build("loss", "kl")
    hidden, head, teacher, span = make(14)
    plain = distill_loss(
        loss_fn, span_type=span, student_logits=(hidden, head), teacher_logits=teacher
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = distill_loss(
            loss_fn, span_type=span, student_logits=(hidden, head), teacher_logits=teacher
        )
    assert cast.loss.dtype == torch.float32
    torch.testing.assert_close(cast.loss, plain.loss)
