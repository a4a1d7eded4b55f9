"""Scaffolding for small teachers: skeleton decoding, exemplars, self-consistency, and runs
that stop on repeated format errors."""

import dataclasses
from collections import deque

import pytest

from deepcoder_core.agent import AgentRun, run_agent
from deepcoder_core.agent.scaffold import (
    SkeletonStep,
    example_call,
    exemplar_problems,
    majority_choice,
)
from deepcoder_core.agent.schedule import Work, _batched_replies, run_batched
from deepcoder_core.config import AgentConfig, ScaffoldConfig
from deepcoder_core.plugins import PluginError, build
from deepcoder_core.problems import bundled_problems
from deepcoder_core.protocols import Completion, Observation, Usage
from deepcoder_core.teachers import TeacherError

PROBLEMS = {p.id: p for p in bundled_problems()}
PROBLEM = PROBLEMS["reverse-words"]
SOLUTION = PROBLEM.canonical_solution.strip()


def _python_tool():
    try:
        return build("tool", "python")
    except PluginError as exc:
        pytest.skip(f"the python tool plugin is not installed: {exc}")


def _config(**scaffold):
    return AgentConfig(
        max_steps=4,
        max_new_tokens=64,
        token_budget=4096,
        tool_timeout=5.0,
        scaffold=ScaffoldConfig(**{"skeleton": True, **scaffold}),
    )


class PrefillTeacher:
    """Continues partial replies by what they end with; remembers every call."""

    plugin_name = "prefill"
    model = "prefill-1"
    supports_prefill = True

    def __init__(self, code=SOLUTION, thought=" I will try it.", choice="Final Answer:"):
        self.code, self.thought, self.choice = code, thought, choice
        self.calls = []

    def _reply(self, messages, params):
        self.calls.append((messages, params))
        partial = messages[-1]["content"] if messages[-1]["role"] == "assistant" else ""
        if partial.endswith("Thought:"):
            text = self.thought
        elif partial.endswith("```python\n"):
            code = self.code(len(self.calls)) if callable(self.code) else self.code
            text = code + "\n"
        else:
            text = self.choice
        return Completion(text=text, usage=Usage(prompt_tokens=10, completion_tokens=3))

    def complete(self, messages, **params):
        return self._reply(messages, params)

    def complete_batch(self, batch, **params):
        return [self._reply(messages, params) for messages in batch]


def test_skeleton_acts_first_then_answers_after_code_that_ran():
    teacher = PrefillTeacher(code=SOLUTION + '\n\nprint(reverse_words("hello  world"))')
    record = run_agent(teacher, PROBLEM, {"python": _python_tool()}, _config())
    first, second = record["steps"]
    assert first["action"]["tool"] == "python"
    assert "def reverse_words" in first["action"]["input"]
    assert first["observation"].strip() == "world hello" and first["observation_ok"]
    assert first["raw"].startswith("Thought: I will try it.\nAction: python\nAction Input:\n")
    assert "Final Answer:" in second["raw"] and record["success"] is True
    # the keywords are written for the model: each part is its own call with its own stop
    stops = [params["stop"] for _, params in teacher.calls]
    assert stops == [["\n"], ["```"], ["\n"], ["```"]]
    assert record["usage"]["completion_tokens"] == 3 * len(teacher.calls)


def test_skeleton_lets_the_model_choose_when_no_rule_applies():
    step = SkeletonStep(tools=["python", "retrieve"], must_act=False, max_new_tokens=32)
    step.take([" look it up"], 1)
    assert step.state == "choice"
    step.take(["Action: retrieve"], 1)
    assert step.state == "input" and step.text.endswith("Action: retrieve\nAction Input: ")
    step.take(["str.split docs\nmore"], 1)
    assert step.done and step.text.endswith("Action Input: str.split docs")
    other = SkeletonStep(tools=["python"], must_act=False, max_new_tokens=32)
    other.take([""], 1)
    other.take(["Action: nosuchtool"], 1)
    assert other.text.endswith("Action: python\nAction Input:\n```python\n")  # unknown tool


def test_skeleton_needs_a_teacher_that_continues_replies():
    class Plain:
        plugin_name = "plain"

        def complete(self, messages, **params):
            return Completion(text="Final Answer: x")

    with pytest.raises(TeacherError, match="agent.scaffold.skeleton.*'plain'"):
        run_agent(Plain(), PROBLEM, {}, _config())


def test_self_consistency_keeps_the_majority_execution_result():
    ran = [
        Observation("NameError: x", ok=False),
        Observation("1\n", ok=True),
        Observation("2", ok=True),
        Observation("2\n", ok=True),
    ]
    assert majority_choice(ran) == 2  # "2" twice beats "1" once; the first of the group
    assert majority_choice([Observation("e", ok=False), Observation("f", ok=False)]) == 0
    assert majority_choice([Observation("a", ok=True), Observation("b", ok=True)]) == 0


