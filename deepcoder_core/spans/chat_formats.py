"""Parsers of the chat formats other tools write, and the message readers ours shares.

- ``openai``: ``{"messages": [...]}`` chat with ``tool_calls`` and ``tool`` results.
- ``sharegpt``: ``{"conversations": [{"from", "value"}]}`` (ToolBench, AgentInstruct).
- ``fireact``: FireAct / Alpaca ``{"instruction", "input", "output"}``.
- ``text``: ``{"text": "..."}``; no chat template, the text is tokenized as it is.

Each parser turns one record into segments and the example metadata; a field that is
missing or of the wrong type is a :class:`~deepcoder_core.errors.RecordError` naming it.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import RecordError
from ..protocols import SpanType
from .segments import Segment


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


def record_meta(record: dict[str, Any]) -> dict[str, Any]:
    """The example metadata from a record's optional keys (``id``, ``success``...)."""
    success = _typed(record.get("success"), (bool, type(None)), "success")
    return {
        "trajectory_id": str(record.get("id") or record.get("trajectory_id") or ""),
        "problem_id": str(record.get("problem_id") or ""),
        "difficulty": str(record.get("difficulty") or ""),
        "category": str(record.get("category") or ""),
        # formats without a verdict are curated demonstrations: count them as successful
        "success": True if success is None else bool(success),
    }


def text_of(value: Any, where: str) -> str:
    """Message content as text: a string, None, or OpenAI content parts."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = [p.get("text", "") for p in value if isinstance(p, dict)]
        return "".join(t for t in texts if isinstance(t, str))
    raise RecordError(f"field '{where}' has type {type(value).__name__}, expected str or list")


def role_of(msg: Any, index: int) -> str:
    """The ``role`` of chat message number ``index``."""
    _typed(msg, dict, f"messages[{index}]")
    role = msg.get("role")
    if role is None:
        raise RecordError(f"messages[{index}]: missing field 'role'")
    return _typed(role, str, f"messages[{index}].role")


def with_thinking(reasoning: str | None, content: str) -> str:
    """Reasoning returned apart (Groq ``parsed``, DeepSeek ``reasoning_content``) back in ``<think>``."""
    if not reasoning or not reasoning.strip() or reasoning.strip() in content:
        return content
    return f"<think>\n{reasoning.strip()}\n</think>\n\n{content.lstrip()}"


# ---- openai chat

_OPENAI_ROLES = {"developer": "system", "function": "tool", "ipython": "tool"}


def parse_openai(record: dict[str, Any]) -> tuple[list[Segment], dict[str, Any]]:
    messages = _field(record, "messages", list, "a non-empty list", empty_ok=False)
    segments: list[Segment] = []
    for i, msg in enumerate(messages):
        role = _OPENAI_ROLES.get(role_of(msg, i), role_of(msg, i))
        content = text_of(msg.get("content"), f"messages[{i}].content")
        if role == "assistant":
            reasoning = msg.get("reasoning_content") or msg.get("reasoning")
            content = with_thinking(reasoning if isinstance(reasoning, str) else None, content)
        kind = SpanType.OBSERVATION if role == "tool" else None
        segments.append(Segment(role, content, i, kind=kind))
        calls = _typed(msg.get("tool_calls") or [], list, f"messages[{i}].tool_calls")
        for j, call in enumerate(calls):
            function = call.get("function", call) if isinstance(call, dict) else None
            if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                raise RecordError(f"messages[{i}].tool_calls[{j}]: missing function name")
            arguments = function.get("arguments", "")
            if not isinstance(arguments, str):
                arguments = json.dumps(arguments, ensure_ascii=False)
            for name, text in (("name", function["name"]), ("arguments", arguments)):
                segments.append(
                    Segment("assistant", text, i, field=f"tool_call.{name}", kind=SpanType.ACTION)
                )
    return segments, record_meta(record)


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


def parse_sharegpt(record: dict[str, Any]) -> tuple[list[Segment], dict[str, Any]]:
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
        text = text_of(value, f"conversations[{i}].value")
        if str(speaker).lower() == "function_call":
            kind = SpanType.ACTION
        elif role == "tool":
            kind = SpanType.OBSERVATION
        else:
            kind = None
        segments.append(Segment(role, text, len(segments), kind=kind))
    return segments, record_meta(record)


# ---- fireact / alpaca, plain text


def parse_fireact(record: dict[str, Any]) -> tuple[list[Segment], dict[str, Any]]:
    instruction = _field(record, "instruction", str, "text")
    output = _field(record, "output", str, "text")
    extra = record.get("input")
    prompt = instruction + (f"\n\n{extra}" if isinstance(extra, str) and extra.strip() else "")
    return [Segment("user", prompt, 0), Segment("assistant", output, 1)], record_meta(record)


def parse_text(record: dict[str, Any]) -> tuple[list[Segment], dict[str, Any]]:
    text = _field(record, "text", str, "the text to tokenize")
    return [Segment("text", text, 0)], record_meta(record)
