"""Reading one ReAct teacher reply: :func:`parse_step` and the code and tool-call finders.

:func:`parse_step` tolerates what real teachers write: ``<think>`` blocks or a separate
reasoning field, markdown bold and code fences, ``Action``/``Action Input`` spelling
variants, JSON inputs, replies that go on to invent their own ``Observation:`` (cut there),
and bare code blocks with no markers at all (small models answer so: a block defining the
entry point is the final answer, another runs as a ``python`` action).
:func:`tool_calls_from` reads OpenAI-style tool calls from a completion's ``raw``. Nothing
here raises on bad teacher output: a reply that cannot be understood gets ``error`` set,
which the loop turns into a format hint. The patterns themselves live in
:mod:`deepcoder_core.react_format`.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from typing import Any

from ..react_format import (
    ACTION,
    ACTION_INPUT,
    FENCE,
    FINAL,
    NEXT_PART,
    OBSERVATION,
    THINK,
    THINK_CLOSE_ONLY,
    THOUGHT,
    TOOL_CALL_TAG,
    strip_thinking,
)

PYTHON_TAGS = ("", "python", "py", "python3")  # code fence tags read as python
_INPUT_KEYS = ("input", "code", "query", "expression", "action_input", "text", "source")
NO_ANSWER_CODE = "the Final Answer has no python code"


@dataclass
class ParsedStep:
    """One teacher reply, understood.

    ``text``: the reply up to a self-written ``Observation:`` (what goes back into the chat);
    ``thought``: the text before the action or answer; ``reasoning``: the separate reasoning
    field plus any ``<think>`` blocks; ``action``: ``{"tool", "input"}``; ``final_answer``: the
    text after ``Final Answer:``; ``code``: the python code of the final answer.
    """

    text: str
    thought: str = ""
    reasoning: str | None = None
    action: dict[str, str] | None = None
    final_answer: str | None = None
    code: str | None = None
    error: str | None = None
    hallucinated_observation: bool = False


def parse_step(
    text: str, reasoning: str | None = None, entry_point: str | None = None
) -> ParsedStep:
    """Understand one teacher reply; never raises. See the module docstring for what is tolerated."""
    text = text or ""
    cut, hallucinated = _cut_observation(text)
    body, thinking = strip_thinking(cut)
    reasoning_parts = [r.strip() for r in [reasoning or "", *thinking] if r and r.strip()]
    step = ParsedStep(
        text=cut,
        reasoning="\n\n".join(reasoning_parts) or None,
        hallucinated_observation=hallucinated,
    )

    final = FINAL.search(body)
    action = _first_action(body)
    first = min((m.start() for m in (final, action) if m), default=None)
    thought_end = first if first is not None else len(body)
    step.thought = _thought(body[:thought_end])

    if final and (action is None or final.start() < action.start()):
        return _answer(step, body[final.end() :].strip(), entry_point)

    if action is not None:
        tool = tool_name(action.group(1))
        rest = body[action.end() :]
        marker = ACTION_INPUT.search(rest)
        if marker:
            raw_input = rest[marker.end() :]
        else:
            raw_input = rest  # some models put the input right under the Action line
        if not tool:
            # "Action:" alone on its line followed by JSON or a fenced tool call
            found = _json_action(rest)
            if found:
                return _json_step(step, found, entry_point)
            step.error = "'Action:' names no tool"
            return step
        tool_input = _action_input(_until_next_part(raw_input))
        if not tool_input.strip():
            step.error = f"'Action: {tool}' has an empty Action Input"
        else:
            step.action = {"tool": tool, "input": tool_input}
        return step

    found = _json_action(body)
    if found:
        step.thought = _thought(body[: found["at"]])
        return _json_step(step, found, entry_point)
    if _implicit_step(step, body, entry_point):
        return step
    step.error = "found neither 'Action:' with 'Action Input:' nor 'Final Answer:'"
    return step


def tool_name(text: str) -> str:
    """The tool an ``Action:`` names: unquoted, unbolded, lower case, without arguments."""
    name = text.strip().strip("`*'\" []").strip()
    name = re.split(r"[\s(\[:]", name, maxsplit=1)[0] if name else name
    return name.lower()


def defines_entry_point(code: str, entry_point: str | None) -> bool:
    """Whether ``code`` has a ``def`` of ``entry_point``."""
    if not entry_point:
        return False
    return re.search(rf"\bdef\s+{re.escape(entry_point)}\b", code) is not None


def code_blocks(text: str) -> list[str]:
    """Python code blocks of ``text`` (fences tagged python/py or untagged), in order."""
    return [
        m.group(2).strip("\n") for m in FENCE.finditer(text) if m.group(1).lower() in PYTHON_TAGS
    ]


def reply_code_blocks(raw: str) -> list[str]:
    """The non-empty python blocks a reply wrote itself: outside thinking, before a
    self-written ``Observation:``."""
    body, _ = strip_thinking(_cut_observation(raw)[0])
    return [b for b in code_blocks(body) if b.strip()]


def extract_code(text: str, entry_point: str | None = None) -> str | None:
    """The solution code of a final answer: the fenced block defining ``entry_point`` (else the
    last block), or the bare text when it is Python that defines something."""
    blocks = [b for b in code_blocks(text) if b.strip()]
    if blocks:
        defining = [b for b in blocks if defines_entry_point(b, entry_point)]
        return (defining or blocks)[-1]
    bare = text.strip()
    try:
        tree = ast.parse(bare)
    except (SyntaxError, ValueError):
        return None
    # prose that happens to parse ("hello", "done.") is not code: it must define something
    defines = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Assign, ast.Import)
    return bare if any(isinstance(node, defines) for node in tree.body) else None


def tool_calls_from(raw: Any) -> list[dict[str, str]]:
    """OpenAI-style tool calls found in a completion's ``raw`` (response object, dict, message).

    Returns ``[{"tool", "input", "id"}]``; arguments are decoded like Action Inputs.
    """
    calls = _find_tool_calls(raw)
    out = []
    for call in calls or []:
        call = _as_dict(call)
        function = _as_dict(call.get("function")) or call
        name = function.get("name")
        if not isinstance(name, str):
            continue
        args: Any = function.get("arguments", "")
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else ""
            except json.JSONDecodeError:
                pass
        value = args if isinstance(args, str) else _input_from_json(args)
        out.append({"tool": name, "input": value or "", "id": str(call.get("id") or "")})
    return out


# ---------------------------------------------------------------------------- the parts


def _thought(text: str) -> str:
    return THOUGHT.sub("", text.strip()).strip()


def _answer(step: ParsedStep, answer: str, entry_point: str | None) -> ParsedStep:
    step.final_answer = answer
    step.code = extract_code(answer, entry_point)
    if step.code is None:
        step.error = NO_ANSWER_CODE
    return step


def _outside_thinking(text: str) -> list[tuple[int, int]]:
    """Character ranges of ``text`` that are not inside thinking blocks."""
    spans = [(m.start(), m.end()) for m in THINK.finditer(text)]
    close = THINK_CLOSE_ONLY.match(text)
    if close and not any(s <= close.end() - 1 < e for s, e in spans):
        spans.insert(0, (0, close.end()))
    ranges, pos = [], 0
    for start, end in sorted(spans):
        if start > pos:
            ranges.append((pos, start))
        pos = max(pos, end)
    ranges.append((pos, len(text)))
    return ranges


def _cut_observation(text: str) -> tuple[str, bool]:
    """Cut ``text`` at the first ``Observation:`` the teacher wrote itself after an ``Action:``
    (outside thinking); an observation line before any action is only a recap and stays."""
    for start, end in _outside_thinking(text):
        pos = start
        while (match := OBSERVATION.search(text, pos, end)) is not None:
            before, _ = strip_thinking(text[: match.start()])
            if _first_action(before) is not None:
                return text[: match.start()].rstrip(), True
            pos = match.end()
    return text, False


def _first_action(body: str) -> re.Match[str] | None:
    """The first ``Action:`` line that is not an ``Action Input:`` line."""
    pos = 0
    while True:
        match = ACTION.search(body, pos)
        if match is None:
            return None
        if not ACTION_INPUT.match(body, match.start()):
            return match
        pos = match.end()


def _until_next_part(text: str) -> str:
    """An unfenced Action Input ends where the next ``Thought:``/``Action:``/``Final Answer:``
    line starts; a fenced one ends with its fence."""
    if text.strip().startswith(("```", "{", '"')):
        return text
    match = NEXT_PART.search(text)
    return text[: match.start()] if match else text


def _unfence(text: str) -> str:
    """The content of the first code fence if ``text`` starts with one, else ``text`` stripped."""
    stripped = text.strip()
    if stripped.startswith("```"):
        match = FENCE.match(stripped)
        if match:
            return match.group(2).strip("\n")
    if len(stripped) >= 2 and stripped[0] == stripped[-1] == "`" and "\n" not in stripped:
        return stripped.strip("`")
    return stripped


def _input_from_json(value: Any) -> str | None:
    """A tool input from JSON arguments: a string, or the one string value of an object."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        for key in _INPUT_KEYS:
            if isinstance(value.get(key), str):
                return value[key]
        strings = [v for v in value.values() if isinstance(v, str)]
        if len(strings) == 1:
            return strings[0]
        return json.dumps(value)
    return None


