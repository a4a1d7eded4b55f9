"""The Thought / Action / Observation agent that turns a teacher and tools into trajectories.

The loop follows ReAct (Yao et al. 2023, "ReAct: Synergizing Reasoning and Acting in Language
Models"): the teacher writes a ``Thought:``, then either an ``Action:`` with an
``Action Input:`` (the tool runs, its result comes back as an ``Observation:`` user message)
or a ``Final Answer:`` holding the solution in a python code block, which is checked against
the problem's tests.

:class:`AgentRun` is one trajectory as a state machine (``messages`` -> teacher ->
``advance``), so a generator can drive many runs with one batched teacher call.
:func:`parse_step` tolerates what real teachers write: ``<think>`` blocks or a separate
reasoning field, markdown bold and code fences, ``Action``/``Action Input`` spelling
variants, JSON inputs, OpenAI-style tool calls, replies that go on to invent their own
``Observation:`` (cut there), and bare code blocks with no markers at all (small models
answer so: a block defining the entry point is the final answer, another runs as a
``python`` action). Bad teacher output never raises: it becomes a format hint to
the teacher, and at the end a recorded error.
"""

from __future__ import annotations

import ast
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .protocols import Completion, Observation
from .react_format import (
    ACTION,
    ACTION_INPUT,
    FENCE,
    FINAL,
    NEXT_PART,
    OBSERVATION,
    STOP,
    THINK,
    THINK_CLOSE_ONLY,
    THOUGHT,
    TOOL_CALL_TAG,
)

if TYPE_CHECKING:
    from .config import AgentConfig, Config
    from .problems import Problem
    from .protocols import Teacher, Tool

TRAJECTORY_SCHEMA = 1
MAX_OBSERVATION_CHARS = 4000
TOOL_GRACE_SECONDS = 5.0  # beyond the tool's own timeout: its start-up and clean-up

DEFAULT_SYSTEM_PROMPT = """\
You are an expert Python programmer. Solve the coding problem step by step, using tools \
to test your ideas.

You have these tools:
{tools}

Use exactly this format:

Thought: what you know so far and what to do next
Action: the tool to use, one of [{tool_names}]
Action Input: the input for the tool
Observation: the tool's result (written for you; never write it yourself)

Thought/Action/Action Input/Observation may repeat. When you are sure of the solution, write:

Thought: why the solution is correct
Final Answer:
```python
the complete solution: the function with any imports it needs
```{example}"""
"""The ReAct prompt (Yao et al. 2023); ``{example}`` becomes a worked example, as in the
paper's few-shot prompts, when the python tool is enabled."""

EXAMPLE = """

Example (for a different problem):

Thought: I should check what str.split does without arguments.
Action: python
Action Input: print("a  b ".split())
Observation: ['a', 'b']
Thought: split() drops empty strings, so counting its items counts the words.
Final Answer:
```python
def count_words(s):
    return len(s.split())
```"""

FORMAT_HINT = (
    "Invalid format: {error}. Reply with `Thought:` then either `Action:` (one of "
    "{tool_names}) and `Action Input:`, or `Final Answer:` followed by the solution in a "
    "```python code block."
)


# ---------------------------------------------------------------------------- parsing


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


_INPUT_KEYS = ("input", "code", "query", "expression", "action_input", "text", "source")


def _strip_thinking(text: str) -> tuple[str, list[str]]:
    """Text without ``<think>`` blocks, and the blocks' contents.

    A ``</think>`` with no opening tag (chat templates that open it in the prompt) ends a
    block starting at the beginning; an unclosed ``<think>`` runs to the end.
    """
    thoughts = [m.group(1).strip() for m in THINK.finditer(text)]
    text = THINK.sub("", text)
    match = THINK_CLOSE_ONLY.match(text)
    if match:
        thoughts.insert(0, match.group(1).strip())
        text = text[match.end() :]
    return text, [t for t in thoughts if t]


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
            before, _ = _strip_thinking(text[: match.start()])
            if _first_action(before) is not None:
                return text[: match.start()].rstrip(), True
            pos = match.end()
    return text, False


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


def _tool_name(text: str) -> str:
    name = text.strip().strip("`*'\" []").strip()
    name = re.split(r"[\s(\[:]", name, maxsplit=1)[0] if name else name
    return name.lower()


def code_blocks(text: str) -> list[str]:
    """Python code blocks of ``text`` (fences tagged python/py or untagged), in order."""
    return [
        m.group(2).strip("\n")
        for m in FENCE.finditer(text)
        if m.group(1).lower() in ("", "python", "py", "python3")
    ]


