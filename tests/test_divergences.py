"""Every loss plugin against a plain float64 formula, through the engine and by gradcheck."""

import math

import pytest
import torch

from deepcoder_core.distill.engine import distill_loss
from deepcoder_core.plugins import build
from deepcoder_core.protocols import TopK

torch.manual_seed(0)


def kl(p, q):
    return (p * (p.log() - q.log())).sum(-1)


def gkd_jsd(p, q, beta):
    """Generalized JSD, GKD (Agarwal et al., 2024) eq. 3, with the limits at the ends."""
    if beta == 0:
        return kl(p, q)
    if beta == 1:
        return kl(q, p)
    m = beta * p + (1 - beta) * q
    return beta * kl(p, m) + (1 - beta) * kl(q, m)


def alpha_div(p, q, a):
    return (1 - (p**a * q ** (1 - a)).sum(-1)) / (a * (1 - a))


def uld(p, q):
    return (p.sort(-1, descending=True).values - q.sort(-1, descending=True).values).abs().sum(-1)


def entropy_temperature(p, t_min=1.0, t_max=4.0):
    h = -(p * p.log()).sum(-1) / math.log(p.shape[-1])
    return t_min + (t_max - t_min) * (1 - h)


def adaptive_ref(p, q):
    t = entropy_temperature(p).unsqueeze(-1)
    pt, qt = (p.log() / t).softmax(-1), (q.log() / t).softmax(-1)
    return t.squeeze(-1) ** 2 * kl(pt, qt)


# name, options, reference(p teacher, q student) in float64
REFERENCES = [
    ("kl", {}, kl),
    ("reverse_kl", {}, lambda p, q: kl(q, p)),
    ("symmetric_kl", {}, lambda p, q: kl(p, q) + kl(q, p)),
    ("jsd", {"beta": 0.0}, lambda p, q: gkd_jsd(p, q, 0.0)),
    ("jsd", {"beta": 0.5}, lambda p, q: gkd_jsd(p, q, 0.5)),
    ("jsd", {"beta": 0.9}, lambda p, q: gkd_jsd(p, q, 0.9)),
    ("jsd", {"beta": 1.0}, lambda p, q: gkd_jsd(p, q, 1.0)),
    ("alpha", {"alpha": 0.5}, lambda p, q: alpha_div(p, q, 0.5)),
    ("alpha", {"alpha": -0.5}, lambda p, q: alpha_div(p, q, -0.5)),
    ("skew_kl", {"alpha": 0.1}, lambda p, q: kl(p, 0.1 * p + 0.9 * q)),
    ("skew_kl", {"alpha": 0.2, "reverse": True}, lambda p, q: kl(q, 0.2 * q + 0.8 * p)),
    ("tvd", {}, lambda p, q: 0.5 * (p - q).abs().sum(-1)),
    ("wasserstein", {}, uld),
    (
        "focal",
        {"gamma": 2.0},
        lambda p, q: (1 - q.gather(-1, p.argmax(-1, keepdim=True)).squeeze(-1)) ** 2 * kl(p, q),
    ),
    ("adaptive", {}, adaptive_ref),
]
IDS = [f"{name}{options or ''}" for name, options, _ in REFERENCES]


def logits_of(kind, n, v, generator):
    """Random logits: ordinary, peaked (one token near 1) or near-uniform rows."""
    x = torch.randn(n, v, generator=generator, dtype=torch.float64)
    if kind == "peaked":
        x[torch.arange(n), torch.randint(0, v, (n,), generator=generator)] += 12.0
    if kind == "flat":
        x = x * 1e-3
    return x


