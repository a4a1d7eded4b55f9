"""Agent data -> normalized segments -> the student's chat text with a span type per character.

Processing (``deepcoder process``) reads trajectories in several formats, cuts each into
:class:`Segment` s (one chat message each, or a part of one), lets a span detector label
character ranges, renders the messages with the student tokenizer's chat template exactly as
the student will be prompted, finds every segment's text inside the rendered string, and
maps character labels to tokens with the fast tokenizer's offset mapping.

Formats (detected per record, or forced with ``--format``):

- ``deepcoder``: our Trajectory record (`docs/architecture.md`, `deepcoder_core/records.py`); the step structure (thought,
  action, final answer) is located inside each assistant message and kept as ``parts``.
- ``openai``: ``{"messages": [...]}`` chat with ``tool_calls`` and ``tool`` results.
- ``fireact``: FireAct / Alpaca ``{"instruction", "input", "output"}``.
- ``sharegpt``: ``{"conversations": [{"from", "value"}]}`` (ToolBench, AgentInstruct).
- ``text``: ``{"text": "..."}``; no chat template, the text is tokenized as it is.

Conventions every detector follows: a marker (``Thought:``, ``Action:``, ...) belongs to
the span it opens; whitespace between two spans belongs to the earlier one; everything
before the first assistant message (the prompt) is type 0.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .chat_template import CHATML_TEMPLATE, ChatRenderer
from .protocols import Span, SpanType

FORMATS = ("deepcoder", "openai", "fireact", "sharegpt", "text")

# Tags a model itself emits around reasoning, tool calls and (as the template shows them)
# tool results; the chat template may insert them around text, so they take the span type.
TAG_TYPES = (
    ("<think>", "</think>", SpanType.REASONING),
    ("<tool_call>", "</tool_call>", SpanType.ACTION),
    ("<tool_response>", "</tool_response>", SpanType.OBSERVATION),
)


class RecordError(ValueError):
    """A record that cannot be turned into segments; the message names the field."""


def _field(
    record: dict[str, Any], name: str, kind: type, what: str, *, empty_ok: bool = True
) -> Any:
    """``record[name]``, present and of ``kind``; RecordError naming the field otherwise."""
    value = record.get(name)
    if value is not None:
        _typed(value, kind, name)
    if value is None or not (empty_ok or value):
        raise RecordError(f"missing field '{name}' ({what})")
    return value


def _typed(value: Any, kind: type | tuple[type, ...], where: str) -> Any:
    """``value`` when it is a ``kind`` (bool is not taken for int); RecordError otherwise."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds):
        return value
    expected = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
    raise RecordError(f"field '{where}' has type {type(value).__name__}, expected {expected}")


@dataclass
class Segment:
    """A piece of a chat: one message's content, or one tool call's name or arguments.

    ``message`` groups segments into chat messages. ``kind`` is a span type fixed by the data
    format itself (a tool call is an action, a tool result an observation); ``parts`` are
    typed character ranges known from our own step structure, used by the ``structured``
    detector. ``prompt`` marks messages before the first assistant turn.
    """

    role: str  # system | user | assistant | tool | text
    text: str
    message: int = 0
    field: str = "content"  # content | tool_call.name | tool_call.arguments
    kind: SpanType | None = None
    parts: tuple[Span, ...] = ()
    prompt: bool = False


@dataclass
class Parsed:
    """One input record as segments plus the example metadata of the processed dataset."""

    segments: list[Segment]
    format: str
    meta: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------- formats


def detect_format(record: dict[str, Any]) -> str:
    """The format of one record, from its keys (the parser then checks their types);
    RecordError when none fits."""
    if "steps" in record and ("problem_id" in record or "schema" in record):
        return "deepcoder"
    if record.get("conversations") is not None:
        return "sharegpt"
    if record.get("messages") is not None:
        return "openai"
    if "instruction" in record and "output" in record:
        return "fireact"
    if record.get("text") is not None:
        return "text"
    keys = ", ".join(sorted(record)[:8]) or "none"
    raise RecordError(
        f"unknown record format (keys: {keys}); expected steps (deepcoder), messages (openai), "
        "conversations (sharegpt), instruction/output (fireact) or text"
    )


