"""Scaffolding that makes a small local model act as an agent: exemplars, the step skeleton,
and self-consistent actions.

A 135M-parameter model given only the ReAct instructions answers in one reply and never
calls a tool. Three aids, each optional (``agent.scaffold``):

- **Exemplars**: worked trajectories of bundled *train* problems (never one of the problem
  being solved, never an eval problem) in the system prompt, as in the few-shot prompts of
  ReAct (Yao et al. 2023). Each shows the shape the agent should copy: a thought, the
  solution run on the problem's own example through the python tool, the real output as
  the observation, then the final answer. With ``privileged`` the exemplars are the
  teacher's only: trajectories record the plain prompt the student will see, and the
  exemplar prompt as ``teacher_system``, so training distils the context away
  (context distillation, Snell et al. 2022, "Learning by Distilling Context").
- **Skeleton decoding**: the step is decoded part by part, with the keywords written for
  the model instead of by it: ``Thought:`` (one line), then ``Action: python`` with an
  ``Action Input:`` python fence, or ``Final Answer:`` with a python fence, each code part
  stopping at its closing fence. The model chooses between acting and answering, except
  where the exemplars' shape decides: ``act_first`` makes the first step an action and
  ``answer_after_run`` makes the step after code that ran the answer (a tiny model left to
  choose re-runs the same code until the step limit). It needs a teacher that continues a
  partial reply (``supports_prefill``: the last chat message is an unfinished assistant turn).
- **Self-consistent actions** (``action_samples`` = k > 1): k candidate code inputs are
  sampled for an action; those that run are grouped by what they print, and the first
  candidate of the largest group is kept (majority of execution results, after Kang et al.
  2025, "Distilling LLM Agent into Small Models with Retrieval and Code Tools").
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..problems import Problem
    from ..protocols import Observation

THOUGHT_TOKENS = 64  # one thought line
CHOICE_TOKENS = 4  # enough to read "Final Answer" or "Action: <tool>"
TOOL_INPUT_TOKENS = 64  # a one-line input of a tool other than python
_EXAMPLE = re.compile(r"Example:\s*(.+?)\s*(?:==|\bis\s+(?:True|False|None)\b)", re.S)


# ---------------------------------------------------------------------------- exemplars


def example_call(problem: Problem) -> str | None:
    """The call of a problem's ``Example: f(x) == y`` line, if it has one on one line."""
    match = _EXAMPLE.search(problem.prompt)
    if match is None or "\n" in match.group(1):
        return None
    call = match.group(1).strip()
    if not problem.entry_point or not call.startswith(problem.entry_point + "("):
        return None
    return call


def exemplar_problems(count: int, exclude: set[str]) -> list[Problem]:
    """The first ``count`` bundled train problems with a runnable example, not in ``exclude``."""
    from ..problems import bundled_problems

    chosen: list[Problem] = []
    for problem in bundled_problems():
        if len(chosen) == count:
            break
        if problem.split != "train" or problem.id in exclude:
            continue
        if problem.canonical_solution and example_call(problem) is not None:
            chosen.append(problem)
    return chosen


def exemplar_text(problem: Problem, observation: str) -> str:
    """One worked trajectory: run the solution on the example, read the output, answer."""
    from .loop import problem_message

    code = (problem.canonical_solution or "").strip()
    call = example_call(problem)
    return (
        f"Problem: {problem_message(problem)}\n\n"
        f"Thought: I will write `{problem.entry_point}` and run it on the example.\n"
        f"Action: python\nAction Input:\n```python\n{code}\n\nprint({call})\n```\n"
        f"Observation: {observation.strip()}\n"
        "Thought: The output is what the example expects, so the function is correct.\n"
        f"Final Answer:\n```python\n{code}\n```"
    )


@lru_cache(maxsize=64)
def _observed(problem_id: str, code: str, run: Any) -> str:
    return run(code)


def exemplars_block(count: int, exclude: set[str], python: Any) -> str:
    """The exemplar section of the system prompt; observations are real runs of ``python``."""
    if count <= 0 or python is None:
        return ""
    parts = []
    for problem in exemplar_problems(count, exclude):
        code = f"{(problem.canonical_solution or '').strip()}\n\nprint({example_call(problem)})"
        observation = _observed(problem.id, code, _RunText(python))
        parts.append(exemplar_text(problem, observation))
    if not parts:
        return ""
    return "\n\nExamples (for other problems):\n\n" + "\n\n".join(parts)