@pytest.mark.parametrize(("name", "options", "reference"), REFERENCES, ids=IDS)
@pytest.mark.parametrize("kind", ["random", "peaked", "flat"])
def test_divergence_matches_float64_reference(name, options, reference, kind):
    g = torch.Generator().manual_seed(hash((name, kind)) % 2**31)
    n, v = 13, 37
    s, t = logits_of(kind, n, v, g), logits_of(kind, n, v, g)
    loss = build("loss", name, **options)
    expected = reference(t.softmax(-1), s.softmax(-1))
    got = loss(s.log_softmax(-1), t.log_softmax(-1))
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)
    # through the engine (float32, chunked): mean over tokens with the default span weights
    span = torch.ones(n, dtype=torch.long)
    out = distill_loss(
        loss, span_type=span, student_logits=s.float(), teacher_logits=t.float(), chunk_size=4
    )
    torch.testing.assert_close(out.loss.double(), expected.mean(), rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_jsd_matches_gkd_generalized_jsd(beta):
    g = torch.Generator().manual_seed(1)
    s, t = logits_of("random", 8, 11, g), logits_of("peaked", 8, 11, g)
    got = build("loss", "jsd", beta=beta)(s.log_softmax(-1), t.log_softmax(-1))
    torch.testing.assert_close(got, gkd_jsd(t.softmax(-1), s.softmax(-1), beta))


def test_jsd_ends_are_the_limits_of_the_generalized_jsd():
    g = torch.Generator().manual_seed(2)
    p, q = logits_of("random", 4, 9, g).softmax(-1), logits_of("random", 4, 9, g).softmax(-1)
    eps = 1e-6
    torch.testing.assert_close(gkd_jsd(p, q, eps) / eps, kl(p, q), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gkd_jsd(p, q, 1 - eps) / eps, kl(q, p), rtol=1e-4, atol=1e-6)


def test_ce_is_cross_entropy_on_the_teacher_tokens():
    g = torch.Generator().manual_seed(3)
    s = logits_of("random", 10, 17, g)
    labels = torch.randint(0, 17, (10,), generator=g)
    labels[3] = -100
    out = distill_loss(
        build("loss", "ce"), span_type=torch.full((10,), 2), student_logits=s, labels=labels
    )
    expected = torch.nn.functional.cross_entropy(s, labels, ignore_index=-100)
    torch.testing.assert_close(out.loss, expected)
    assert out.metrics["tokens"] == 9


@pytest.mark.parametrize("name", ["kl", "reverse_kl", "jsd"])
def test_fast_path_matches_the_formula_on_peaked_rows(name):
    """The in-place kernels (dense supports) against autograd of the plain formula."""
    g = torch.Generator().manual_seed(4)
    s = logits_of("peaked", 6, 50, g) * 3
    t = logits_of("peaked", 6, 50, g) * 3
    loss = build("loss", name)
    z = s.clone().requires_grad_()
    values = loss(z.log_softmax(-1), t.log_softmax(-1))
    (grad,) = torch.autograd.grad(values.sum(), z)
    buffers = [torch.empty_like(s) for _ in range(getattr(loss, "scratch_buffers", 1))]
    fast, fast_grad = loss.value_and_grad(s.log_softmax(-1), t.log_softmax(-1), *buffers)
    torch.testing.assert_close(fast, values)
    torch.testing.assert_close(fast_grad, grad)


GRADCHECK = [(name, options) for name, options, _ in REFERENCES] + [("ce", {})]


@pytest.mark.parametrize(
    ("name", "options"), GRADCHECK, ids=[f"{n}{o or ''}" for n, o in GRADCHECK]
)
def test_gradcheck_dense_fused_and_sparse(name, options):
    g = torch.Generator().manual_seed(5)
    n, v, h = 5, 6, 3
    loss = build("loss", name, **options)
    # full Jacobians for kl and jsd; random projections (cheaper) for the others
    fast = name not in ("kl", "jsd")
    span = torch.tensor([1, 2, 4, 1, 2])
    hidden = torch.randn(n, h, dtype=torch.float64, generator=g, requires_grad=True)
    head = torch.randn(v, h, dtype=torch.float64, generator=g, requires_grad=True)
    teacher = torch.randn(n, v, dtype=torch.float64, generator=g)
    labels = torch.randint(0, v, (n,), generator=g)
    signal = {"labels": labels} if name == "ce" else {"teacher_logits": teacher}

    def dense(logits):
        return distill_loss(
            loss, span_type=span, student_logits=logits, chunk_size=2, temperature=1.5, **signal
        ).loss

    def fused(hid, w):
        return distill_loss(
            loss, span_type=span, student_logits=(hid, w), chunk_size=3, **signal
        ).loss

    assert torch.autograd.gradcheck(
        dense, ((hidden @ head.t()).detach().requires_grad_(),), fast_mode=fast
    )
    assert torch.autograd.gradcheck(fused, (hidden, head), fast_mode=fast)
    if name != "ce":
        logp = teacher.log_softmax(-1)
        values, ids = logp.topk(3, dim=-1)
        topk = TopK(ids, values, 1 - values.exp().sum(-1))

        def sparse(logits):
            return distill_loss(loss, span_type=span, student_logits=logits, teacher_topk=topk).loss

        assert torch.autograd.gradcheck(
            sparse, ((hidden @ head.t()).detach().requires_grad_(),), fast_mode=fast
        )