def parse_record(record: dict[str, Any], fmt: str = "auto") -> Parsed:
    """Segments and metadata of one record in ``fmt`` (``auto``: detected)."""
    if fmt == "auto":
        fmt = detect_format(record)
    parser = _PARSERS.get(fmt)
    if parser is None:
        raise RecordError(f"unknown format {fmt!r}; formats: auto, {', '.join(FORMATS)}")
    segments = parser(record)
    _mark_prompt(segments)
    if not any(seg.text for seg in segments if not seg.prompt):
        raise RecordError("empty record: no assistant text after the prompt")
    success = _typed(record.get("success"), (bool, type(None)), "success")
    meta = {
        "trajectory_id": str(record.get("id") or record.get("trajectory_id") or ""),
        "problem_id": str(record.get("problem_id") or ""),
        "difficulty": str(record.get("difficulty") or ""),
        "category": str(record.get("category") or ""),
        # formats without a verdict are curated demonstrations: count them as successful
        "success": True if success is None else bool(success),
    }
    return Parsed(segments, fmt, meta)


def _mark_prompt(segments: list[Segment]) -> None:
    """Messages before the first assistant message are the prompt (type 0)."""
    for seg in segments:
        if seg.role in ("assistant", "text"):
            return
        seg.prompt = True


def _text(value: Any, where: str) -> str:
    """Message content as text: a string, None, or OpenAI content parts."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = [p.get("text", "") for p in value if isinstance(p, dict)]
        return "".join(t for t in texts if isinstance(t, str))
    raise RecordError(f"field '{where}' has type {type(value).__name__}, expected str or list")


def _think(reasoning: str | None, content: str) -> str:
    """Reasoning returned apart (Groq ``parsed``, DeepSeek ``reasoning_content``) back in ``<think>``."""
    if not reasoning or not reasoning.strip() or reasoning.strip() in content:
        return content
    return f"<think>\n{reasoning.strip()}\n</think>\n\n{content.lstrip()}"


# ---- deepcoder (our Trajectory records)

_THOUGHT_LABEL = re.compile(r"(?:Thought|Thinking|Reasoning)\s*\d*\s*:\s*$")
_ACTION_LABEL = re.compile(r"^[ \t]*Action\s*\d*\s*:", re.MULTILINE)
_ANSWER_LABEL = re.compile(r"^[ \t]*Final Answer\s*:", re.MULTILINE)
_OPEN_FENCE = re.compile(r"```[\w+.-]*[ \t]*\n?$")
_CLOSE_FENCE = re.compile(r"[ \t]*\n?[ \t]*```")


def step_parts(
    content: str, step: dict[str, Any], final_answer: str | None, last: bool
) -> tuple[Span, ...]:
    """Typed ranges of one assistant message, located from the step's own fields.

    The thought (with its ``Thought:`` label and any ``<think>`` block) is reasoning, the
    ``Action:`` line through the action input (and its closing fence) is the action, and
    ``Final Answer:`` to the end is the answer. Gaps take the type of the range before them
    (confidence 0.5 unless they are whitespace); text before any located range is reasoning.
    """
    pieces: list[tuple[int, int, SpanType]] = []
    cur = 0
    start = content.find("<think>")
    if start != -1:
        end = content.find("</think>", start)
        end = len(content) if end == -1 else end + len("</think>")
        pieces.append((start, end, SpanType.REASONING))
        cur = end
    thought = (step.get("thought") or "").strip()
    if thought:
        pos = content.find(thought, cur)
        if pos != -1:
            label = _THOUGHT_LABEL.search(content, max(cur, pos - 40), pos)
            begin = label.start() if label else pos
            pieces.append((begin, pos + len(thought), SpanType.REASONING))
            cur = pos + len(thought)
    action = step.get("action")
    if isinstance(action, dict):
        label = _ACTION_LABEL.search(content, cur)
        text = str(action.get("input") or "").strip()
        pos = content.find(text, label.end() if label else cur) if text else -1
        begin = label.start() if label else (pos if pos != -1 else -1)
        if begin != -1:
            if pos != -1:
                end = pos + len(text)
                fence = _CLOSE_FENCE.match(content, end)
                end = fence.end() if fence else end
            else:
                end = len(content)
            pieces.append((begin, end, SpanType.ACTION))
            cur = end
    elif last or final_answer:
        label = _ANSWER_LABEL.search(content, cur)
        begin = label.start() if label else -1
        if begin == -1 and final_answer and final_answer.strip():
            pos = content.find(final_answer.strip(), cur)
            if pos != -1:
                fence = _OPEN_FENCE.search(content, cur, pos)
                begin = fence.start() if fence else pos
        if begin != -1:
            pieces.append((begin, len(content), SpanType.ANSWER))
    if not pieces:
        # nothing of the step is in its text (an unparsable reply): no span to learn from
        return (Span(0, len(content), SpanType.OTHER, 1.0),) if content else ()
    return fill_gaps(content, pieces, leading=SpanType.REASONING)


def fill_gaps(
    text: str, pieces: list[tuple[int, int, SpanType]], leading: SpanType
) -> tuple[Span, ...]:
    """Cover ``text`` with spans: located ranges at confidence 1, gaps by the rule above."""
    spans: list[Span] = []
    cur = 0
    for begin, end, kind in sorted(pieces):
        begin = max(begin, cur)
        if end <= begin:
            continue
        if begin > cur:
            gap = text[cur:begin]
            conf = 1.0 if gap.isspace() else 0.5
            spans.append(Span(cur, begin, spans[-1].type if spans else leading, conf))
        spans.append(Span(begin, end, kind, 1.0))
        cur = end
    if cur < len(text):
        gap = text[cur:]
        conf = 1.0 if gap.isspace() else 0.5
        kind = spans[-1].type if spans else leading
        spans.append(Span(cur, len(text), kind, conf))
    return normalize_spans(text, spans)


def _parse_deepcoder(record: dict[str, Any]) -> list[Segment]:
    steps = _field(record, "steps", list, "a list of steps")
    if not steps:
        raise RecordError("empty steps: the trajectory has no step")
    messages = _field(record, "messages", list, "the chat with the prompt", empty_ok=False)
    final_answer = _typed(record.get("final_answer"), (str, type(None)), "final_answer")
    segments: list[Segment] = []
    index = 0
    while index < len(messages) and _role(messages[index], index) != "assistant":
        msg = messages[index]
        segments.append(
            Segment(
                _role(msg, index), _text(msg.get("content"), f"messages[{index}].content"), index
            )
        )
        index += 1
    if not segments:
        raise RecordError("messages: no prompt before the first assistant message")
    # The exact chat when it is there: assistant replies, each followed by its observation.
    replies: list[str] = []
    observations: list[str | None] = []
    for i in range(index, len(messages)):
        msg = messages[i]
        if _role(msg, i) == "assistant":
            replies.append(_text(msg.get("content"), f"messages[{i}].content"))
            observations.append(None)
        elif replies and observations[-1] is None:
            observations[-1] = _text(msg.get("content"), f"messages[{i}].content")
    number = len(segments)
    for k, step in enumerate(steps):
        _typed(step, dict, f"steps[{k}]")
        for name in ("thought", "reasoning"):
            _typed(step.get(name), (str, type(None)), f"steps[{k}].{name}")
        if k < len(replies):
            content = replies[k]
        else:
            content = step.get("raw")
            if not isinstance(content, str) or not content.strip():
                content = _synthesize_raw(step, final_answer, k == len(steps) - 1)
        content = _think(step.get("reasoning"), content)
        if not content.strip():
            raise RecordError(f"steps[{k}]: empty step (no raw text, thought or action)")
        last = k == len(steps) - 1
        parts = step_parts(content, step, final_answer if last else None, last)
        segments.append(Segment("assistant", content, number, parts=parts))
        number += 1
        observation = step.get("observation")
        if k < len(observations) and observations[k] is not None:
            text = observations[k]
        elif observation is not None:
            text = f"Observation: {observation}"
        else:
            continue
        segments.append(
            Segment("user", text, number, parts=(Span(0, len(text), SpanType.OBSERVATION),))
        )
        number += 1
    return segments


def _synthesize_raw(step: dict[str, Any], final_answer: str | None, last: bool) -> str:
    """A step's text from its fields, for records saved without ``raw`` or ``messages``."""
    lines = []
    if step.get("thought"):
        lines.append(f"Thought: {step['thought']}")
    action = step.get("action")
    if isinstance(action, dict):
        lines.append(f"Action: {action.get('tool', '')}\nAction Input: {action.get('input', '')}")
    elif last and final_answer:
        lines.append(f"Final Answer: {final_answer}")
    return "\n".join(lines)


