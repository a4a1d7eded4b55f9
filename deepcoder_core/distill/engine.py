"""The SAD loss engine: one call turns a per-token divergence into a weighted, chunked loss.

    loss = sum_i c_i * T^2 * D(p_i^T || q_i^T) / normalizer,    c_i = mask_i * w_i

where ``D`` is a loss plugin's per-token divergence between the teacher's (p) and the
student's (q) next-token distributions at temperature T (the T^2 factor keeps gradient
magnitudes independent of T, Hinton et al., 2015), ``w`` comes from a weighting strategy and
``normalizer`` is the weighted token count of the whole gradient-accumulation window, so a
batch split into micro-batches gives the same gradient as the batch at once.

Inputs are flattened, already aligned positions ``[N, ...]`` (position i predicts token i+1).
Student: logits ``[N, V]`` or, fused, hidden states ``[N, H]`` and the LM-head weight
``[V, H]``. Teacher: dense logits, fused hidden states and head, sparse top-k
(:class:`~deepcoder_core.protocols.TopK`), or labels. Only tokens with c_i > 0 are
computed, ``chunk_size`` at a time; in the fused path logits exist for one chunk only, and
the gradients (student hidden and head) are formed in the same pass, as in Liger-Kernel's
fused linear losses (Hsu et al., 2024), so memory is O(chunk x V) forward and backward.

Sparse teachers: the student's distribution is mapped onto the teacher's k ids plus one tail
bucket holding the remaining mass, so any divergence applies unchanged and k = V equals the
dense result. Labels are the k = 1 case with probability 1. The student is never renormalised
over the k ids: its mass outside them stays in its tail bucket, so with a teacher tail of 0
(a sampled teacher, ``p~ = count / K``) forward KL's gradient at an id m is
``q_m - p~_m`` everywhere, ``q_m`` off the sampled ids -- the dense gradient with ``p~`` for
``p``, unbiased when ``E[p~] = p`` (Anshumann et al., ACL 2025, "Sparse Logit Sampling").
A sparse teacher is tempered as one more softmax over its k ids and tail
(``teacher_topk_tempered=True``: it already is the distribution at T, as sampled rows drawn
from ``softmax(z / T)`` are).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..protocols import SPAN_NAMES, TopK
from .divergences import TAIL_FLOOR, log_softmax_
from .errors import DistillError
from .metrics import span_means
from .signals import check_signal, loss_name
from .weights import DEFAULT_SPAN_WEIGHTS, span_weights


@dataclass
class DistillOutput:
    """The reduced loss (a scalar tensor with a graph to the student) and per-span metrics.

    ``metrics``: ``loss``, ``divergence`` (mean per-token divergence, without the T^2 factor),
    ``top1_agreement``, ``tokens`` (tokens the loss was taken on), ``weight`` (their summed
    weight), ``normalizer``, ``skipped_nonfinite``, and ``spans``: span name ->
    ``{divergence, top1_agreement, tokens}`` for each span type present (the vocabulary of
    :mod:`deepcoder_core.distill.metrics`, which also combines several calls).
    """

    loss: Any
    metrics: dict[str, Any] = field(default_factory=dict)


def distill_loss(
    loss_fn: Any,
    *,
    span_type: Any,
    student_logits: Any = None,
    teacher_logits: Any = None,
    teacher_topk: TopK | None = None,
    labels: Any = None,
    weights: Any = None,
    mask: Any = None,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    normalizer: float | Any | None = None,
    nonfinite: str = "raise",
    teacher_topk_tempered: bool = False,
) -> DistillOutput:
    """Weighted, chunked distillation loss over ``N`` aligned positions (see the module doc).

    :param loss_fn: a :class:`~deepcoder_core.protocols.Loss` (built from a loss plugin).
    :param span_type: ``[N]`` span types (SpanType values), for default weights and metrics.
    :param student_logits: ``[N, V]`` logits, or ``(hidden [N, H], lm_head_weight [V, H])``.
    :param teacher_logits: ``[N, V]`` logits, or ``(hidden [N, H'], lm_head_weight [V, H'])``.
    :param teacher_topk: sparse teacher distribution (indices, log-probabilities, tail mass).
    :param labels: ``[N]`` teacher token ids (-100 = ignore) for losses with the labels signal.
    :param weights: ``[N]`` per-token weights; None = 1 on reasoning/action/answer, 0 elsewhere.
    :param mask: ``[N]`` 1 where the position counts (padding 0).
    :param temperature: softens both distributions; the loss is scaled by T^2.
    :param chunk_size: tokens per chunk; memory is O(chunk_size x V).
    :param normalizer: weighted token count of the whole accumulation window (None: this call's).
    :param nonfinite: ``"raise"`` (an error naming the tensor) or ``"skip"`` (drop and count).
    :param teacher_topk_tempered: ``teacher_topk`` is already at ``temperature`` (not re-tempered).
    """
    run = _Run(
        loss_fn,
        span_type=span_type,
        student=student_logits,
        teacher_logits=teacher_logits,
        teacher_topk=teacher_topk,
        labels=labels,
        weights=weights,
        mask=mask,
        temperature=temperature,
        chunk_size=chunk_size,
        normalizer=normalizer,
        nonfinite=nonfinite,
        topk_tempered=teacher_topk_tempered,
    )
    inputs = (run.student_a, run.student_b)
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)
    if needs_grad:
        loss = DistillFunction.apply(run.student_a, run.student_b, run)
    else:
        loss = run.forward(need_grad=False)[0]
    return DistillOutput(loss=loss, metrics=run.metrics)


class DistillFunction(torch.autograd.Function):
    """Forward computes the loss and, chunk by chunk, the gradients; backward scales them."""

    @staticmethod
    def forward(ctx, student_a, student_b, run):
        loss, grads = run.forward(need_grad=True)
        ctx.grads = grads
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        # grads stay on ctx (retain_graph, gradcheck); the graph's release frees them
        scale = float(grad_output)
        scaled = [g if g is None or scale == 1.0 else g * scale for g in ctx.grads]
        return scaled[0], scaled[1], None


def _flat(x, name, dims):
    """``x`` reshaped to ``dims`` dimensions, keeping the last (or none) as features."""
    if x is None:
        return None
    if not hasattr(x, "reshape"):
        raise DistillError(f"{name} must be a tensor, got {type(x).__name__}")
    if dims == 1:
        return x.reshape(-1)
    return x.reshape(-1, x.shape[-1])


class _Run:
    """One engine call: validated inputs, the chunk loop and the metric sums."""

    def __init__(
        self,
        loss_fn,
        *,
        span_type,
        student,
        teacher_logits,
        teacher_topk,
        labels,
        weights,
        mask,
        temperature,
        chunk_size,
        normalizer,
        nonfinite,
        topk_tempered=False,
    ):
        self.loss_fn = loss_fn
        self.topk_tempered = bool(topk_tempered)
        self.name = loss_name(loss_fn)
        if nonfinite not in ("raise", "skip"):
            raise DistillError(f"nonfinite must be 'raise' or 'skip', got {nonfinite!r}")
        if not temperature > 0:
            raise DistillError(f"temperature must be > 0, got {temperature!r}")
        if int(chunk_size) < 1:
            raise DistillError(f"chunk_size must be >= 1, got {chunk_size!r}")
        self.nonfinite, self.temperature, self.chunk_size = (
            nonfinite,
            float(temperature),
            int(chunk_size),
        )

        if student is None:
            raise DistillError("distill_loss needs student_logits: [N, V] or (hidden, lm_head)")
        self.fused = isinstance(student, tuple | list)
        if self.fused:
            hidden, head = student
            self.student_a, self.student_b = _flat(hidden, "student hidden", 2), head
            self.sources = {"student_hidden": self.student_a, "student_lm_head": head}
            if head.dim() != 2 or head.shape[1] != self.student_a.shape[1]:
                raise DistillError(
                    f"student lm_head must be [V, {self.student_a.shape[1]}], got {tuple(head.shape)}"
                )
            vocab = head.shape[0]
        else:
            self.student_a, self.student_b = _flat(student, "student_logits", 2), None
            self.sources = {"student_logits": self.student_a}
            vocab = self.student_a.shape[1]
        self.vocab = vocab
        self.dtype = torch.float64 if self.student_a.dtype == torch.float64 else torch.float32
        self.device = device = self.student_a.device
        n = self.student_a.shape[0]

        span_type = _flat(span_type, "span_type", 1)
        if span_type is None or span_type.shape[0] != n:
            raise DistillError(
                f"span_type must have one entry per position ({n}), got "
                f"{None if span_type is None else tuple(span_type.shape)}"
            )
        self.span_type = span_type.long().to(device)

        self._pick_teacher(teacher_logits, teacher_topk, labels, n)

        coef = (
            span_weights(self.span_type, DEFAULT_SPAN_WEIGHTS)
            if weights is None
            else _flat(weights, "weights", 1).to(device, torch.float64)
        )
        if coef.shape[0] != n:
            raise DistillError(f"weights must be [N] = [{n}], got {tuple(coef.shape)}")
        if not torch.isfinite(coef).all() or (coef < 0).any():
            raise DistillError("weights must be finite and >= 0 (check the weighting strategy)")
        coef = coef.to(torch.float64)
        if mask is not None:
            mask = _flat(mask, "mask", 1)
            if mask.shape[0] != n:
                raise DistillError(f"mask must be [N] = [{n}], got {tuple(mask.shape)}")
            coef = coef * mask.to(device, torch.float64)
        if self.labels is not None:
            coef = coef * (self.labels != -100).to(torch.float64)
        self.coef = coef
        self._check_small_inputs()
        self.active = torch.nonzero(self.coef > 0).view(-1)
        self.pre_skipped = int(((self.coef == 0) & (coef > 0)).sum())
        self.normalizer = normalizer
        if normalizer is not None and float(normalizer) <= 0 and self.active.numel():
            raise DistillError(f"normalizer must be > 0, got {float(normalizer)}")
        self.metrics: dict[str, Any] = {}

    # ------------------------------------------------------------------ setup
    def _pick_teacher(self, teacher_logits, teacher_topk, labels, n):
        signals = set(getattr(self.loss_fn, "signals", ()))
        given = []
        if teacher_logits is not None or teacher_topk is not None:
            given.append("distribution")
        if labels is not None:
            given.append("labels")
        if not given:
            raise DistillError(
                "distill_loss needs a teacher signal: teacher_logits, teacher_topk or labels"
            )
        if teacher_logits is not None and teacher_topk is not None:
            raise DistillError("give teacher_logits or teacher_topk, not both")
        check_signal(self.loss_fn, set(given))
        self.labels = None
        self.teacher_a = self.teacher_b = self.topk = None
        if "distribution" in signals and "distribution" in given:
            if teacher_topk is not None:
                self.mode = "sparse"
                self.topk = self._topk(teacher_topk, n)
            else:
                self.mode = "dense"
                self._dense_teacher(teacher_logits, n)
        else:
            self.mode = "sparse"
            self.labels = _flat(labels, "labels", 1).long().to(self.device)
            if self.labels.shape[0] != n:
                raise DistillError(f"labels must be [N] = [{n}], got {tuple(self.labels.shape)}")
            ids = self.labels.clamp_min(0)
            if ids.numel() and int(ids.max()) >= self.vocab:
                raise DistillError(f"labels hold ids >= the student vocabulary size {self.vocab}")
            zeros = torch.zeros(n, 1, dtype=self.dtype, device=self.device)
            self.topk = TopK(ids.unsqueeze(1), zeros, zeros.view(n))
            self.sources["labels"] = self.labels

    def _dense_teacher(self, teacher_logits, n):
        if isinstance(teacher_logits, tuple | list):
            hidden, head = teacher_logits
            self.teacher_a, self.teacher_b = _flat(hidden, "teacher hidden", 2), head
            self.sources.update({"teacher_hidden": self.teacher_a, "teacher_lm_head": head})
            if head.dim() != 2 or head.shape[1] != self.teacher_a.shape[1]:
                raise DistillError(
                    f"teacher lm_head must be [V, {self.teacher_a.shape[1]}], got {tuple(head.shape)}"
                )
            teacher_vocab = head.shape[0]
        else:
            self.teacher_a = _flat(teacher_logits, "teacher_logits", 2)
            self.sources["teacher_logits"] = self.teacher_a
            teacher_vocab = self.teacher_a.shape[1]
        if self.teacher_a.shape[0] != n:
            raise DistillError(
                f"teacher has {self.teacher_a.shape[0]} positions, the student {n}: align them first"
            )
        self.teacher_vocab = teacher_vocab
        if teacher_vocab != self.vocab and not getattr(self.loss_fn, "vocab_agnostic", False):
            raise DistillError(
                f"teacher vocabulary ({teacher_vocab}) differs from the student's ({self.vocab}); "
                "slice both to the shared tokenizer vocabulary, or use a vocabulary-agnostic "
                "loss such as wasserstein"
            )

    def _topk(self, topk, n):
        indices = topk.indices.reshape(-1, topk.indices.shape[-1]).long().to(self.device)
        logprobs = topk.logprobs.reshape(indices.shape).to(self.device)
        tail = topk.tail_mass.reshape(-1).to(self.device)
        if indices.shape[0] != n or tail.shape[0] != n:
            raise DistillError(
                f"teacher_topk has {indices.shape[0]} positions, the student {n}: align them first"
            )
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.vocab):
            raise DistillError(
                f"teacher_topk.indices hold ids outside the student vocabulary [0, {self.vocab})"
            )
        self.sources.update({"teacher_topk.logprobs": logprobs, "teacher_topk.tail_mass": tail})
        return TopK(indices, logprobs, tail.to(torch.float64))

    def _check_small_inputs(self):
        """Inputs that are cheap to scan are checked whole; logits are checked per chunk."""
        for name, tensor in self.sources.items():
            if name in ("student_logits", "teacher_logits", "labels") or tensor is None:
                continue
            if not tensor.dtype.is_floating_point:
                continue
            if name.endswith("lm_head"):
                if not torch.isfinite(tensor).all():
                    raise DistillError(f"{name} holds NaN/Inf values (a diverged model?)")
                continue
            rows = tensor.reshape(tensor.shape[0], -1) if tensor.dim() else tensor.view(1, 1)
            bad = ~torch.isfinite(rows).all(dim=-1) & (self.coef > 0)
            if bad.any():
                if self.nonfinite == "raise":
                    raise DistillError(_nonfinite_message(name, bad))
                self.coef = self.coef.masked_fill(bad, 0.0)

    # ------------------------------------------------------------------ the loop
    def forward(self, need_grad: bool):
        """Returns (loss, (grad_student_a, grad_student_b) or None)."""
        # the engine chooses its own precision (float32 accumulation); a trainer's autocast must not
        with torch.autocast(self.device.type, enabled=False):
            return self._forward(need_grad)

    def _forward(self, need_grad: bool):
        dtype, active = self.dtype, self.active
        n_active = active.numel()
        grad_a = grad_b = None
        need_a = need_grad and self.student_a.requires_grad
        need_b = need_grad and self.student_b is not None and self.student_b.requires_grad
        if need_a:
            grad_a = torch.zeros_like(self.student_a, dtype=self._grad_dtype(self.student_a))
        if need_b:
            grad_b = torch.zeros_like(self.student_b, dtype=dtype)
        spans = len(SPAN_NAMES)
        div_sum, agree, count = torch.zeros(3, spans, dtype=torch.float64, device=self.device)
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        coef = self.coef.clone()
        skipped = 0

        rows = min(self.chunk_size, n_active)
        ws = self._workspace(rows) if rows else None
        for start in range(0, n_active, self.chunk_size):
            idx = active[start : start + self.chunk_size]
            c = coef[idx]
            values, grad, s_arg, t_arg = self._chunk(idx, ws, c, need_a or need_b)
            bad = ~torch.isfinite(values)
            if bad.any():
                if self.nonfinite == "raise":
                    raise DistillError(self._explain_nonfinite(idx, bad))
                skipped += int(bad.sum())
                values = values.masked_fill(bad, 0.0)
                c = c.masked_fill(bad, 0.0)
                coef[idx] = c
                if grad is not None:
                    grad[bad] = 0.0
            values64 = values.detach().to(torch.float64)
            total += (c * values64).sum() * self.temperature**2
            good = c > 0
            span = self.span_type[idx][good]
            div_sum.index_add_(0, span, values64[good])
            agree.index_add_(0, span, (s_arg == t_arg)[good].to(torch.float64))
            count.index_add_(0, span, torch.ones_like(values64[good]))
            if grad is not None:
                self._backprop_chunk(idx, grad, grad_a, grad_b)

        weight = float(coef.sum())
        norm = weight if self.normalizer is None else float(self.normalizer)
        scale = 1.0 / norm if norm > 0 else 0.0
        loss = (total * scale).to(dtype)
        grads = None
        if need_a or need_b:
            if grad_a is not None:
                grad_a.mul_(scale)
            if grad_b is not None:
                grad_b = grad_b.mul_(scale).to(self.student_b.dtype)
            grads = (grad_a, grad_b)
        self._metrics(loss, div_sum, agree, count, weight, norm, skipped)
        return loss, grads

    def _grad_dtype(self, tensor):
        return tensor.dtype if tensor.dtype.is_floating_point else self.dtype

    def _workspace(self, rows):
        ws = {
            "student": torch.empty(rows, self.vocab, dtype=self.dtype, device=self.device),
            "scratch": torch.empty(rows, self.vocab, dtype=self.dtype, device=self.device),
        }
        if self.mode == "dense":
            ws["teacher"] = torch.empty(
                rows, self.teacher_vocab, dtype=self.dtype, device=self.device
            )
            ws["teacher_scratch"] = (
                ws["scratch"]
                if self.teacher_vocab == self.vocab
                else torch.empty(rows, self.teacher_vocab, dtype=self.dtype, device=self.device)
            )
            fast = getattr(self.loss_fn, "value_and_grad", None)
            if fast is not None and self.teacher_vocab == self.vocab:
                extra = max(0, int(getattr(self.loss_fn, "scratch_buffers", 1)) - 1)
                ws["spare"] = [
                    torch.empty(rows, self.vocab, dtype=self.dtype, device=self.device)
                    for _ in range(extra)
                ]
        return ws

    def _logits(self, a, b, idx, out):
        """Logits of positions ``idx`` written into ``out`` (float32/64) from logits or hidden+head."""
        if b is None:
            if a.dtype == out.dtype:
                return torch.index_select(a, 0, idx, out=out)
            return out.copy_(a.index_select(0, idx))
        hidden = a.index_select(0, idx).detach()
        head = b.detach()
        if hidden.dtype == out.dtype and head.dtype == out.dtype:
            return torch.mm(hidden, head.t(), out=out)
        return out.copy_(torch.mm(hidden, head.t().to(hidden.dtype)))

    def _chunk(self, idx, ws, c, need_grad):
        """Per-token values, the coefficient-scaled grad wrt student logits, and both argmaxes."""
        n = idx.numel()
        student = self._logits(self.student_a, self.student_b, idx, ws["student"][:n])
        if self.temperature != 1.0:
            student.div_(self.temperature)
        scratch = ws["scratch"][:n]
        row_scale = (c * self.temperature).to(self.dtype)
        if self.mode == "dense":
            return self._dense_chunk(idx, ws, student, scratch, row_scale, need_grad)
        return self._sparse_chunk(idx, student, scratch, row_scale, need_grad)

    def _dense_chunk(self, idx, ws, student, scratch, row_scale, need_grad):
        n = idx.numel()
        teacher = ws["teacher"][:n]
        with torch.no_grad():
            self._logits(self.teacher_a, self.teacher_b, idx, teacher)
        if self.temperature != 1.0:
            teacher.div_(self.temperature)
        t_arg = log_softmax_(teacher, ws["teacher_scratch"][:n])
        if "spare" in ws:
            s_arg = log_softmax_(student, scratch)
            spare = [buf[:n] for buf in ws["spare"]]
            values, grad = self.loss_fn.value_and_grad(student, teacher, scratch, *spare)
            if not need_grad:
                return values, None, s_arg, t_arg
            return values, grad.mul_(row_scale.unsqueeze(1)), s_arg, t_arg
        s_arg = student.argmax(dim=-1)
        with torch.enable_grad():
            logits = student.detach().requires_grad_(need_grad)
            values = self.loss_fn(torch.log_softmax(logits, dim=-1), teacher)
            self._check_values(values, n)
            grad = None
            if need_grad:
                (grad,) = torch.autograd.grad(values, logits, grad_outputs=row_scale)
        return values.detach(), grad, s_arg, t_arg

    def _sparse_chunk(self, idx, student, scratch, row_scale, need_grad):
        """Student mapped onto the teacher's k ids plus a tail bucket (labels: k = 1)."""
        ids = self.topk.indices[idx]
        t_sup = torch.cat(
            [
                self.topk.logprobs[idx].to(self.dtype),
                self.topk.tail_mass[idx].clamp_min(TAIL_FLOOR).log().to(self.dtype).unsqueeze(1),
            ],
            dim=1,
        )
        if self.temperature != 1.0 and not self.topk_tempered:
            # the tail bucket is tempered as one token: exact for the top-k ids only at T = 1
            t_sup = torch.log_softmax(t_sup / self.temperature, dim=-1)
        t_arg = ids.gather(1, t_sup[:, :-1].argmax(dim=-1, keepdim=True)).view(-1)
        s_arg = log_softmax_(student, scratch)
        s_top = student.gather(1, ids)
        probs = torch.exp(student, out=scratch).scatter_(1, ids, 0.0)
        tail = probs.sum(dim=-1)
        clamped = tail <= TAIL_FLOOR
        with torch.enable_grad():
            top = s_top.detach().requires_grad_(need_grad)
            rest = tail.clamp_min(TAIL_FLOOR).log().requires_grad_(need_grad)
            values = self.loss_fn(torch.cat([top, rest.unsqueeze(1)], dim=1), t_sup)
            self._check_values(values, idx.numel())
            if not need_grad:
                return values.detach(), None, s_arg, t_arg
            g_top, g_rest = torch.autograd.grad(values, (top, rest), grad_outputs=row_scale)
        g_rest = g_rest.masked_fill(clamped, 0.0)
        g_sum = g_top.sum(dim=-1) + g_rest
        # d/dz_m = [m in top] g_j + [m not in top] g_rest q_m / tail - q_m * g_sum
        outside = torch.where(clamped, 0.0, g_rest / tail.clamp_min(TAIL_FLOOR)) - g_sum
        grad = probs.mul_(outside.unsqueeze(1))
        grad.scatter_(1, ids, g_top - s_top.exp() * g_sum.unsqueeze(1))
        return values.detach(), grad, s_arg, t_arg

    def _check_values(self, values, n):
        if values.shape != (n,):
            raise DistillError(
                f"loss '{self.name}' returned shape {tuple(values.shape)}; a loss returns one "
                f"value per token ([{n}])"
            )

    def _backprop_chunk(self, idx, grad, grad_a, grad_b):
        """Chain the chunk's grad wrt logits into the student's inputs (hidden and head, or logits)."""
        if self.student_b is None:
            if grad_a is not None:
                grad_a.index_copy_(0, idx, grad.to(grad_a.dtype))
            return
        head = self.student_b.detach()
        hidden = self.student_a.index_select(0, idx).detach()
        if grad_a is not None:
            g = grad if head.dtype == grad.dtype else grad.to(head.dtype)
            grad_a.index_copy_(0, idx, (g @ head).to(grad_a.dtype))
        if grad_b is not None:
            h = hidden if hidden.dtype == grad.dtype else hidden.to(grad.dtype)
            grad_b.addmm_(grad.t(), h)

    # ------------------------------------------------------------------ reporting
    def _explain_nonfinite(self, idx, bad):
        positions = idx[bad]
        for name, tensor in self.sources.items():
            if tensor is None or not tensor.dtype.is_floating_point or name.endswith("lm_head"):
                continue
            rows = tensor.index_select(0, positions).reshape(positions.numel(), -1)
            found = ~torch.isfinite(rows).all(dim=-1)
            if found.any():
                where = torch.zeros(self.coef.shape[0], dtype=torch.bool, device=self.device)
                where[positions[found]] = True
                return _nonfinite_message(name, where)
        first = int(positions[0])
        origin = "logits computed from the hidden states" if self.fused else "divergence"
        return (
            f"loss '{self.name}' is NaN/Inf at {positions.numel()} token(s) (first: position "
            f"{first}) although the inputs are finite: the {origin} overflowed or hold -inf "
            "logits; use float32 inputs, or pass nonfinite='skip' (loss.nonfinite: skip)"
        )

    def _metrics(self, loss, div_sum, agree, count, weight, norm, skipped):
        totals = torch.stack([div_sum, agree, count], dim=1)  # span_totals' layout
        tokens = float(count.sum())
        self.metrics.update(
            {
                "loss": float(loss),
                "divergence": float(div_sum.sum()) / tokens if tokens else 0.0,
                "top1_agreement": float(agree.sum()) / tokens if tokens else 0.0,
                "tokens": int(tokens),
                "weight": weight,
                "normalizer": norm,
                "skipped_nonfinite": skipped + self.pre_skipped,
                "spans": span_means(totals.tolist()),
            }
        )


def _nonfinite_message(name, bad):
    positions = torch.nonzero(bad).view(-1)
    return (
        f"{name} holds NaN/Inf at {positions.numel()} token(s) (first: position "
        f"{int(positions[0])}); fix the input, or pass nonfinite='skip' (loss.nonfinite: skip) "
        "to drop and count those tokens"
    )
