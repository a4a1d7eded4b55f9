"""Held-out per-span divergence: how close a student's next-token distributions are to the
teacher's on teacher trajectories of problems no variant trained on.

The teacher's evaluation trajectories of the held-out problems are processed with the
training data's own code and settings (:func:`deepcoder_core.process.process`), so each
token carries its span type. For each example, the teacher and the student run on the same
tokens; at each position ``i`` predicting a reasoning, action or answer token
(:data:`~deepcoder_core.distill.weights.DEFAULT_SPAN_WEIGHTS`: the tokens the teacher wrote)
the loss engine (:func:`~deepcoder_core.distill.engine.distill_loss`, no gradient) gives the
per-span metrics of :mod:`deepcoder_core.distill.metrics`:

    divergence       mean over the span's tokens of KL(p_teacher || q_student) at T = 1,
                     on the full vocabulary (the ``kl`` loss plugin; every variant is
                     scored with this one divergence, whatever it was trained with)
    top1_agreement   share of the span's tokens where both most likely tokens agree

Per example, the span sums (:func:`~deepcoder_core.distill.metrics.span_totals`) are kept
with the example's problem, so the report can resample problems for intervals and pair two
variants on the same examples.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..protocols import SPAN_NAMES

HELDOUT_DIVERGENCE = "kl"
"""The loss plugin whose per-token divergence scores every variant on held-out tokens."""


def local_teacher_reason(config: Any) -> str | None:
    """Why held-out divergence cannot be measured with this teacher, or None when it can."""
    from ..plugins import lookup

    entry = lookup("teacher", config.teacher.name)
    if config.teacher.name in ("hf", "ct2") or hasattr(entry.factory, "hf_model"):
        return None
    return (
        f"teacher '{config.teacher.name}' is not a model in this process; held-out divergence "
        "needs the teacher's full distribution (an hf teacher)"
    )


def score_heldout(
    config: Any, *, model: str | Path, data: str | Path, progress: bool = True
) -> dict[str, Any]:
    """Score the student folder ``model`` against the configured teacher on the processed
    held-out dataset ``data``. Returns ``{divergence, examples, spans: {span: {divergence,
    top1_agreement, tokens}}, per_example: [{problem_id, totals}]}``, where ``totals`` is
    :func:`span_totals`' ``[divergence x tokens, top1 x tokens, tokens]`` per span number."""
    import click
    import torch

    from .. import models
    from ..distill.data import Collator, Examples, load_processed, positions
    from ..distill.engine import distill_loss
    from ..distill.metrics import span_means, span_totals
    from ..distill.teacher_logits import WhiteBoxTeacher, load_teacher
    from ..distill.weights import DEFAULT_SPAN_WEIGHTS, span_weights
    from ..plugins import build

    dataset = load_processed(data)
    teacher = load_teacher(config)
    if not isinstance(teacher, WhiteBoxTeacher):
        raise ValueError(local_teacher_reason(config) or "the teacher gives no local logits")
    tokenizer = models.load_tokenizer(str(model))
    if teacher.tokenizer is not None and teacher.tokenizer.get_vocab() != tokenizer.get_vocab():
        return {"skipped": "the student's and the teacher's vocabularies differ"}
    device = str(teacher.device)
    student_model = models.load_causal_lm(str(model), device=device)
    student = WhiteBoxTeacher(student_model, None, {"name": "student", "model": str(model)})
    width = min(teacher.vocab_size, student.vocab_size)
    loss_fn = build("loss", HELDOUT_DIVERGENCE)
    examples = Examples(dataset)
    collate = Collator(0)
    problem_ids = dataset["problem_id"]
    has_prefix = "teacher_prefix" in dataset.column_names
    totals: list[list[float]] | None = None
    per_example = []
    for index in range(len(examples)):
        inputs = collate([examples[index]])
        keep = positions(inputs)
        t_ids, t_mask, shift = inputs["input_ids"], inputs["attention_mask"], 0
        replaces = int(dataset[index]["teacher_prefix_replaces"]) if has_prefix else 0
        if replaces:
            # privileged exemplars: the teacher reads its own system message (teacher_view)
            prefix = torch.tensor([dataset[index]["teacher_prefix"]], dtype=t_ids.dtype)
            t_ids = torch.cat([prefix, t_ids[:, replaces:]], dim=1)
            t_mask = torch.ones_like(t_ids)
            shift = prefix.shape[1] - replaces
            keep[:, : replaces - 1] = False  # inside the replaced system message: no twin
        span_type = inputs["span_type"][:, 1:][keep]
        with torch.no_grad():
            t_hidden = teacher.hidden_states(t_ids, t_mask)[:, shift:]
            s_hidden = student.hidden_states(inputs["input_ids"], inputs["attention_mask"])
            result = distill_loss(
                loss_fn,
                span_type=span_type.to(device),
                student_logits=(
                    s_hidden[:, :-1][keep.to(device)].float(),
                    student_model.get_output_embeddings().weight[:width].float(),
                ),
                teacher_logits=(
                    t_hidden[:, :-1][keep.to(device)].float(),
                    teacher.model.get_output_embeddings().weight[:width].float(),
                ),
                weights=span_weights(span_type, DEFAULT_SPAN_WEIGHTS).to(device),
                chunk_size=config.loss.chunk_size,
            )
        spans = result.metrics["spans"]
        per_example.append({"problem_id": problem_ids[index], "totals": span_totals(spans)})
        totals = span_totals(spans, totals)
        if progress:
            click.echo(f"[held-out] {index + 1}/{len(examples)} examples", err=True)
    return {
        "divergence": HELDOUT_DIVERGENCE,
        "examples": len(examples),
        "spans": span_means(totals or [[0.0, 0.0, 0.0] for _ in SPAN_NAMES]),
        "per_example": per_example,
    }