def _role(msg: Any, index: int) -> str:
    _typed(msg, dict, f"messages[{index}]")
    role = msg.get("role")
    if role is None:
        raise RecordError(f"messages[{index}]: missing field 'role'")
    return _typed(role, str, f"messages[{index}].role")


# ---- openai chat


def _parse_openai(record: dict[str, Any]) -> list[Segment]:
    messages = _field(record, "messages", list, "a non-empty list", empty_ok=False)
    segments: list[Segment] = []
    for i, msg in enumerate(messages):
        role = {"developer": "system", "function": "tool", "ipython": "tool"}.get(
            _role(msg, i), _role(msg, i)
        )
        content = _text(msg.get("content"), f"messages[{i}].content")
        if role == "assistant":
            reasoning = msg.get("reasoning_content") or msg.get("reasoning")
            content = _think(reasoning if isinstance(reasoning, str) else None, content)
        kind = SpanType.OBSERVATION if role == "tool" else None
        segments.append(Segment(role, content, i, kind=kind))
        calls = _typed(msg.get("tool_calls") or [], list, f"messages[{i}].tool_calls")
        for j, call in enumerate(calls):
            function = call.get("function", call) if isinstance(call, dict) else None
            if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                raise RecordError(f"messages[{i}].tool_calls[{j}]: missing function name")
            arguments = function.get("arguments", "")
            if not isinstance(arguments, str):
                import json

                arguments = json.dumps(arguments, ensure_ascii=False)
            for name, text in (("name", function["name"]), ("arguments", arguments)):
                segments.append(
                    Segment("assistant", text, i, field=f"tool_call.{name}", kind=SpanType.ACTION)
                )
    return segments