def _action_input(text: str) -> str:
    """Normalize an Action Input: unwrap fences and quotes, read JSON arguments."""
    value = _unfence(text)
    if value[:1] in '{["':
        try:
            decoded = json.loads(value)
        except json.JSONDecodeError:
            return value
        found = _input_from_json(decoded)
        if found is not None:
            return found
    return value


def _json_action(text: str) -> dict[str, Any] | None:
    """An action written as JSON: ``{"action": .., "action_input": ..}`` (LangChain chat agents),
    ``{"name": .., "arguments": ..}`` (tool-call JSON, also inside ``<tool_call>`` tags)."""
    candidates = [(m.start(), m.group(1)) for m in TOOL_CALL_TAG.finditer(text)]
    candidates += [
        (m.start(), m.group(2)) for m in FENCE.finditer(text) if m.group(1).lower() in ("json", "")
    ]
    if text.strip().startswith("{"):
        candidates.append((0, text.strip()))
    for start, candidate in candidates:
        try:
            data = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if not isinstance(data, dict):
            continue
        if isinstance(data.get("action"), str):
            return {"tool": data["action"], "input": data.get("action_input", ""), "at": start}
        if isinstance(data.get("name"), str) and ("arguments" in data or "parameters" in data):
            args = data.get("arguments", data.get("parameters"))
            if isinstance(args, str):
                try:
                    args = json.loads(args)
                except json.JSONDecodeError:
                    pass
            return {"tool": data["name"], "input": args, "at": start}
    return None


