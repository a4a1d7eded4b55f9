"""The component contracts plugins implement, and the small records they exchange.

A plugin imports these from ``deepcoder_core`` only; nothing here imports torch at module
load (tensor types are annotations only), so the CLI stays fast.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

KINDS = ("teacher", "tool", "span_detector", "loss", "weighting")
"""Component kinds, each filled by one ``register_<kind>s`` hook."""


class SpanType(enum.IntEnum):
    """Per-token span label of the processed dataset (`docs/architecture.md`, data contracts)."""

    OTHER = 0  # prompt, chat-template scaffolding
    REASONING = 1
    ACTION = 2
    OBSERVATION = 3
    ANSWER = 4


SPAN_NAMES: dict[int, str] = {int(t): t.name.lower() for t in SpanType}
"""Span type number -> name (``other``, ``reasoning``, ``action``, ``observation``,
``answer``): the one vocabulary for dataset summaries, metrics, logs and plots."""


# ---------------------------------------------------------------------------- teachers


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class Completion:
    """One teacher reply. ``text`` is verbatim; ``reasoning`` is thinking the server returned apart."""

    text: str
    reasoning: str | None = None
    usage: Usage = field(default_factory=Usage)
    raw: Any = None
    finish_reason: str | None = None


@dataclass
class TopK:
    """Sparse teacher distribution per token: the k most likely ids and the mass left outside.

    ``indices``: int32 ``[n, k]``; ``logprobs``: float ``[n, k]`` (log-probabilities, not
    logits); ``tail_mass``: float ``[n]`` = 1 - sum(exp(logprobs)), clamped at 0.
    """

    indices: torch.Tensor
    logprobs: torch.Tensor
    tail_mass: torch.Tensor


@runtime_checkable
class Teacher(Protocol):
    """A chat model the agent drives: ``model`` (its name) and ``complete`` are required.

    Optional members, each detected where it is used (and nowhere else):

    - ``complete_batch(list_of_messages, **params) -> list[Completion]``: local models step
      many agents in one call (generation and evaluation use it when present);
    - ``score(token_ids, top_k) -> TopK``: a white-box teacher's per-position next-token
      distribution of ``token_ids`` (``top_k=None``: dense log-probabilities in ``logprobs``,
      ``indices`` empty); the teacher-logit cache and ``deepcoder run``'s pre-flight check
      use it. A teacher class may offer it as a method without being able to serve it (a
      remote server without prompt log-probabilities): it raises ``TeacherError`` then;
    - ``hf_model`` and ``tokenizer``: a local transformers model and its tokenizer, which
      the cache scores directly (faster than ``score``);
    - ``stats``: a ``TeacherStats`` (calls, retries, tokens) that generation reports;
    - ``replays = True``: a recording, which generation asks with ``key=(problem_id,
      sample, step)`` so each reply is found exactly;
    - ``plugin_name``: the name recorded in trajectories (default: the class name).
    """

    model: str

    def complete(self, messages: list[dict[str, Any]], **params: Any) -> Completion: ...


# ---------------------------------------------------------------------------- tools


@dataclass
class Observation:
    """What a tool gives back to the agent: text shown as ``Observation:``, and machine-readable meta."""

    text: str
    ok: bool = True
    meta: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Tool(Protocol):
    """A tool the agent calls by ``name``.

    ``session`` identifies one trajectory: stateful tools (the Python executor keeps names
    between calls) keep state per session and drop it in the optional ``close(session)``.
    """

    name: str
    description: str

    def run(self, input: str, *, timeout: float, session: str | None = None) -> Observation: ...


# ---------------------------------------------------------------------------- spans


@dataclass(frozen=True)
class Span:
    """A character range ``[start, end)`` of a text with its span type and detector confidence."""

    start: int
    end: int
    type: SpanType
    confidence: float = 1.0


@runtime_checkable
class SpanDetector(Protocol):
    """Cuts text into typed spans. The core maps characters to tokens with offset mappings.

    ``detect_segments(segments)`` is optional: detectors that use message roles (the
    ``structured`` detector) receive the normalized ``(role, text)`` segments instead.
    """

    def detect(self, text: str) -> list[Span]: ...


# ---------------------------------------------------------------------------- distillation


@runtime_checkable
class Loss(Protocol):
    """A per-token divergence between teacher and student next-token distributions.

    ``signals``: the teacher signals the loss can use, any of ``"distribution"`` (dense
    logits, or sparse top-k the engine completes with one tail bucket), ``"labels"`` (the
    teacher's tokens only, given to the loss as a one-hot distribution). The engine
    (:func:`deepcoder_core.distill.engine.distill_loss`) handles chunking, the fused LM head,
    temperature, masking, weighting, reduction and metrics; the loss sees float32 (float64
    under gradcheck) log-probabilities ``[n, K]`` over one support and returns ``[n]``.

    Optional attributes, detected with ``getattr``:
    ``name`` (shown in errors and metrics);
    ``vocab_agnostic = True``: the loss compares distributions over different supports, so the
    teacher's vocabulary size may differ from the student's (``teacher_logp`` is ``[n, K']``);
    ``value_and_grad(student_logp, teacher_logp, *scratch) -> (values [n], grad [n, K])``:
    an in-place fast path for dense supports; ``grad`` is d sum(values) / d student logits
    (through the log-softmax). The engine hands over its buffers, which the method may
    overwrite, plus ``scratch_buffers`` (int, default 1) spare buffers of the same shape.
    """

    signals: tuple[str, ...]

    def __call__(self, student_logp: torch.Tensor, teacher_logp: torch.Tensor) -> torch.Tensor: ...


@dataclass
class TrainingState:
    """What a weighting strategy may look at besides span types."""

    step: int = 0
    total_steps: int = 1
    span_divergence_ema: dict[int, float] = field(default_factory=dict)  # SpanType -> running mean

    @property
    def progress(self) -> float:
        return min(1.0, self.step / max(1, self.total_steps))


@runtime_checkable
class Weighting(Protocol):
    """Per-token weights ``[n]`` from span types and training state.

    ``batch`` holds per-token tensors ``span_type`` and, when known, ``span_confidence`` and
    per-token broadcasts of example fields such as ``difficulty`` (0 easy, 1 medium, 2 hard).
    Weights are 0 on prompt (0) and observation (3) tokens unless the strategy's options say
    otherwise. Optional methods: ``observe(metrics, state)`` receives the engine's per-span
    metrics after each optimizer step; ``order(examples) -> list[int]`` gives an example
    order for the trainer (the curriculum strategy's easy-to-hard ordering).
    """

    def weights(self, batch: dict[str, torch.Tensor], state: TrainingState) -> torch.Tensor: ...
