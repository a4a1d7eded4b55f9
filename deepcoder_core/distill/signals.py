"""The teacher signal: what a loss can learn from, and which signal a training run uses.

A loss declares ``signals`` (``protocols.Loss``): ``"distribution"`` (the teacher's
next-token distribution, dense or top-k) and/or ``"labels"`` (the teacher's tokens).
:func:`check_signal` refuses a loss that cannot use what the teacher gives, naming the
installed losses that can; :func:`resolve_signal` picks the run's signal (``topk``,
``online``, ``aligned`` or ``labels``) and checks it fits the student's vocabulary.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Config
from .errors import DistillError, TrainError
from .teacher_cache import TeacherLogitsCache, vocab_hash
from .teacher_logits import ScoringTeacher, WhiteBoxTeacher, load_teacher

SIGNAL_HELP = {
    "distribution": "teacher logits (dense or top-k) from a white-box teacher",
    "labels": "the teacher's tokens only",
}


def loss_name(loss_fn: Any) -> str:
    return getattr(loss_fn, "name", None) or type(loss_fn).__name__


def check_signal(loss_fn: Any, available: set[str] | list[str] | tuple[str, ...]) -> None:
    """Fail before any work when ``loss_fn`` cannot use the teacher signals ``available``."""
    signals = set(getattr(loss_fn, "signals", ()))
    available = set(available)
    if signals & available:
        return
    needs = " or ".join(f"'{s}' ({SIGNAL_HELP.get(s, s)})" for s in sorted(signals))
    have = ", ".join(sorted(available)) or "nothing"
    alternatives = _losses_for(available)
    hint = (
        f"; losses that work from {have}: {', '.join(alternatives)}"
        if alternatives
        else "; no installed loss works from it"
    )
    raise DistillError(
        f"loss '{loss_name(loss_fn)}' needs the teacher signal {needs}, but the teacher gives "
        f"{have}{hint} (set loss.name), or use a white-box teacher for a distribution"
    )


def _losses_for(available: set[str]) -> list[str]:
    from ..plugins import get_plugin_manager

    names = []
    for name, entry in get_plugin_manager().registry("loss").items():
        signals = getattr(entry.factory, "signals", None)  # a class attribute, usually
        if signals is None:
            try:
                signals = getattr(entry.build(), "signals", None) or ()
            except Exception:  # a plugin that cannot build without options is just not listed
                continue
        if set(signals) & available:
            names.append(name)
    return names


@dataclass
class Signal:
    """The teacher signal of a training run."""

    kind: str  # "topk" (cache) | "online" | "aligned" (online, other tokenizer) | "labels"
    width: int  # logits columns the student and the teacher share
    teacher: WhiteBoxTeacher | None = None  # online and aligned
    cache: TeacherLogitsCache | None = None  # topk


def resolve_signal(
    config: Config,
    loss_fn: Any,
    *,
    teacher: Any,
    teacher_logits: str | Path | None,
    dataset: Any,
    tokenizer: Any,
    student_width: int,
) -> Signal:
    """Pick the teacher signal and check it fits the loss and the student's vocabulary.

    Cache given: top-k. Else, a loss that needs a distribution (or an explicit teacher):
    the online white-box teacher. Else the teacher's tokens, which the dataset already holds.
    """
    wants = set(getattr(loss_fn, "signals", ()))
    name = getattr(loss_fn, "name", config.loss.name)
    if teacher_logits is not None:
        cache = TeacherLogitsCache(teacher_logits)
        cache.check(dataset)
        cache.check_vocab(tokenizer, student_width)
        check_signal(loss_fn, {"distribution", "labels"})
        if "distribution" not in wants:
            return Signal("labels", student_width)
        return Signal("topk", student_width, cache=cache)
    if teacher is None and "distribution" not in wants:
        check_signal(loss_fn, {"labels"})
        return Signal("labels", student_width)
    resolved = load_teacher(config, teacher)
    if isinstance(resolved, ScoringTeacher):
        raise TrainError(
            f"teacher '{resolved.identity['name']}' only scores remotely; write a top-k cache "
            "first with `deepcoder teacher-logits` and train with --teacher-logits DIR"
        )
    check_signal(loss_fn, {"distribution", "labels"})
    if "distribution" not in wants:
        return Signal("labels", student_width)
    if vocab_hash(resolved.tokenizer) != vocab_hash(tokenizer):
        if not getattr(loss_fn, "vocab_agnostic", False):
            raise TrainError(
                f"the teacher's tokenizer ({resolved.identity['model']}) differs from the "
                f"student's, and loss '{name}' needs one vocabulary; use a vocabulary-agnostic "
                "loss or a student with the teacher's tokenizer"
            )
        warnings.warn(
            f"the teacher's tokenizer differs from the student's: loss '{name}' compares the "
            "two vocabularies' distributions at positions where both tokenizations share a "
            "token boundary; other positions get no loss",
            stacklevel=2,
        )
        return Signal("aligned", student_width, teacher=resolved)
    width = min(resolved.vocab_size, student_width)
    if resolved.vocab_size != student_width:
        warnings.warn(
            f"teacher logits have {resolved.vocab_size} columns, the student's {student_width} "
            f"(vocabulary padding, same tokenizer): both are cut to {width}",
            stacklevel=2,
        )
    return Signal("online", width, teacher=resolved)
