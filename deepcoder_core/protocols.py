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
    """Per-token span label of the processed dataset (ARCHITECTURE.md, data contracts)."""

    OTHER = 0  # prompt, chat-template scaffolding
    REASONING = 1
    ACTION = 2
    OBSERVATION = 3
    ANSWER = 4


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
    """A chat model the agent drives. White-box teachers also implement ``score``.

    Optional methods, detected with ``hasattr``:
    ``complete_batch(list_of_messages, **params) -> list[Completion]`` (local models batch agents),
    ``score(token_ids, top_k) -> TopK`` (per-position next-token distribution of ``token_ids``;
    ``top_k=None`` asks for dense log-probabilities in ``logprobs`` with ``indices`` empty).
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
    logits, or sparse top-k the engine completes with a tail bucket), ``"labels"`` (the
    teacher's tokens only). The engine handles chunking, temperature, masking, weighting
    and reduction; the loss sees float32 log-probabilities over one support of size K and
    returns one value per token ``[n]``.
    """

    signals: tuple[str, ...]

    def __call__(self, student_logp: torch.Tensor, teacher_logp: torch.Tensor) -> torch.Tensor: ...


@dataclass
class TrainingState:
    """What a weighting strategy may look at besides span types."""

    step: int = 0
    total_steps: int = 1
    span_loss_ema: dict[int, float] = field(default_factory=dict)  # SpanType -> running mean loss

    @property
    def progress(self) -> float:
        return min(1.0, self.step / max(1, self.total_steps))


@runtime_checkable
class Weighting(Protocol):
    """Per-token weights ``[n]`` from span types and training state.

    ``batch`` holds per-token tensors ``span_type`` and ``span_confidence`` and per-token
    broadcasts of example fields such as ``difficulty`` (0 easy, 1 medium, 2 hard).
    Optional ``observe(metrics, state)`` receives per-span metrics after each step.
    """

    def weights(self, batch: dict[str, torch.Tensor], state: TrainingState) -> torch.Tensor: ...