@dataclass(frozen=True)
class _RunText:
    """The text a tool prints for some code (hashable, so a prompt's runs are cached)."""

    tool: Any

    def __call__(self, code: str) -> str:
        result = self.tool.run(code, timeout=10.0, session=None)
        return str(getattr(result, "text", result))

    def __hash__(self) -> int:
        return id(self.tool)


# ---------------------------------------------------------------------------- skeleton


@dataclass
class Request:
    """One teacher call an agent asks for: the chat, per-call params, and how many samples."""

    messages: list[dict[str, Any]]
    params: dict[str, Any] = field(default_factory=dict)
    samples: int = 1

    def key(self) -> tuple[Any, ...]:
        """Calls with equal keys can share one batched teacher call."""
        return tuple(
            sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in self.params.items())
        )


@dataclass
class SkeletonStep:
    """The parts of one step decoded so far; :meth:`request` asks for the next part.

    States: ``thought`` -> ``choice`` (skipped when the step must act) -> ``code`` (python
    action or final answer) or ``input`` (another tool's one-line input) -> ``done``; with
    several action samples ``code`` -> ``pick``, where the agent keeps one with :meth:`close`.
    """

    tools: list[str]
    must_act: bool
    max_new_tokens: int
    must_answer: bool = False
    samples: int = 1
    text: str = "Thought:"
    state: str = "thought"
    branch: str | None = None  # "action" or "final"
    tokens: int = 0
    candidates: list[str] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.state == "done"

    def request(self, chat: list[dict[str, Any]]) -> Request:
        messages = [*chat, {"role": "assistant", "content": self.text}]
        if self.state == "thought":
            return Request(messages, {"stop": ["\n"], "max_new_tokens": THOUGHT_TOKENS})
        if self.state == "choice":
            return Request(messages, {"stop": ["\n"], "max_new_tokens": CHOICE_TOKENS})
        if self.state == "input":
            return Request(messages, {"stop": ["\n"], "max_new_tokens": TOOL_INPUT_TOKENS})
        samples = self.samples if self.branch == "action" else 1
        return Request(messages, {"stop": ["```"], "max_new_tokens": self.max_new_tokens}, samples)

    def take(self, texts: list[str], tokens: int) -> None:
        """Add the model's part (``texts``: one per sample) and move to the next state."""
        self.tokens += tokens
        first = texts[0] if texts else ""
        if self.state == "thought":
            self.text += " " + _one_line(first) if _one_line(first) else ""
            self.text += "\n"
            if self.must_act:
                self._open_action("python")
            elif self.must_answer:
                self._open_final()
            else:
                self.state = "choice"
        elif self.state == "choice":
            choice = first.strip().lower()
            if choice.startswith("final"):
                self._open_final()
            else:
                named = choice.split(":", 1)[1].strip().split()[:1] if ":" in choice else []
                tool = named[0].strip("`*'\"") if named else "python"
                self._open_action(tool if tool in self.tools else "python")
        elif self.state == "input":
            self.text += _one_line(first)
            self.state = "done"
        else:
            self.candidates = [_code(t) for t in texts] or [""]
            if len(self.candidates) > 1 and self.branch == "action":
                self.state = "pick"  # the agent runs the candidates and calls close()
            else:
                self.close(self.candidates[0])

    def close(self, code: str) -> None:
        """End the step with ``code`` in the open fence."""
        self.text += code + "\n```"
        self.state = "done"

    def _open_action(self, tool: str) -> None:
        self.branch = "action"
        if tool == "python":
            self.text += "Action: python\nAction Input:\n```python\n"
            self.state = "code"
        else:
            self.text += f"Action: {tool}\nAction Input: "
            self.state = "input"

    def _open_final(self) -> None:
        self.branch = "final"
        self.text += "Final Answer:\n```python\n"
        self.state = "code"


def _one_line(text: str) -> str:
    return (text or "").split("\n", 1)[0].strip()


def _code(text: str) -> str:
    """A code part: up to its closing fence (if the stop string was not honoured), no trailing
    blank lines."""
    return (text or "").split("```", 1)[0].rstrip()


def majority_choice(observations: list[Observation]) -> int:
    """Index of the candidate to keep: the first of the largest group of candidates that ran
    (``ok``) and printed the same text; the first candidate when none ran."""
    ran = [(i, o.text.strip()) for i, o in enumerate(observations) if o.ok]
    if not ran:
        return 0
    counts = Counter(text for _, text in ran)
    best = max(counts.values())
    return next(i for i, text in ran if counts[text] == best)