def extract_code(text: str, entry_point: str | None = None) -> str | None:
    """The solution code of a final answer: the fenced block defining ``entry_point`` (else the
    last block), or the bare text when it is Python that defines something."""
    blocks = [b for b in code_blocks(text) if b.strip()]
    if blocks:
        if entry_point:
            defining = [b for b in blocks if re.search(rf"\bdef\s+{re.escape(entry_point)}\b", b)]
            if defining:
                return defining[-1]
        return blocks[-1]
    bare = text.strip()
    try:
        tree = ast.parse(bare)
    except (SyntaxError, ValueError):
        return None
    # prose that happens to parse ("hello", "done.") is not code: it must define something
    defines = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Assign, ast.Import)
    return bare if any(isinstance(node, defines) for node in tree.body) else None


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


def parse_step(
    text: str, reasoning: str | None = None, entry_point: str | None = None
) -> ParsedStep:
    """Understand one teacher reply; never raises. See the module docstring for what is tolerated."""
    text = text or ""
    cut, hallucinated = _cut_observation(text)
    body, thinking = _strip_thinking(cut)
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
    step.thought = THOUGHT.sub("", body[:thought_end].strip()).strip()

    if final and (action is None or final.start() < action.start()):
        step.final_answer = body[final.end() :].strip()
        step.code = extract_code(step.final_answer, entry_point)
        if step.code is None:
            step.error = "the Final Answer has no python code"
        return step

    if action is not None:
        tool = _tool_name(action.group(1))
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
        step.thought = THOUGHT.sub("", body[: found["at"]].strip()).strip()
        return _json_step(step, found, entry_point)
    if _implicit_step(step, body, entry_point):
        return step
    step.error = "found neither 'Action:' with 'Action Input:' nor 'Final Answer:'"
    return step


def _implicit_step(step: ParsedStep, body: str, entry_point: str | None) -> bool:
    """Read a reply with no markers but a python block the way small models mean it.

    A block that defines the entry point is the final answer (the text from that block on);
    any other block is run as a ``python`` action. The text before it is the thought.
    """
    blocks = [
        m
        for m in FENCE.finditer(body)
        if m.group(1).lower() in ("", "python", "py", "python3") and m.group(2).strip()
    ]
    if not blocks:
        return False
    defining = [
        m
        for m in blocks
        if entry_point and re.search(rf"\bdef\s+{re.escape(entry_point)}\b", m.group(2))
    ]
    chosen = defining[0] if defining else blocks[0]
    step.thought = THOUGHT.sub("", body[: chosen.start()].strip()).strip()
    code = chosen.group(2).strip("\n")
    if defining:
        step.final_answer = body[chosen.start() :].strip()
        step.code = code
    else:
        step.action = {"tool": "python", "input": code}
    return True


def _until_next_part(text: str) -> str:
    """An unfenced Action Input ends where the next ``Thought:``/``Action:``/``Final Answer:``
    line starts; a fenced one ends with its fence."""
    if text.strip().startswith(("```", "{", '"')):
        return text
    match = NEXT_PART.search(text)
    return text[: match.start()] if match else text


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


def _json_step(step: ParsedStep, found: dict[str, Any], entry_point: str | None) -> ParsedStep:
    tool = _tool_name(str(found["tool"]))
    if str(found["tool"]).lower().replace(" ", "").replace("_", "").startswith("final"):
        answer = _input_from_json(found["input"]) or ""
        step.final_answer = answer
        step.code = extract_code(answer, entry_point)
        if step.code is None:
            step.error = "the Final Answer has no python code"
        return step
    value = found["input"]
    text_input = value if isinstance(value, str) else _input_from_json(value)
    step.action = {"tool": tool, "input": _action_input(text_input or "")}
    return step


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


# ---------------------------------------------------------------------------- the loop


def system_prompt(tools: dict[str, Tool], template: str | None = None) -> str:
    """The ReAct system prompt; a custom template may use ``{tools}``, ``{tool_names}`` and
    ``{example}``."""
    listing = "\n".join(
        f"- {name}: {getattr(tool, 'description', '')}" for name, tool in tools.items()
    )
    names = ", ".join(tools) or "none"
    template = template or DEFAULT_SYSTEM_PROMPT
    example = EXAMPLE if "python" in tools else ""
    return (
        template.replace("{tools}", listing or "(none)")
        .replace("{tool_names}", names)
        .replace("{example}", example)
    )


def problem_message(problem: Problem) -> str:
    text = problem.prompt.strip()
    if problem.entry_point:
        text += f"\n\nYour solution must define the function `{problem.entry_point}`."
    return text