# ---- sharegpt (ToolBench, AgentInstruct)

_SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "model": "assistant",
    "function_call": "assistant",
    "function": "tool",
    "observation": "tool",
    "tool": "tool",
    "function_response": "tool",
}


def _parse_sharegpt(record: dict[str, Any]) -> list[Segment]:
    turns = _field(record, "conversations", list, "a non-empty list", empty_ok=False)
    segments: list[Segment] = []
    if isinstance(record.get("system"), str) and record["system"]:
        segments.append(Segment("system", record["system"], 0))
    for i, turn in enumerate(turns):
        _typed(turn, dict, f"conversations[{i}]")
        speaker = turn.get("from", turn.get("role"))
        value = turn.get("value", turn.get("content"))
        role = _SHAREGPT_ROLES.get(str(speaker).lower())
        if role is None:
            raise RecordError(f"conversations[{i}]: unknown speaker {speaker!r}")
        text = _text(value, f"conversations[{i}].value")
        if str(speaker).lower() == "function_call":
            kind = SpanType.ACTION
        elif role == "tool":
            kind = SpanType.OBSERVATION
        else:
            kind = None
        segments.append(Segment(role, text, len(segments), kind=kind))
    return segments


# ---- fireact / alpaca, plain text


def _parse_fireact(record: dict[str, Any]) -> list[Segment]:
    instruction = _field(record, "instruction", str, "text")
    output = _field(record, "output", str, "text")
    extra = record.get("input")
    prompt = instruction + (f"\n\n{extra}" if isinstance(extra, str) and extra.strip() else "")
    return [Segment("user", prompt, 0), Segment("assistant", output, 1)]


def _parse_text(record: dict[str, Any]) -> list[Segment]:
    text = _field(record, "text", str, "the text to tokenize")
    return [Segment("text", text, 0)]


_PARSERS = {
    "deepcoder": _parse_deepcoder,
    "openai": _parse_openai,
    "sharegpt": _parse_sharegpt,
    "fireact": _parse_fireact,
    "text": _parse_text,
}


# ---------------------------------------------------------------------------- spans


