"""The typed trajectory record: round trip, older and unknown keys, errors that name the field."""

from __future__ import annotations

import pytest

from deepcoder_core.errors import RecordError
from deepcoder_core.records import Action, Step, Trajectory


def record(**changes):
    base = {
        "schema": 1,
        "id": "p1-0",
        "problem_id": "p1",
        "sample": 0,
        "teacher": {"plugin": "hf", "model": "m", "params": {"temperature": 0.2}},
        "messages": [{"role": "user", "content": "q"}],
        "steps": [
            {
                "thought": "t",
                "action": {"tool": "python", "input": "1 + 1"},
                "observation": "2",
                "observation_ok": True,
                "raw": "Thought: t\nAction: python\n```python\n1 + 1\n```",
                "reasoning": None,
            },
            {
                "thought": None,
                "action": None,
                "observation": None,
                "observation_ok": None,
                "raw": "Final Answer: x",
                "reasoning": None,
            },
        ],
        "final_answer": "def f(): pass",
        "success": True,
        "tests_passed": 3,
        "tests_total": 3,
        "usage": {"prompt_tokens": 10, "completion_tokens": 5},
        "timing": {"seconds": 1.5, "steps": 2},
        "error": None,
        "category": "strings",
        "difficulty": "easy",
    }
    base.update(changes)
    return base


def test_round_trip_is_exact_and_typed():
    data = record()
    trajectory = Trajectory.from_dict(data)
    assert trajectory.steps[0].action == Action("python", "1 + 1")
    assert isinstance(trajectory.steps[1], Step) and trajectory.steps[1].action is None
    assert trajectory.tool_calls == 1
    assert trajectory.to_dict() == data


def test_unknown_keys_survive_and_missing_optional_ones_get_defaults():
    data = record(rollout={"policy_step": 3})
    for key in ("usage", "timing", "category", "difficulty", "sample"):
        data.pop(key)
    trajectory = Trajectory.from_dict(data)
    assert trajectory.extra == {"rollout": {"policy_step": 3}}
    assert trajectory.prompt_tokens == 0 and trajectory.sample == 0
    assert trajectory.to_dict()["rollout"] == {"policy_step": 3}


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"tests_passed": "3"}, "field tests_passed has type str, expected int"),
        ({"success": 1}, "field success has type int, expected bool"),
        ({"steps": {"a": 1}}, "field steps has type dict, expected list"),
        ({"steps": [{"action": {"tool": 3}}]}, "field steps[0].action.tool has type int"),
        ({"usage": {"prompt_tokens": 1.5}}, "field usage.prompt_tokens has type float"),
        ({"timing": {"seconds": float("nan")}}, "timing.seconds is not a finite number"),
        ({"schema": 99}, "trajectory schema 99 is not one this version reads"),
    ],
)
def test_errors_name_the_field(changes, message):
    with pytest.raises(RecordError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Trajectory.from_dict(record(**changes))


def test_missing_identity_is_an_error():
    data = record()
    del data["problem_id"]
    with pytest.raises(RecordError, match="missing field problem_id"):
        Trajectory.from_dict(data)
