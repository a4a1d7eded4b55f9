"""The `structured` span detector: span types from message roles and our step structure.

It implements the optional ``detect_segments(segments)`` of the SpanDetector protocol, so it
sees each normalized segment with its role. Rules, first that applies:

- the prompt (messages before the first assistant turn) and later system messages: other;
- a type the data format fixes (OpenAI ``tool_calls`` = action, ``tool`` results and
  ShareGPT ``function``/``observation`` turns = observation): that type;
- our own trajectories: the step ranges the parser located (thought, action, final answer,
  observation messages) -- exact, confidence 1;
- a user message after the first assistant turn: observation (agent data feeds tool results
  back as user turns, e.g. AgentInstruct), confidence 0.9;
- assistant text: the strict ReAct keywords at line starts (``Thought:``, ``Action:``,
  ``Action Input:``, ``Observation:``, ``Final Answer:``, optionally numbered as in ReAct's
  ``Thought 1:``; ``Action: finish[...]`` is the answer), ``<think>`` blocks; unmarked text is reasoning, or the answer in the last
  assistant message.

``detect(text)`` (plain text, no roles) applies the keyword rule with leading text as other.
"""

from __future__ import annotations

import re

from deepcoder_core import Segment, Span, SpanType, fill_gaps, hookimpl

_KEYWORDS = re.compile(
    r"^(?P<answer>Final Answer:|Action(?: \d+)?:[ \t]*[Ff]inish\[)"
    r"|^(?P<action>Action(?: Input)?(?: \d+)?:)"
    r"|^(?P<observation>Observation(?: \d+)?:)"
    r"|^(?P<reasoning>Thought(?: \d+)?:)",
    re.MULTILINE,
)
_THINK = re.compile(r"<think>.*?(?:</think>|\Z)", re.DOTALL)
_FENCE = re.compile(r"^```[^\n]*\n.*?^```[^\n]*$", re.DOTALL | re.MULTILINE)


def react_spans(text: str, leading: SpanType, confidence: float = 0.95) -> tuple[Span, ...]:
    """Spans from ReAct keywords at line starts; keywords inside code fences are ignored."""
    think = [(m.start(), m.end()) for m in _THINK.finditer(text)]
    fences = [(m.start(), m.end()) for m in _FENCE.finditer(text)] if "```" in text else []
    protected = think + fences
    pieces: list[tuple[int, int, SpanType]] = [(a, b, SpanType.REASONING) for a, b in think]
    marks = [
        (m.start(), SpanType[str(m.lastgroup).upper()])  # every alternative is a named group
        for m in _KEYWORDS.finditer(text)
        if not any(a <= m.start() < b for a, b in protected)
    ]
    # a keyword span runs to the next keyword or <think> block
    starts = sorted([p for p, _ in marks] + [a for a, _ in think])
    for pos, kind in marks:
        end = next((b for b in starts if b > pos), len(text))
        pieces.append((pos, end, kind))
    spans = fill_gaps(text, pieces, leading=leading)
    return tuple(
        Span(s.start, s.end, s.type, s.confidence if s.confidence < 1.0 else confidence)
        for s in spans
    )


class StructuredSpanDetector:
    """Span types from message roles and the step structure of our trajectories."""

    def detect_segments(self, segments: list[Segment]) -> list[tuple[Span, ...]]:
        last_assistant = max(
            (i for i, s in enumerate(segments) if s.role == "assistant" and s.field == "content"),
            default=-1,
        )
        seen_assistant = False
        out: list[tuple[Span, ...]] = []
        for i, seg in enumerate(segments):
            size = len(seg.text)

            def whole(kind, conf=1.0, n=size):
                return (Span(0, n, kind, conf),) if n else ()

            if seg.role == "assistant":
                seen_assistant = True
            if seg.prompt or seg.role == "system":
                out.append(whole(SpanType.OTHER))
            elif seg.kind is not None:
                out.append(whole(seg.kind))
            elif seg.parts:
                out.append(tuple(seg.parts))  # the core normalizes what detectors return
            elif seg.role in ("user", "tool"):
                # a user turn after the agent started is the environment answering it
                conf = 1.0 if seg.role == "tool" else 0.9
                out.append(whole(SpanType.OBSERVATION if seen_assistant else SpanType.OTHER, conf))
            elif seg.role == "assistant":
                unmarked = SpanType.ANSWER if i == last_assistant else SpanType.REASONING
                out.append(react_spans(seg.text, leading=unmarked))
            else:
                out.append(react_spans(seg.text, leading=SpanType.OTHER))
        return out

    def detect(self, text: str) -> list[Span]:
        return list(react_spans(text, leading=SpanType.OTHER))


@hookimpl
def register_span_detectors(register):
    register(
        "structured",
        StructuredSpanDetector,
        description="message roles and step structure (exact on deepcoder trajectories)",
    )