def normalize_spans(text: str, spans: list[Span]) -> tuple[Span, ...]:
    """Sorted, non-overlapping spans; whitespace at the start of a span moves to the span
    before it, neighbours of one type merge (lowest confidence kept)."""
    if len(spans) == 1:  # the common case (a whole message of one type) needs no sorting
        span = spans[0]
        start, end = max(span.start, 0), min(span.end, len(text))
        if end <= start:
            return ()
        kind = span.type if type(span.type) is SpanType else SpanType(span.type)
        return (Span(start, end, kind, span.confidence),)
    out: list[Span] = []
    for span in sorted(spans, key=lambda s: (s.start, -s.end)):
        start = max(span.start, out[-1].end if out else 0)
        end = min(span.end, len(text))
        if end <= start:
            continue
        if out and out[-1].end == start and text[start].isspace():
            # leading whitespace goes to the span before (the blank line after a block)
            piece = text[start:end]
            lead = len(piece) - len(piece.lstrip())
            prev = out[-1]
            out[-1] = Span(prev.start, start + lead, prev.type, prev.confidence)
            start += lead
            if end <= start:
                continue
        if out and out[-1].end == start and out[-1].type == span.type:
            prev = out[-1]
            out[-1] = Span(prev.start, end, prev.type, min(prev.confidence, span.confidence))
            continue
        kind = span.type if type(span.type) is SpanType else SpanType(span.type)
        out.append(Span(start, end, kind, span.confidence))
    return tuple(out)


def detect_spans(detector: Any, segments: list[Segment]) -> list[tuple[Span, ...]]:
    """Spans per segment (ranges of each segment's text) from ``detector``.

    Detectors with ``detect_segments`` see every segment with its role; the others see the
    text of each non-prompt segment whose type the format does not already fix.
    """
    if hasattr(detector, "detect_segments"):
        found = detector.detect_segments(segments)
        if len(found) != len(segments):
            raise ValueError(
                f"span detector returned {len(found)} span lists for {len(segments)} segments"
            )
        # a segment's own parts come normalized (fill_gaps): passed on as they are
        return [
            spans if spans is seg.parts and spans else normalize_spans(seg.text, list(spans))
            for seg, spans in zip(segments, found, strict=False)
        ]
    out = []
    for seg in segments:
        if not seg.text:
            out.append(())
        elif seg.prompt:
            out.append((Span(0, len(seg.text), SpanType.OTHER, 1.0),))
        elif seg.kind is not None:
            out.append((Span(0, len(seg.text), seg.kind, 1.0),))
        else:
            out.append(normalize_spans(seg.text, list(detector.detect(seg.text))))
    return out


# ---------------------------------------------------------------------------- rendering


def template_supports_tools(tokenizer: Any) -> bool:
    template = getattr(tokenizer, "chat_template", None) or ""
    return "tool_calls" in template and "tool" in template


def build_messages(segments: list[Segment], *, tools: bool) -> list[dict[str, Any]]:
    """Chat messages from segments. Without template support for tools, tool calls become
    ``Action:`` lines and tool results user messages, so their text is still rendered."""
    messages: list[dict[str, Any]] = []
    last = None
    for seg in segments:
        if seg.message != last:
            role = seg.role
            if role == "tool" and not tools:
                role = "user"
            messages.append({"role": role, "content": ""})
            last = seg.message
        msg = messages[-1]
        if seg.field == "content":
            msg["content"] += seg.text
        elif seg.field == "tool_call.name":
            if tools:
                msg.setdefault("tool_calls", []).append(
                    {"type": "function", "function": {"name": seg.text, "arguments": ""}}
                )
            else:
                sep = "\n" if msg["content"] else ""
                msg["content"] += f"{sep}Action: {seg.text}"
        elif seg.field == "tool_call.arguments":
            if tools:
                msg["tool_calls"][-1]["function"]["arguments"] = seg.text
            else:
                msg["content"] += f"\nAction Input: {seg.text}"
    return messages


def render(segments: list[Segment], tokenizer: Any) -> str:
    """The text the student sees: the chat template applied to the messages (``text``: as is)."""
    if segments and segments[0].role == "text":
        return "".join(seg.text for seg in segments)
    messages = build_messages(segments, tools=template_supports_tools(tokenizer))
    template = None if getattr(tokenizer, "chat_template", None) else CHATML_TEMPLATE
    return tokenizer.apply_chat_template(messages, tokenize=False, chat_template=template)