def _json_step(step: ParsedStep, found: dict[str, Any], entry_point: str | None) -> ParsedStep:
    if str(found["tool"]).lower().replace(" ", "").replace("_", "").startswith("final"):
        return _answer(step, _input_from_json(found["input"]) or "", entry_point)
    value = found["input"]
    text_input = value if isinstance(value, str) else _input_from_json(value)
    step.action = {"tool": tool_name(str(found["tool"])), "input": _action_input(text_input or "")}
    return step


def _implicit_step(step: ParsedStep, body: str, entry_point: str | None) -> bool:
    """Read a reply with no markers but a python block the way small models mean it.

    A block that defines the entry point is the final answer (the text from that block on);
    any other block is run as a ``python`` action. The text before it is the thought.
    """
    blocks = [
        m for m in FENCE.finditer(body) if m.group(1).lower() in PYTHON_TAGS and m.group(2).strip()
    ]
    if not blocks:
        return False
    defining = [m for m in blocks if defines_entry_point(m.group(2), entry_point)]
    chosen = defining[0] if defining else blocks[0]
    step.thought = _thought(body[: chosen.start()])
    code = chosen.group(2).strip("\n")
    if defining:
        step.final_answer = body[chosen.start() :].strip()
        step.code = code
    else:
        step.action = {"tool": "python", "input": code}
    return True


def _as_dict(obj: Any) -> dict[str, Any]:
    if isinstance(obj, dict):
        return obj
    if hasattr(obj, "model_dump"):
        try:
            return obj.model_dump()
        except Exception:  # a half-built SDK object: read its attributes instead
            pass
    if obj is not None and hasattr(obj, "__dict__"):
        return dict(vars(obj))
    return {}


def _find_tool_calls(raw: Any, depth: int = 0) -> list[Any] | None:
    if raw is None or depth > 4:
        return None
    data = _as_dict(raw)
    if data.get("tool_calls"):
        return list(data["tool_calls"])
    if data.get("message") is not None:
        return _find_tool_calls(data["message"], depth + 1)
    choices = data.get("choices")
    if choices:
        return _find_tool_calls(choices[0], depth + 1)
    return None
