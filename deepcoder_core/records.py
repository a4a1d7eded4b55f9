"""Typed records that cross stages: a trajectory and its steps (``docs/architecture.md``,
"Data contracts").

A trajectory is one JSON line of ``trajectories.jsonl``, written by generation and read by
processing, evaluation and ``deepcoder show``. ``Trajectory.from_dict`` is the only reader:
it checks types, names the field that is wrong, fills fields that older schema versions
lacked, and keeps keys it does not know (``extra``) so a record written by a newer or a
third-party writer round-trips unchanged through ``to_dict``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import RecordError

if TYPE_CHECKING:
    from .io import BadLine

TRAJECTORY_SCHEMA = 1
READABLE_SCHEMAS = (1,)


def _check(value: Any, types: tuple[type, ...], where: str, *, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    if isinstance(value, bool) and bool not in types:  # bool is an int to isinstance
        ok = False
    else:
        ok = isinstance(value, types)
    if not ok:
        wanted = " or ".join(t.__name__ for t in types) + (" or null" if optional else "")
        raise RecordError(f"field {where} has type {type(value).__name__}, expected {wanted}")
    return value


@dataclass
class Action:
    """A tool call: which tool, and its input text."""

    tool: str
    input: str

    @classmethod
    def from_dict(cls, data: Any, where: str = "action") -> Action:
        _check(data, (dict,), where)
        return cls(
            tool=_check(data.get("tool"), (str,), f"{where}.tool"),
            input=_check(data.get("input", ""), (str,), f"{where}.input"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {"tool": self.tool, "input": self.input}


@dataclass
class Step:
    """One teacher reply and what followed: the raw text is the ground truth for spans."""

    raw: str
    thought: str | None = None
    action: Action | None = None
    observation: str | None = None
    observation_ok: bool | None = None
    reasoning: str | None = None  # a separate reasoning field (``reasoning_content``, <think>)

    @classmethod
    def from_dict(cls, data: Any, where: str = "step") -> Step:
        _check(data, (dict,), where)
        action = data.get("action")
        return cls(
            raw=_check(data.get("raw", ""), (str,), f"{where}.raw"),
            thought=_check(data.get("thought"), (str,), f"{where}.thought", optional=True),
            action=None if action is None else Action.from_dict(action, f"{where}.action"),
            observation=_check(
                data.get("observation"), (str,), f"{where}.observation", optional=True
            ),
            observation_ok=_check(
                data.get("observation_ok"), (bool,), f"{where}.observation_ok", optional=True
            ),
            reasoning=_check(data.get("reasoning"), (str,), f"{where}.reasoning", optional=True),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "thought": self.thought,
            "action": None if self.action is None else self.action.to_dict(),
            "observation": self.observation,
            "observation_ok": self.observation_ok,
            "raw": self.raw,
            "reasoning": self.reasoning,
        }


@dataclass
class TeacherInfo:
    plugin: str | None = None
    model: str | None = None
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Trajectory:
    """One agent run on one problem: the chat, its steps, the answer and its check."""

    id: str
    problem_id: str
    sample: int = 0
    teacher: TeacherInfo = field(default_factory=TeacherInfo)
    messages: list[dict[str, Any]] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    final_answer: str | None = None
    success: bool = False
    tests_passed: int = 0
    tests_total: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    error: str | None = None
    category: str | None = None
    difficulty: str | None = None
    # the system prompt the teacher saw when it differs from messages[0] (privileged exemplars)
    teacher_system: str | None = None
    scaffold: dict[str, Any] | None = None  # the agent.scaffold aids this run had, if any
    schema: int = TRAJECTORY_SCHEMA
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not know

    _KNOWN = (
        "schema id problem_id sample teacher messages steps final_answer success tests_passed "
        "tests_total usage timing error category difficulty teacher_system scaffold"
    ).split()

    @property
    def tool_calls(self) -> int:
        return sum(step.action is not None for step in self.steps)

    @classmethod
    def from_dict(cls, data: Any) -> Trajectory:
        """Read a trajectory record; RecordError names the field that is missing or wrong."""
        _check(data, (dict,), "record")
        schema = data.get("schema", 1)
        if schema not in READABLE_SCHEMAS:
            raise RecordError(
                f"trajectory schema {schema!r} is not one this version reads "
                f"({', '.join(map(str, READABLE_SCHEMAS))}); upgrade deepcoder"
            )
        for key in ("id", "problem_id"):
            if key not in data:
                raise RecordError(f"missing field {key}")
        teacher = _check(data.get("teacher") or {}, (dict,), "teacher")
        usage = _check(data.get("usage") or {}, (dict,), "usage")
        timing = _check(data.get("timing") or {}, (dict,), "timing")
        messages = _check(data.get("messages") or [], (list,), "messages")
        for i, message in enumerate(messages):
            _check(message, (dict,), f"messages[{i}]")
        steps = _check(data.get("steps") or [], (list,), "steps")
        seconds = _check(timing.get("seconds", 0.0), (int, float), "timing.seconds")
        if not math.isfinite(seconds):
            raise RecordError("field timing.seconds is not a finite number")
        return cls(
            id=str(_check(data["id"], (str, int), "id")),
            problem_id=str(_check(data["problem_id"], (str, int), "problem_id")),
            sample=_check(data.get("sample", 0), (int,), "sample"),
            teacher=TeacherInfo(
                plugin=_check(teacher.get("plugin"), (str,), "teacher.plugin", optional=True),
                model=_check(teacher.get("model"), (str,), "teacher.model", optional=True),
                params=_check(teacher.get("params") or {}, (dict,), "teacher.params"),
            ),
            messages=messages,
            steps=[Step.from_dict(s, f"steps[{i}]") for i, s in enumerate(steps)],
            final_answer=_check(data.get("final_answer"), (str,), "final_answer", optional=True),
            success=_check(data.get("success", False), (bool,), "success"),
            tests_passed=_check(data.get("tests_passed", 0), (int,), "tests_passed"),
            tests_total=_check(data.get("tests_total", 0), (int,), "tests_total"),
            prompt_tokens=_check(usage.get("prompt_tokens", 0), (int,), "usage.prompt_tokens"),
            completion_tokens=_check(
                usage.get("completion_tokens", 0), (int,), "usage.completion_tokens"
            ),
            seconds=float(seconds),
            error=_check(data.get("error"), (str,), "error", optional=True),
            category=_check(data.get("category"), (str,), "category", optional=True),
            difficulty=_check(data.get("difficulty"), (str,), "difficulty", optional=True),
            teacher_system=_check(
                data.get("teacher_system"), (str,), "teacher_system", optional=True
            ),
            scaffold=_check(data.get("scaffold"), (dict,), "scaffold", optional=True),
            schema=schema,
            extra={k: v for k, v in data.items() if k not in cls._KNOWN},
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON line, in the field order generation has always written."""
        return {
            "schema": TRAJECTORY_SCHEMA,
            "id": self.id,
            "problem_id": self.problem_id,
            "sample": self.sample,
            "teacher": {
                "plugin": self.teacher.plugin,
                "model": self.teacher.model,
                "params": self.teacher.params,
            },
            "messages": self.messages,
            "steps": [step.to_dict() for step in self.steps],
            "final_answer": self.final_answer,
            "success": self.success,
            "tests_passed": self.tests_passed,
            "tests_total": self.tests_total,
            "usage": {
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
            },
            "timing": {"seconds": self.seconds, "steps": len(self.steps)},
            "error": self.error,
            "category": self.category,
            "difficulty": self.difficulty,
            **({"teacher_system": self.teacher_system} if self.teacher_system is not None else {}),
            **({"scaffold": self.scaffold} if self.scaffold is not None else {}),
            **self.extra,
        }


def read_trajectories(path: str | Path, bad: list[BadLine]) -> Iterator[Trajectory]:
    """The trajectories of a JSONL file, in order; a line that is not JSON or not a trajectory
    record (:meth:`Trajectory.from_dict`) goes to ``bad`` with its line number and reason."""
    from .io import BadLine, read_jsonl

    for number, record in read_jsonl(Path(path), errors=bad):
        try:
            yield Trajectory.from_dict(record)
        except RecordError as exc:
            bad.append(BadLine(str(path), number, str(exc)))