def render_many(
    chats: list[list[Segment]], tokenizer: Any, renderer: ChatRenderer | None = None
) -> list[str | Exception]:
    """:func:`render` for many chats in one go (through ``renderer`` when given, built once per
    tokenizer); a chat the template rejects gets its exception in its place."""
    out: list[str | Exception] = [""] * len(chats)
    batch = [i for i, segs in enumerate(chats) if segs and segs[0].role != "text"]
    for i, segs in enumerate(chats):
        if not (segs and segs[0].role != "text"):
            out[i] = "".join(seg.text for seg in segs)
    if not batch:
        return out
    tools = template_supports_tools(tokenizer)
    template = None if getattr(tokenizer, "chat_template", None) else CHATML_TEMPLATE
    messages = [build_messages(chats[i], tools=tools) for i in batch]
    try:
        if renderer is not None:
            rendered = renderer.render(messages)
        else:
            rendered = tokenizer.apply_chat_template(
                messages, tokenize=False, chat_template=template
            )
        for i, text in zip(batch, rendered, strict=True):
            out[i] = text
    except Exception:  # one chat broke the batch: render one by one to find it
        for i in batch:
            try:
                out[i] = render(chats[i], tokenizer)
            except Exception as exc:
                out[i] = exc
    return out


def prompt_end(rendered: str, segments: list[Segment]) -> int:
    """Where the prompt's last text ends in ``rendered`` (0 when the template changed it)."""
    cursor = 0
    for seg in segments:
        if not seg.prompt:
            break
        if seg.text:
            pos = rendered.find(seg.text, cursor)
            if pos == -1:
                return 0
            cursor = pos + len(seg.text)
    return cursor


@dataclass
class Located:
    """Where the segments landed in the rendered text, and what the template left out."""

    ranges: list[tuple[int, int] | None]  # rendered [start, end) of each segment
    prompt_end: int  # rendered position after the prompt (types below are forced to 0)
    missing_chars: int  # segment characters the template did not render


def locate(
    rendered: str,
    segments: list[Segment],
    spans: list[tuple[Span, ...]],
    labels: Any,
    confidence: Any,
) -> Located:
    """Find each segment in ``rendered`` (in order) and write its spans into ``labels``/``confidence``.

    A segment is looked up whole first; when the template changed it (Qwen3 drops the
    ``<think>`` block of earlier turns, templates strip whitespace) each span is looked up
    on its own, stripped, and spans the template left out are counted as missing.
    """
    ranges: list[tuple[int, int] | None] = []
    cursor = 0
    prompt_end = 0
    missing = 0
    for seg, seg_spans in zip(segments, spans, strict=False):
        text = seg.text
        if not text:
            ranges.append(None)
            continue
        pos = rendered.find(text, cursor)
        if pos != -1:
            for span in seg_spans:
                labels[pos + span.start : pos + span.end] = int(span.type)
                confidence[pos + span.start : pos + span.end] = span.confidence
            ranges.append((pos, pos + len(text)))
            cursor = pos + len(text)
        else:
            first = last = None
            for span in seg_spans:
                piece = text[span.start : span.end]
                stripped = piece.strip()
                if not stripped:
                    continue
                at = rendered.find(stripped, cursor)
                if at == -1 and "</think>" in stripped:
                    # templates that drop earlier turns' thinking keep what follows </think>
                    stripped = stripped.rsplit("</think>", 1)[1].strip()
                    at = rendered.find(stripped, cursor) if stripped else -1
                if at == -1:
                    missing += len(piece)
                    continue
                missing += len(piece.strip()) - len(stripped)
                end = at + len(stripped)
                tail = piece[len(piece.rstrip()) :]
                if tail and rendered.startswith(tail, end):
                    end += len(tail)  # the whitespace after the piece came along
                labels[at:end] = int(span.type)
                confidence[at:end] = span.confidence
                first = at if first is None else first
                last = cursor = end
            ranges.append((first, last) if first is not None else None)
        if seg.prompt and ranges[-1] is not None:
            prompt_end = ranges[-1][1]
    # Tags the template added around model text take the type of what they wrap.
    for open_tag, close_tag, kind in TAG_TYPES:
        start = rendered.find(open_tag, prompt_end)
        while start != -1:
            end = rendered.find(close_tag, start)
            end = len(rendered) if end == -1 else end + len(close_tag)
            while end < len(rendered) and rendered[end] in "\n " and labels[end] == 0:
                end += 1  # the blank line a template puts after the tag goes with it
            window = labels[start:end]
            window[window == 0] = int(kind)
            start = rendered.find(open_tag, end)
    return Located(ranges, prompt_end, missing)