def test_self_consistency_in_a_run_samples_candidates_and_runs_the_majority():
    codes = iter(["print(1)", "print(2)", "raise ValueError", "print(2)"])
    teacher = PrefillTeacher(code=lambda _: next(codes, SOLUTION))
    python = _python_tool()
    config = _config(action_samples=4)
    run = AgentRun(PROBLEM, {"plugin": "prefill"}, {"python": python}, config)
    work = Work(teacher, deque(), None, None, {}, 1, set())

    replies, _ = _batched_replies(work, [run])  # thought
    run.take(replies[0])
    request = run.request()
    assert request.samples == 4 and request.params["stop"] == ["```"]
    before = len(teacher.calls)
    replies, _ = _batched_replies(work, [run])  # four candidate inputs, one batched call
    assert len(teacher.calls) - before == 4 and len(replies[0]) == 4
    run.take(replies[0])
    assert run.steps[0].action.input == "print(2)"
    assert run.steps[0].observation.strip() == "2"


def test_batched_schedule_groups_parts_by_their_params():
    teacher = PrefillTeacher()
    seen = []
    original = teacher.complete_batch

    def spy(batch, **params):
        seen.append((len(batch), tuple(params["stop"])))
        return original(batch, **params)

    teacher.complete_batch = spy
    problems = [PROBLEM, PROBLEMS["count-vowels"]]
    config = _config(act_first=False)
    finished = []
    jobs = deque((p, 0) for p in problems)
    work = Work(
        teacher,
        jobs,
        lambda p, s: AgentRun(p, {"plugin": "prefill"}, {"python": _python_tool()}, config),
        finished.append,
        {"temperature": 0.0},
        8,
        set(),
    )
    run_batched(work, seed=0)
    assert len(finished) == 2
    # thought lines of both agents in one call, then their choices, then their answers
    assert seen == [(2, ("\n",)), (2, ("\n",)), (2, ("```",))]


def test_exemplars_come_from_train_problems_and_stay_the_teachers_with_privileged():
    chosen = exemplar_problems(3, exclude={"reverse-words"})
    assert len(chosen) == 3
    assert all(p.split == "train" and p.id != "reverse-words" for p in chosen)
    assert all(example_call(p).startswith(p.entry_point + "(") for p in chosen)
    python = _python_tool()
    config = _config(exemplars=2, skeleton=False)
    teacher = PrefillTeacher()
    eval_problem = next(p for p in bundled_problems() if p.split == "eval")
    run = AgentRun(eval_problem, {"plugin": "prefill"}, {"python": python}, config)
    shown = run.messages[0]["content"]
    assert "Examples (for other problems)" in shown
    # the observation in an exemplar is what the sandbox printed for the solution
    first = chosen[0] if chosen[0].id != eval_problem.id else chosen[1]
    assert f"print({example_call(first)})" in shown
    run.advance(teacher.complete(run.messages))
    record = run.finish()
    assert "Examples (for other problems)" not in record["messages"][0]["content"]
    assert record["teacher_system"] == shown
    assert record["scaffold"]["privileged"] is True and record["scaffold"]["exemplars"] == 2
    public = AgentRun(
        eval_problem,
        {"plugin": "prefill"},
        {"python": python},
        dataclasses.replace(config, scaffold=ScaffoldConfig(exemplars=2, privileged=False)),
    )
    assert "Examples (for other problems)" in public.finish()["messages"][0]["content"]
    off = AgentRun(eval_problem, {}, {"python": python}, config, scaffold=False)
    assert "Examples" not in off.messages[0]["content"] and off.finish().get("scaffold") is None


def test_a_run_stops_after_repeated_format_errors():
    class Babbler:
        plugin_name = "babbler"

        def __init__(self):
            self.calls = 0

        def complete(self, messages, **params):
            self.calls += 1
            return Completion(text="I am not sure what to do.")

    teacher = Babbler()
    config = AgentConfig(max_steps=6, max_new_tokens=16, max_format_errors=2)
    record = run_agent(teacher, PROBLEM, {}, config)
    assert teacher.calls == 2 and len(record["steps"]) == 2
    assert record["error"] == "stopped after 2 consecutive format errors"
    unlimited = run_agent(Babbler(), PROBLEM, {}, dataclasses.replace(config, max_format_errors=0))
    assert len(unlimited["steps"]) == 6  # 0: only max_steps ends it


def test_a_valid_action_resets_the_format_error_count():
    replies = iter(
        [
            "no format here",
            "Thought: run it\nAction: echo\nAction Input: hi",
            "still nothing",
            "nothing again",
        ]
    )

    class Scripted:
        plugin_name = "scripted"

        def complete(self, messages, **params):
            return Completion(text=next(replies))

    class Echo:
        name = "echo"
        description = "echo"

        def run(self, text, *, timeout, session=None):
            return Observation(text)

    config = AgentConfig(max_steps=6, max_new_tokens=16, max_format_errors=2)
    record = run_agent(Scripted(), PROBLEM, {"echo": Echo()}, config)
    assert len(record["steps"]) == 4
    assert record["error"] == "stopped after 2 consecutive format errors"
