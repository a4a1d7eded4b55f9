"""Teacher `replay`: answers with the completions recorded in a trajectories JSONL file.

Later stages (processing, evaluation of the teacher, tests) can then re-run generation
deterministically without the original teacher. A completion is found by, in order:
1. its key ``(problem_id, sample, step)`` when the caller passes ``key=`` (the generator does);
2. the exact message history sent so far (any caller, e.g. ``run_agent``);
3. the first user message plus the step number, when that names one recording only.
A missing recording is a clear :class:`~deepcoder_core.teachers.TeacherError`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from deepcoder_core import (
    Completion,
    PluginError,
    TeacherError,
    TeacherStats,
    Trajectory,
    Usage,
    hookimpl,
    read_trajectories,
)


def _digest(messages: list[dict[str, Any]]) -> str:
    # Only role and content: servers and agents may add fields that do not change the chat.
    chat = [(m.get("role"), m.get("content")) for m in messages]
    return hashlib.sha256(json.dumps(chat, ensure_ascii=False).encode()).hexdigest()


def _first_user(messages: list[dict[str, Any]]) -> str | None:
    return next((str(m.get("content")) for m in messages if m.get("role") == "user"), None)


class ReplayTeacher:
    """Re-plays recorded completions; ``model`` is the recorded teacher's model name."""

    replays = True  # the generator passes key=(problem_id, sample, step)

    def __init__(self, trajectories: str | Path | None = None) -> None:
        if not trajectories:
            raise PluginError(
                "teacher 'replay' needs a recording: set teacher.options.trajectories "
                "to a trajectories.jsonl written by `deepcoder generate`"
            )
        self.path = Path(trajectories).expanduser()
        if not self.path.is_file():
            raise PluginError(f"teacher 'replay': {self.path} does not exist")
        self.stats = TeacherStats()
        self._by_key: dict[tuple[str, int, int], Completion] = {}
        self._by_history: dict[str, Completion] = {}
        self._by_prompt: dict[tuple[str, int], list[Completion]] = {}
        models: list[str] = []
        errors: list = []
        for trajectory in read_trajectories(self.path, errors):
            self._index(trajectory)
            model = trajectory.teacher.model
            if model and model not in models:
                models.append(model)
        if not self._by_key and not self._by_history:
            detail = f" ({errors[0]})" if errors else ""
            raise PluginError(f"teacher 'replay': {self.path} holds no recorded steps{detail}")
        self.model = f"replay:{'+'.join(models) or self.path.name}"

    def _index(self, trajectory: Trajectory) -> None:
        messages = trajectory.messages
        completions = [
            Completion(text=s.raw, reasoning=s.reasoning, usage=Usage()) for s in trajectory.steps
        ]
        for step, completion in enumerate(completions):
            self._by_key[(trajectory.problem_id, trajectory.sample, step)] = completion
        assistant = [j for j, m in enumerate(messages) if m.get("role") == "assistant"]
        prompt = _first_user(messages)
        for step, j in enumerate(assistant[: len(completions)]):
            self._by_history.setdefault(_digest(messages[:j]), completions[step])
            if prompt is not None:
                self._by_prompt.setdefault((prompt, step), []).append(completions[step])

    def __len__(self) -> int:
        return len(self._by_key)

    def complete(
        self,
        messages: list[dict[str, Any]],
        *,
        key: tuple[str, int, int] | None = None,
        **params: Any,
    ) -> Completion:
        self.stats.add(requests=1)
        if key is not None:
            found = self._by_key.get((str(key[0]), int(key[1]), int(key[2])))
            if found is not None:
                return found
        found = self._by_history.get(_digest(messages))
        if found is not None:
            return found
        step = sum(1 for m in messages if m.get("role") == "assistant")
        prompt = _first_user(messages)
        candidates = self._by_prompt.get((prompt, step), []) if prompt is not None else []
        if len(candidates) == 1:
            return candidates[0]
        where = (
            f"problem {key[0]} sample {key[1]} step {key[2]}"
            if key
            else f"step {step} of this chat"
        )
        self.stats.error("replay_missing")
        raise TeacherError(
            f"replay: no recorded completion for {where} in {self.path}; "
            "re-generate with the original teacher or replay a file that covers these problems",
            kind="replay_missing",
        )


@hookimpl
def register_teachers(register):
    register("replay", ReplayTeacher)