def token_spans(offsets: Any, labels: Any, confidence: Any, special: Any) -> tuple[Any, Any]:
    """Per-token span type and confidence from per-character arrays.

    A token takes the label of its last character (a leading space belongs to the word it
    starts); special tokens and tokens without characters are type 0, confidence 1.
    """
    import numpy as np

    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    ends = offsets[:, 1]
    if len(labels) == 0:
        return np.zeros(len(ends), np.int8), np.ones(len(ends), np.float32)
    real = (ends > offsets[:, 0]) & ~special
    # a real token ends at 1..len(labels); the others may point anywhere, np.where drops them
    index = np.minimum(ends - 1, len(labels) - 1)
    types = np.where(real, labels[index], 0).astype(np.int8, copy=False)
    conf = np.where(real, confidence[index], 1.0).astype(np.float32, copy=False)
    return types, conf


# ---------------------------------------------------------------------------- flat text


def flatten(
    segments: list[Segment], spans: list[tuple[Span, ...]], *, system: bool = False
) -> tuple[str, tuple[Span, ...]]:
    """One plain text of the chat (messages joined by newlines) with its spans shifted into it.

    System messages are left out unless ``system``: their format instructions would otherwise
    read as a trajectory. Used to export FireAct-style text and to measure detectors on it.
    """
    chunks: list[str] = []
    out: list[Span] = []
    pos = 0
    last = None
    for seg, seg_spans in zip(segments, spans, strict=False):
        if seg.role == "system" and not system:
            continue
        if seg.field != "content":
            continue
        if last is not None and seg.message != last and chunks:
            chunks.append("\n")
            out.append(Span(pos, pos + 1, out[-1].type if out else SpanType.OTHER, 1.0))
            pos += 1
        last = seg.message
        chunks.append(seg.text)
        out.extend(Span(pos + s.start, pos + s.end, s.type, s.confidence) for s in seg_spans)
        pos += len(seg.text)
    text = "".join(chunks)
    return text, normalize_spans(text, out)


def char_labels(text: str, spans: tuple[Span, ...] | list[Span]) -> Any:
    import numpy as np

    labels = np.zeros(len(text), np.int8)
    for span in spans:
        labels[span.start : span.end] = int(span.type)
    return labels


def compare_tokens(truth: Any, predicted: Any) -> dict[str, Any]:
    """Token accuracy and per-type precision/recall of ``predicted`` against ``truth`` (int arrays)."""
    import numpy as np

    truth = np.asarray(truth)
    predicted = np.asarray(predicted)
    total = int(truth.size)
    correct = int((truth == predicted).sum())
    per_type = {}
    for kind in SpanType:
        t = truth == int(kind)
        p = predicted == int(kind)
        hit = int((t & p).sum())
        per_type[kind.name.lower()] = {
            "tokens": int(t.sum()),
            "precision": round(hit / int(p.sum()), 4) if p.any() else None,
            "recall": round(hit / int(t.sum()), 4) if t.any() else None,
        }
    return {
        "tokens": total,
        "accuracy": round(correct / total, 4) if total else None,
        "per_type": per_type,
    }


def detector_accuracy(
    cases: list[tuple[str, tuple[Span, ...]]], tokenizer: Any, detector: Any
) -> dict[str, Any]:
    """Token accuracy of ``detector.detect`` on flat texts against their true spans.

    Each text is encoded with ``tokenizer`` (offsets), both span sets are mapped to tokens
    with the same rule as processing, and the results are compared token by token.
    """
    import numpy as np

    truth_all, predicted_all = [], []
    encodings = tokenizer.backend_tokenizer.encode_batch(
        [text for text, _ in cases], add_special_tokens=False
    )
    for (text, truth), enc in zip(cases, encodings, strict=True):
        offsets = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)
        none = np.zeros(len(offsets), bool)
        ones = np.ones(len(text), np.float32)
        truth_tokens, _ = token_spans(offsets, char_labels(text, truth), ones, none)
        predicted = normalize_spans(text, list(detector.detect(text)))
        predicted_tokens, _ = token_spans(offsets, char_labels(text, predicted), ones, none)
        truth_all.append(truth_tokens)
        predicted_all.append(predicted_tokens)
    result = compare_tokens(np.concatenate(truth_all), np.concatenate(predicted_all))
    result["texts"] = len(cases)
    return result
