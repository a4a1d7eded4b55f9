"""Segments -> the text the student sees: its tokenizer's chat template applied to the chat.

Templates without tool support get tool calls as ``Action:``/``Action Input:`` lines and tool
results as user turns, so their text is still rendered; tokenizers without a template get
ChatML. ``text`` records are taken as they are.
"""

from __future__ import annotations

from typing import Any

from ..chat_template import CHATML_TEMPLATE, ChatRenderer
from .segments import Segment


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
