"""The agent loop: :class:`AgentRun` turns teacher replies and tool results into a Trajectory.

:class:`AgentRun` is one trajectory as a state machine (``messages`` -> teacher ->
``advance``), so a generator can drive many runs with one batched teacher call;
:func:`run_agent` drives one with ``teacher.complete``. Each reply is read by
:func:`~deepcoder_core.agent.react.parse_step`: an action runs its tool (in a thread, with
the agent's timeout) and the result comes back as an ``Observation:`` user message; a reply
that cannot be understood gets a format hint as its observation; a ``Final Answer:`` ends
the run. ``finish()`` checks the answer against the problem's tests and returns the
:class:`~deepcoder_core.records.Trajectory` record as the dict written to JSONL.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

from ..protocols import Completion, Observation, Usage
from ..react_format import STOP
from ..records import Action, Step, TeacherInfo, Trajectory
from .react import defines_entry_point, parse_step, reply_code_blocks, tool_calls_from, tool_name
from .scaffold import Request, SkeletonStep, exemplars_block, majority_choice

if TYPE_CHECKING:
    from ..config import AgentConfig, Config
    from ..problems import Problem
    from ..protocols import Teacher, Tool

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


def system_prompt(
    tools: dict[str, Tool], template: str | None = None, example: str | None = None
) -> str:
    """The ReAct system prompt; a custom template may use ``{tools}``, ``{tool_names}`` and
    ``{example}`` (``example``: what replaces it, default the built-in worked example)."""
    listing = "\n".join(
        f"- {name}: {getattr(tool, 'description', '')}" for name, tool in tools.items()
    )
    names = ", ".join(tools) or "none"
    template = template or DEFAULT_SYSTEM_PROMPT
    if example is None:
        example = EXAMPLE if "python" in tools else ""
    return (
        template.replace("{tools}", listing or "(none)")
        .replace("{tool_names}", names)
        .replace("{example}", example)
    )


def problem_message(problem: Problem) -> str:
    """The user message that states the problem (and the function the answer must define)."""
    text = problem.prompt.strip()
    if problem.entry_point:
        text += f"\n\nYour solution must define the function `{problem.entry_point}`."
    return text


def _run_tool(tool: Tool, tool_input: str, timeout: float, session: str | None) -> Observation:
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


def _capped(text: str) -> str:
    if len(text) <= MAX_OBSERVATION_CHARS:
        return text
    cut = len(text) - MAX_OBSERVATION_CHARS
    return text[:MAX_OBSERVATION_CHARS] + f"\n... [{cut} more characters cut]"


def exemplar_prompt(
    problem: Problem, tools: dict[str, Tool], config: AgentConfig, exclude: set[str] | None = None
) -> str | None:
    """The system prompt with ``agent.scaffold``'s worked exemplars for ``problem`` (none of
    them the problem itself or in ``exclude``); None when the scaffold shows no exemplars."""
    if config.scaffold.exemplars <= 0:
        return None
    block = exemplars_block(
        config.scaffold.exemplars, {problem.id, *(exclude or ())}, tools.get("python")
    )
    return system_prompt(tools, config.system_prompt, example=block) if block else None


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
        scaffold: bool = True,
        exclude: set[str] | None = None,
    ) -> None:
        self.problem = problem
        self.teacher_info = dict(teacher_info)
        self.tools = dict(tools)
        self.config = config
        self.sample = sample
        self.id = trajectory_id or f"{problem.id}#{sample}-{uuid.uuid4().hex[:8]}"
        plain = system_prompt(self.tools, config.system_prompt)
        self._messages: list[dict[str, Any]] = [
            {"role": "system", "content": plain},
            {"role": "user", "content": problem_message(problem)},
        ]
        # ``scaffold`` False: this agent acts on its own whatever agent.scaffold says (students)
        self.scaffold = config.scaffold if scaffold else None
        self._teacher_system: str | None = (
            None  # the exemplar prompt, when only the teacher sees it
        )
        shown = exemplar_prompt(problem, self.tools, config, exclude) if self.scaffold else None
        if shown is not None and self.scaffold is not None:
            if self.scaffold.privileged:
                self._teacher_system = shown
            else:
                self._messages[0]["content"] = shown
        self._skeleton: SkeletonStep | None = None
        self._format_errors = 0  # consecutive replies with neither a valid action nor an answer
        self.steps: list[Step] = []
        self.final_answer: str | None = None
        self.error: str | None = None
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0}
        self.done = False
        self._budget_used = 0
        self._started = time.monotonic()
        self._trajectory: Trajectory | None = None
        self._record: dict[str, Any] | None = None

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The chat to send to the teacher next (a copy), with the teacher's own system prompt."""
        chat = [dict(m) for m in self._messages]
        if self._teacher_system is not None:
            chat[0]["content"] = self._teacher_system
        return chat

    @property
    def skeleton(self) -> bool:
        return self.scaffold is not None and self.scaffold.skeleton

    def request(self) -> Request:
        """The next teacher call: the chat, and with the skeleton the part to decode next."""
        if not self.skeleton:
            return Request(self.messages)
        scaffold = self.scaffold
        if self._skeleton is None and scaffold is not None:
            acted = any(s.action is not None and s.observation_ok for s in self.steps)
            last = self.steps[-1].action if self.steps else None
            ran = last is not None and bool(self.steps[-1].observation_ok)
            self._skeleton = SkeletonStep(
                tools=list(self.tools),
                must_act=scaffold.act_first and not acted,
                must_answer=scaffold.answer_after_run
                and ran
                and last is not None
                and last.tool == "python",
                max_new_tokens=self.config.max_new_tokens,
                samples=scaffold.action_samples,
            )
        assert self._skeleton is not None
        return self._skeleton.request(self.messages)

    def take(self, completions: list[Completion]) -> None:
        """Take the teacher's replies to :meth:`request` (one per sample)."""
        if self.done:
            return
        if not self.skeleton:
            self.advance(completions[0])
            return
        try:
            self._take_part(completions)
        except Exception as exc:  # bad teacher output must end the run, not the generator
            self.fail(f"agent error: {type(exc).__name__}: {exc}")

    def _take_part(self, completions: list[Completion]) -> None:
        part = self._skeleton
        assert part is not None
        texts = [c.text if isinstance(c.text, str) else str(c.text or "") for c in completions]
        used = sum(int(getattr(c.usage, "completion_tokens", 0) or 0) for c in completions)
        part.take(texts, used)
        if part.state == "pick":
            part.close(part.candidates[self._pick_candidate(part.candidates)])
        if not part.done:
            return
        self._skeleton = None
        usage = Usage(completion_tokens=part.tokens)
        self._advance(Completion(text=part.text, usage=usage))

    def _pick_candidate(self, candidates: list[str]) -> int:
        """Self-consistency: run each candidate (without the session's state) and keep the
        majority execution result."""
        tool = self.tools.get("python")
        if tool is None:
            return 0
        observations = [
            _run_tool(tool, code, self.config.tool_timeout, None)
            if code.strip()
            else Observation("empty input", ok=False)
            for code in candidates
        ]
        return majority_choice(observations)

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
            parsed.action = {"tool": tool_name(calls[0]["tool"]), "input": calls[0]["input"]}
            parsed.error = None
        content = parsed.text
        if calls and parsed.action and "action" not in content.lower():
            # keep the chat in ReAct text form, so the trajectory reads the same for every teacher
            rendering = f"Action: {parsed.action['tool']}\nAction Input: {parsed.action['input']}"
            content = f"{content}\n{rendering}".strip()
        self._messages.append({"role": "assistant", "content": content})
        step = Step(raw=text, thought=parsed.thought, reasoning=parsed.reasoning)
        self.steps.append(step)

        if parsed.final_answer is not None and parsed.code is not None:
            self.final_answer = parsed.code
            self.done = True
            return
        if parsed.action is not None and not parsed.error:
            self._format_errors = 0
            step.action = Action(tool=parsed.action["tool"], input=parsed.action["input"])
            observation = self._observe(step.action)
        else:
            self._format_errors += 1
            names = ", ".join(self.tools) or "none"
            observation = Observation(
                FORMAT_HINT.format(error=parsed.error, tool_names=names), ok=False
            )
        step.observation = _capped(observation.text)
        step.observation_ok = bool(observation.ok)
        self._messages.append({"role": "user", "content": f"Observation: {step.observation}"})
        self._check_limits()

    def _observe(self, action: Action) -> Observation:
        tool = self.tools.get(action.tool)
        if tool is None:
            names = ", ".join(self.tools) or "none"
            return Observation(f"unknown tool '{action.tool}'; available tools: {names}", ok=False)
        return _run_tool(tool, action.input, self.config.tool_timeout, self.id)

    def _check_limits(self) -> None:
        limit = self.config.max_format_errors
        if limit and self._format_errors >= limit:
            # a model that never writes a valid step would otherwise run to every limit
            self.fail(f"stopped after {self._format_errors} consecutive format errors")
        elif len(self.steps) >= self.config.max_steps:
            self.fail(f"no Final Answer after max_steps={self.config.max_steps} steps")
        elif self._budget_used >= self.config.token_budget:
            self.fail(
                f"no Final Answer within the token budget "
                f"({self._budget_used} >= {self.config.token_budget} completion tokens)"
            )

    def _scaffold_record(self) -> dict[str, Any] | None:
        """What scaffolding this run had (None: none), so a reader knows how it was made."""
        scaffold = self.scaffold
        if scaffold is None or not (scaffold.exemplars or scaffold.skeleton):
            return None
        return {
            "exemplars": scaffold.exemplars if scaffold.exemplars else 0,
            "skeleton": scaffold.skeleton,
            "act_first": scaffold.act_first,
            "action_samples": scaffold.action_samples,
            "privileged": self._teacher_system is not None,
        }

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
            candidates += reply_code_blocks(step.raw)
            if step.action and step.action.tool == "python" and step.action.input.strip():
                candidates.append(step.action.input)
        entry = self.problem.entry_point
        candidates = [c for c in candidates if defines_entry_point(c, entry)] or candidates
        return candidates[-1] if candidates else None

    def finish(self) -> dict[str, Any]:
        """Check the answer, close tool sessions and return the Trajectory record as the dict
        written to JSONL (idempotent: a second call returns the same dict)."""
        if self._record is None:
            self._record = self.finish_trajectory().to_dict()
        return self._record

    def finish_trajectory(self) -> Trajectory:
        """:meth:`finish`, returning the typed :class:`~deepcoder_core.records.Trajectory`."""
        if self._trajectory is not None:
            return self._trajectory
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
                from ..checking import check_solution

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
        self._trajectory = Trajectory(
            id=self.id,
            problem_id=self.problem.id,
            sample=self.sample,
            teacher=TeacherInfo(
                plugin=self.teacher_info.get("plugin"),
                model=self.teacher_info.get("model"),
                params=self.teacher_info.get("params") or {},
            ),
            messages=[dict(m) for m in self._messages],
            teacher_system=self._teacher_system,
            scaffold=self._scaffold_record(),
            steps=list(self.steps),
            final_answer=self.final_answer if self.final_answer is not None else code,
            success=bool(success),
            tests_passed=passed,
            tests_total=total,
            prompt_tokens=self.usage["prompt_tokens"],
            completion_tokens=self.usage["completion_tokens"],
            seconds=round(time.monotonic() - self._started, 3),
            error=self.error,
            category=self.problem.category,
            difficulty=self.problem.difficulty,
        )
        return self._trajectory


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
    check_prefill(teacher, config)
    run = AgentRun(problem, info, tools, config, sample=sample)
    while not run.done:
        request = run.request()
        try:
            completions = [
                teacher.complete(request.messages, **{**params, **request.params})
                for _ in range(request.samples)
            ]
        except Exception as exc:  # network, rate limit, model errors: recorded, run ends
            run.fail(f"teacher error: {type(exc).__name__}: {exc}")
            break
        run.take(completions)
    return run.finish()


def check_prefill(teacher: Any, config: AgentConfig, name: str | None = None) -> None:
    """Skeleton decoding continues partial replies: refuse, before any run, a teacher that cannot."""
    from ..teachers import TeacherError

    if config.scaffold.skeleton and not getattr(teacher, "supports_prefill", False):
        name = name or getattr(teacher, "plugin_name", None) or type(teacher).__name__
        raise TeacherError(
            f"agent.scaffold.skeleton needs a teacher that continues a partial reply (hf); "
            f"teacher '{name}' does not: set agent.scaffold.skeleton=false",
            kind="capability",
            fatal=True,
        )


def build_tools(config: Config) -> dict[str, Tool]:
    """The tools of ``config.tools.enabled``, built through the plugin registry with their options."""
    from ..plugins import build

    return {
        name: build("tool", name, **config.tools.options.get(name, {}))
        for name in config.tools.enabled
    }