def _run_tool(tool: Tool, tool_input: str, timeout: float, session: str) -> Observation:
    """Run a tool with the agent's timeout; a tool that overruns it or raises gives an error
    observation (the thread of an overrunning tool is left to the tool's own limits)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = tool.run(tool_input, timeout=timeout, session=session)
        except Exception as exc:  # a broken tool is the agent's observation, not a crash
            box["value"] = Observation(f"tool error: {type(exc).__name__}: {exc}", ok=False)

    thread = threading.Thread(target=target, name=f"tool-{tool.name}", daemon=True)
    thread.start()
    thread.join(timeout + TOOL_GRACE_SECONDS)  # the tool enforces `timeout` itself
    if thread.is_alive():
        return Observation(f"tool '{tool.name}' did not answer within {timeout:g} s", ok=False)
    value = box.get("value")
    if not isinstance(value, Observation):
        return Observation(str(value), ok=True)
    return value


class AgentRun:
    """One trajectory: feed ``messages`` to the teacher, give its reply to ``advance``, repeat
    until ``done``, then ``finish()`` for the Trajectory record."""

    def __init__(
        self,
        problem: Problem,
        teacher_info: dict[str, Any],
        tools: dict[str, Tool],
        config: AgentConfig,
        sample: int = 0,
        trajectory_id: str | None = None,
    ) -> None:
        self.problem = problem
        self.teacher_info = dict(teacher_info)
        self.tools = dict(tools)
        self.config = config
        self.sample = sample
        self.id = trajectory_id or f"{problem.id}#{sample}-{uuid.uuid4().hex[:8]}"
        self._messages: list[dict[str, Any]] = [
            {"role": "system", "content": system_prompt(self.tools, config.system_prompt)},
            {"role": "user", "content": problem_message(problem)},
        ]
        self.steps: list[dict[str, Any]] = []
        self.final_answer: str | None = None
        self.error: str | None = None
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0}
        self.done = False
        self._budget_used = 0
        self._started = time.monotonic()
        self._record: dict[str, Any] | None = None

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The chat to send to the teacher next (a copy)."""
        return [dict(m) for m in self._messages]

    def advance(self, completion: Completion | str) -> None:
        """Take one teacher reply: run its action and append the observation, or finish."""
        if self.done:
            return
        if isinstance(completion, str):
            completion = Completion(text=completion)
        try:
            self._advance(completion)
        except Exception as exc:  # bad teacher output must end the run, not the generator
            self.fail(f"agent error: {type(exc).__name__}: {exc}")

    def _advance(self, completion: Completion) -> None:
        text = completion.text if isinstance(completion.text, str) else str(completion.text or "")
        usage = completion.usage
        prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
        completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
        self.usage["prompt_tokens"] += prompt_tokens
        self.usage["completion_tokens"] += completion_tokens
        # a teacher that reports no usage is charged ~4 characters a token against the budget
        self._budget_used += completion_tokens or max(
            1, (len(text) + len(completion.reasoning or "")) // 4
        )

        parsed = parse_step(text, completion.reasoning, self.problem.entry_point)
        calls = tool_calls_from(completion.raw)
        if parsed.action is None and parsed.final_answer is None and calls:
            parsed.action = {"tool": _tool_name(calls[0]["tool"]), "input": calls[0]["input"]}
            parsed.error = None
        content = parsed.text
        if calls and parsed.action and "action" not in content.lower():
            # keep the chat in ReAct text form, so the trajectory reads the same for every teacher
            rendering = f"Action: {parsed.action['tool']}\nAction Input: {parsed.action['input']}"
            content = f"{content}\n{rendering}".strip()
        self._messages.append({"role": "assistant", "content": content})
        step: dict[str, Any] = {
            "thought": parsed.thought,
            "action": None,
            "observation": None,
            "observation_ok": None,
            "raw": text,
            "reasoning": parsed.reasoning,
        }
        self.steps.append(step)

        if parsed.final_answer is not None and parsed.code is not None:
            self.final_answer = parsed.code
            self.done = True
            return
        if parsed.action is not None and not parsed.error:
            step["action"] = dict(parsed.action)
            observation = self._observe(parsed.action["tool"], parsed.action["input"])
        else:
            names = ", ".join(self.tools) or "none"
            observation = Observation(
                FORMAT_HINT.format(error=parsed.error, tool_names=names), ok=False
            )
        text_out = observation.text
        if len(text_out) > MAX_OBSERVATION_CHARS:
            text_out = (
                text_out[:MAX_OBSERVATION_CHARS]
                + f"\n... [{len(observation.text) - MAX_OBSERVATION_CHARS} more characters cut]"
            )
        step["observation"] = text_out
        step["observation_ok"] = bool(observation.ok)
        self._messages.append({"role": "user", "content": f"Observation: {text_out}"})
        self._check_limits()

    def _observe(self, name: str, tool_input: str) -> Observation:
        tool = self.tools.get(name)
        if tool is None:
            names = ", ".join(self.tools) or "none"
            return Observation(f"unknown tool '{name}'; available tools: {names}", ok=False)
        return _run_tool(tool, tool_input, self.config.tool_timeout, self.id)

    def _check_limits(self) -> None:
        if len(self.steps) >= self.config.max_steps:
            self.fail(f"no Final Answer after max_steps={self.config.max_steps} steps")
        elif self._budget_used >= self.config.token_budget:
            self.fail(
                f"no Final Answer within the token budget "
                f"({self._budget_used} >= {self.config.token_budget} completion tokens)"
            )

    def fail(self, error: str) -> None:
        """End the run with a recorded error (teacher failure, limits)."""
        if self.error is None:
            self.error = error
        self.done = True

    def _fallback_code(self) -> str | None:
        """Without a Final Answer, the teacher's last python code is still checked: the last
        fenced block or python tool input, preferring one that defines the entry point."""
        candidates: list[str] = []
        for step in self.steps:
            body, _ = _strip_thinking(_cut_observation(step["raw"])[0])
            candidates += [b for b in code_blocks(body) if b.strip()]
            action = step.get("action")
            if action and action["tool"] == "python" and action["input"].strip():
                candidates.append(action["input"])
        entry = self.problem.entry_point
        if entry:
            defining = [c for c in candidates if re.search(rf"\bdef\s+{re.escape(entry)}\b", c)]
            candidates = defining or candidates
        return candidates[-1] if candidates else None

    def finish(self) -> dict[str, Any]:
        """Check the answer, close tool sessions and return the Trajectory record (idempotent)."""
        if self._record is not None:
            return self._record
        self.done = True
        code = self.final_answer
        if code is None:
            if self.error is None:
                self.error = "the run ended without a Final Answer"
            code = self._fallback_code()
        passed = total = 0
        success = False
        if code is not None:
            try:
                from .checking import check_solution

                result = check_solution(self.problem, code, timeout=self.config.tool_timeout)
                passed, total, success = result.passed, result.total, result.success
            except Exception as exc:  # the checker failing must not lose the trajectory
                self.error = self.error or f"checking failed: {type(exc).__name__}: {exc}"
        for tool in self.tools.values():
            close = getattr(tool, "close", None)
            if callable(close):
                try:
                    close(self.id)
                except Exception:  # closing a session is best effort; the record matters more
                    pass
        self._record = {
            "schema": TRAJECTORY_SCHEMA,
            "id": self.id,
            "problem_id": self.problem.id,
            "sample": self.sample,
            "teacher": {
                "plugin": self.teacher_info.get("plugin"),
                "model": self.teacher_info.get("model"),
                "params": self.teacher_info.get("params") or {},
            },
            "messages": self.messages,
            "steps": self.steps,
            "final_answer": self.final_answer if self.final_answer is not None else code,
            "success": bool(success),
            "tests_passed": passed,
            "tests_total": total,
            "usage": dict(self.usage),
            "timing": {
                "seconds": round(time.monotonic() - self._started, 3),
                "steps": len(self.steps),
            },
            "error": self.error,
            "category": self.problem.category,
            "difficulty": self.problem.difficulty,
        }
        return self._record


def run_agent(
    teacher: Teacher,
    problem: Problem,
    tools: dict[str, Tool],
    config: AgentConfig,
    *,
    sample: int = 0,
    params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Drive one :class:`AgentRun` with ``teacher.complete`` and return its Trajectory record."""
    params = dict(params or {})
    params.setdefault("max_new_tokens", config.max_new_tokens)
    params.setdefault("stop", list(STOP))
    info = {
        "plugin": getattr(teacher, "plugin_name", None) or type(teacher).__name__,
        "model": getattr(teacher, "model", None),
        "params": params,
    }
    run = AgentRun(problem, info, tools, config, sample=sample)
    while not run.done:
        try:
            completion = teacher.complete(run.messages, **params)
        except Exception as exc:  # network, rate limit, model errors: recorded, run ends
            run.fail(f"teacher error: {type(exc).__name__}: {exc}")
            break
        run.advance(completion)
    return run.finish()


def build_tools(config: Config) -> dict[str, Tool]:
    """The tools of ``config.tools.enabled``, built through the plugin registry with their options."""
    from .plugins import build

    return {
        name: build("tool", name, **config.tools.options.get(name, {}))
        for name in config.tools.enabled
    }
