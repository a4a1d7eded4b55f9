"""Our own trajectory records (``deepcoder`` format) as segments, each step's parts located.

A record is read with :meth:`deepcoder_core.records.Trajectory.from_dict` (a wrong field is a
``RecordError`` naming it). The prompt messages come first; then, per step, the assistant
message (from ``messages``, else ``raw``, else written from the step's fields; a separate
``reasoning`` goes back into ``<think>``) with its ``parts`` located by :func:`step_parts`,
then the observation message. The markers are found with the patterns of
:mod:`deepcoder_core.react_format`, the ones the agent parsed the reply with, so a step is cut
where the agent cut it.
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import RecordError
from ..protocols import Span, SpanType
from ..react_format import ACTION, FENCE, FINAL, THINK, THINK_CLOSE_ONLY, THOUGHT
from ..records import Step, Trajectory
from .chat_formats import role_of, text_of, with_thinking
from .segments import Segment, fill_gaps


def parse_deepcoder(record: dict[str, Any]) -> tuple[list[Segment], dict[str, Any]]:
    if record.get("steps") is None:  # the typed record reads a missing list as an empty one
        raise RecordError("missing field 'steps' (a list of steps)")
    trajectory = Trajectory.from_dict(record)
    steps, messages = trajectory.steps, trajectory.messages
    if not steps:
        raise RecordError("empty steps: the trajectory has no step")
    if not messages:
        raise RecordError("missing field 'messages' (the chat with the prompt)")
    segments: list[Segment] = []
    index = 0
    while index < len(messages) and role_of(messages[index], index) != "assistant":
        segments.append(Segment(role_of(messages[index], index), _content(messages, index), index))
        index += 1
    if not segments:
        raise RecordError("messages: no prompt before the first assistant message")
    # The exact chat when it is there: assistant replies, each followed by its observation.
    replies: list[str] = []
    observations: list[str | None] = []
    for i in range(index, len(messages)):
        if role_of(messages[i], i) == "assistant":
            replies.append(_content(messages, i))
            observations.append(None)
        elif replies and observations[-1] is None:
            observations[-1] = _content(messages, i)
    number = len(segments)
    for k, step in enumerate(steps):
        last = k == len(steps) - 1
        if k < len(replies):
            content = replies[k]
        elif step.raw.strip():
            content = step.raw
        else:
            content = _written(step, trajectory.final_answer, last)
        content = with_thinking(step.reasoning, content)
        if not content.strip():
            raise RecordError(f"steps[{k}]: empty step (no raw text, thought or action)")
        parts = step_parts(content, step, trajectory.final_answer if last else None, last)
        segments.append(Segment("assistant", content, number, parts=parts))
        number += 1
        if k < len(observations) and observations[k] is not None:
            text = observations[k]
        elif step.observation is not None:
            text = f"Observation: {step.observation}"
        else:
            continue
        assert text is not None
        segments.append(
            Segment("user", text, number, parts=(Span(0, len(text), SpanType.OBSERVATION),))
        )
        number += 1
    meta = {
        "trajectory_id": trajectory.id,
        "problem_id": trajectory.problem_id,
        "difficulty": trajectory.difficulty or "",
        "category": trajectory.category or "",
        "success": trajectory.success,
        "teacher_system": trajectory.teacher_system or "",
    }
    return segments, meta


def _content(messages: list[dict[str, Any]], index: int) -> str:
    return text_of(messages[index].get("content"), f"messages[{index}].content")


def _written(step: Step, final_answer: str | None, last: bool) -> str:
    """A step's text from its fields, for records saved without ``raw`` or ``messages``."""
    lines = []
    if step.thought:
        lines.append(f"Thought: {step.thought}")
    if step.action is not None:
        lines.append(f"Action: {step.action.tool}\nAction Input: {step.action.input}")
    elif last and final_answer:
        lines.append(f"Final Answer: {final_answer}")
    return "\n".join(lines)


def step_parts(content: str, step: Step, final_answer: str | None, last: bool) -> tuple[Span, ...]:
    """Typed ranges of one assistant message, located from the step's own fields.

    The thought (with a ``Thought:`` label before it and any ``<think>`` block) is reasoning,
    the ``Action:`` line through the action input (and its code fence) is the action, and
    ``Final Answer:`` (else the fence of the final code) to the end is the answer. Gaps take
    the type of the range before them (confidence 0.5 unless they are whitespace); text
    before any located range is reasoning.
    """
    pieces: list[tuple[int, int, SpanType]] = []
    cur = 0
    think = THINK.search(content) or THINK_CLOSE_ONLY.match(content)
    if think:
        pieces.append((think.start(), think.end(), SpanType.REASONING))
        cur = think.end()
    thought = (step.thought or "").strip()
    if thought:
        pos = content.find(thought, cur)
        if pos != -1:
            # the agent reads a label only at the start of the reply, after <think>
            head = content[cur:pos].lstrip()
            label = THOUGHT.match(head)
            begin = pos - len(head) if label and not head[label.end() :].strip() else pos
            pieces.append((begin, pos + len(thought), SpanType.REASONING))
            cur = pos + len(thought)
    if step.action is not None:
        label = ACTION.search(content, cur)
        after = label.start(1) if label else cur
        text = step.action.input.strip()
        pos = content.find(text, after) if text else -1
        begin = label.start() if label else pos
        if begin != -1:
            if pos != -1:
                fence = _fence_around(content, after, pos, pos + len(text))
                end = fence.end() if fence else pos + len(text)
            else:
                end = len(content)
            pieces.append((begin, end, SpanType.ACTION))
            cur = end
    elif last or final_answer:
        label = FINAL.search(content, cur)
        begin = label.start() if label else -1
        if begin == -1 and final_answer and final_answer.strip():
            code = final_answer.strip()
            pos = content.find(code, cur)
            if pos != -1:
                fence = _fence_around(content, cur, pos, pos + len(code))
                begin = fence.start() if fence else pos
        if begin != -1:
            pieces.append((begin, len(content), SpanType.ANSWER))
    if not pieces:
        # nothing of the step is in its text (an unparsable reply): no span to learn from
        return (Span(0, len(content), SpanType.OTHER, 1.0),) if content else ()
    return fill_gaps(content, pieces, leading=SpanType.REASONING)


def _fence_around(content: str, start: int, pos: int, end: int) -> re.Match[str] | None:
    """The code fence after ``start`` whose code holds ``content[pos:end]``, if any."""
    for block in FENCE.finditer(content, start):
        if block.start() > pos:
            return None
        if block.start(2) <= pos and end <= block.end(2):
            return block
    return None
