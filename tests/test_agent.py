import importlib.util
import json
import threading
from types import SimpleNamespace

import pytest

from deepcoder_core.agent import AgentRun, build_tools, loop, parse_step, run_agent, tool_calls_from
from deepcoder_core.config import AgentConfig, Config
from deepcoder_core.plugins import PluginError, build
from deepcoder_core.problems import bundled_problems
from deepcoder_core.protocols import Completion, Observation, Usage
from deepcoder_core.records import Action, Step, Trajectory

PROBLEM = next(p for p in bundled_problems() if p.id == "reverse-words")
SOLUTION = PROBLEM.canonical_solution
# in the order every trajectory line has always been written
TRAJECTORY_KEYS = [
    "schema", "id", "problem_id", "sample", "teacher", "messages", "steps", "final_answer",
    "success", "tests_passed", "tests_total", "usage", "timing", "error", "category", "difficulty",
]  # fmt: skip


class ScriptedTeacher:
    """Replays fixed replies and remembers every chat it was sent."""

    model = "scripted-1"
    plugin_name = "scripted"

    def __init__(self, replies):
        self.replies = list(replies)
        self.seen = []

    def complete(self, messages, **params):
        self.seen.append((messages, params))
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        if isinstance(reply, Completion):
            return reply
        return Completion(text=reply, usage=Usage(prompt_tokens=50, completion_tokens=20))


class EchoTool:
    """Echoes its input; remembers calls and closed sessions."""

    name = "echo"
    description = "Repeat the input."

    def __init__(self):
        self.calls = []
        self.closed = []

    def run(self, input, *, timeout, session=None):
        self.calls.append((input, timeout, session))
        return Observation(f"echo: {input}", meta={"n": len(self.calls)})

    def close(self, session):
        self.closed.append(session)


def _checking_available():
    return importlib.util.find_spec("deepcoder_core.checking") is not None


def _python_tool():
    if not _checking_available():
        pytest.skip("deepcoder_core/checking.py (sandbox slice) is not written yet")
    try:
        return build("tool", "python")
    except PluginError as exc:
        pytest.skip(f"the python tool plugin is not installed yet: {exc}")


CONFIG = AgentConfig(
    max_steps=4, max_new_tokens=64, token_budget=4096, tool_timeout=5.0, max_format_errors=0
)


# ---------------------------------------------------------------------------- the done-when run


def test_scripted_teacher_solves_a_bundled_problem_through_the_python_tool():
    python = _python_tool()
    first = (
        "Thought: I will try my idea on an example.\n"
        "Action: python\n"
        f"Action Input:\n```python\n{SOLUTION}\nprint(reverse_words('  hello   world '))\n```"
    )
    second = (
        "<think>The output is right.</think>\nThought: It works.\n"
        f"Final Answer:\n```python\n{SOLUTION}```"
    )
    teacher = ScriptedTeacher([first, second])
    record = run_agent(teacher, PROBLEM, {"python": python}, CONFIG, sample=2)

    assert list(record) == TRAJECTORY_KEYS
    assert record["error"] is None
    assert record["success"] is True
    assert record["tests_total"] > 0 and record["tests_passed"] == record["tests_total"]
    assert record["problem_id"] == "reverse-words" and record["sample"] == 2
    assert record["teacher"] == {
        "plugin": "scripted",
        "model": "scripted-1",
        "params": {"max_new_tokens": 64, "stop": ["Observation:"]},
    }
    step1, step2 = record["steps"]
    assert step1["action"]["tool"] == "python"
    assert "world hello" in step1["observation"]
    assert step1["raw"] == first and step2["raw"] == second
    assert step2["reasoning"] == "The output is right." and step2["thought"] == "It works."
    assert record["final_answer"].strip() == SOLUTION.strip()
    roles = [m["role"] for m in record["messages"]]
    assert roles == ["system", "user", "assistant", "user", "assistant"]
    assert record["messages"][3]["content"].startswith("Observation: ")
    assert "world hello" in record["messages"][3]["content"]
    assert record["usage"] == {"prompt_tokens": 100, "completion_tokens": 40}
    assert record["timing"]["steps"] == 2
    # the second call saw the observation of the first
    assert teacher.seen[1][0][-1]["content"].startswith("Observation:")
    json.dumps(record)  # a JSONL line


def test_a_wrong_final_answer_is_checked_and_fails():
    if not _checking_available():
        pytest.skip("deepcoder_core/checking.py (sandbox slice) is not written yet")
    wrong = "Final Answer:\n```python\ndef reverse_words(s):\n    return s\n```"
    record = run_agent(ScriptedTeacher([wrong]), PROBLEM, {}, CONFIG)
    assert record["success"] is False
    assert record["tests_passed"] < record["tests_total"]


# ---------------------------------------------------------------------------- the loop


def test_actions_observations_and_sessions():
    echo = EchoTool()
    replies = [
        "Thought: say hi\nAction: echo\nAction Input: hi",
        'Thought: again\nAction: ECHO\nAction Input: "there"\nObservation: echo: there\n'
        "Final Answer: made up",
        f"Final Answer:\n```python\n{SOLUTION}```",
    ]
    run = AgentRun(
        PROBLEM, {"plugin": "t", "model": "m"}, {"echo": echo}, CONFIG, trajectory_id="t1"
    )
    teacher = ScriptedTeacher(replies)
    while not run.done:
        run.advance(teacher.complete(run.messages))
    record = run.finish()
    assert echo.calls == [("hi", 5.0, "t1"), ("there", 5.0, "t1")]
    assert echo.closed == ["t1"]
    # the invented observation is cut from the chat but kept verbatim in the step
    assert record["messages"][4]["content"].endswith('Action Input: "there"')
    assert record["steps"][1]["raw"] == replies[1]
    assert record["steps"][1]["observation"] == "echo: there"
    assert record["messages"][5]["content"] == "Observation: echo: there"
    assert record["final_answer"].strip() == SOLUTION.strip()
    assert run.finish() is record  # idempotent: tools are closed once
    assert echo.closed == ["t1"]


def test_finish_writes_the_typed_trajectory_in_its_field_order():
    replies = [
        Completion(text="<think>plan</think>Thought: try\nAction: echo\nAction Input: hi"),
        "Action: nope\nAction Input: 1",
        f"Final Answer:\n```python\n{SOLUTION}```",
    ]
    info = {"plugin": "scripted", "model": "m", "params": {"temperature": 0.2}}
    run = AgentRun(PROBLEM, info, {"echo": EchoTool()}, CONFIG, sample=1)
    for reply in replies:
        run.advance(reply)
    record = run.finish()
    assert run.finish() is record  # idempotent: the same dict
    assert list(record) == TRAJECTORY_KEYS
    step_keys = ["thought", "action", "observation", "observation_ok", "raw", "reasoning"]
    assert all(list(step) == step_keys for step in record["steps"])
    trajectory = run.finish_trajectory()
    assert all(isinstance(step, Step) for step in trajectory.steps)
    assert trajectory.steps[0].action == Action("echo", "hi") and trajectory.tool_calls == 2
    assert record["steps"][0]["reasoning"] == "plan" and record["steps"][2]["action"] is None
    line = json.dumps(record)
    assert json.dumps(Trajectory.from_dict(json.loads(line)).to_dict()) == line


def test_system_prompt_describes_tools_and_format():
    run = AgentRun(PROBLEM, {}, {"echo": EchoTool()}, CONFIG)
    system, user = run.messages
    assert "- echo: Repeat the input." in system["content"]
    for word in ("Thought:", "Action:", "Action Input:", "Observation:", "Final Answer:"):
        assert word in system["content"]
    assert "[echo]" in system["content"]
    assert "Example" not in system["content"]  # the worked example uses the python tool
    with_python = AgentRun(PROBLEM, {}, {"python": EchoTool()}, CONFIG).messages[0]["content"]
    assert "Example (for a different problem)" in with_python
    assert PROBLEM.prompt in user["content"] and "`reverse_words`" in user["content"]
    custom = AgentConfig(system_prompt="Tools: {tool_names}\n{tools}")
    assert AgentRun(PROBLEM, {}, {"echo": EchoTool()}, custom).messages[0]["content"] == (
        "Tools: echo\n- echo: Repeat the input."
    )


def test_no_final_answer_ends_with_an_error_and_hints_the_format():
    replies = ["I am not sure what to do.", "Still thinking...", "Hmm.", "Maybe."]
    record = run_agent(ScriptedTeacher(replies), PROBLEM, {"echo": EchoTool()}, CONFIG)
    assert record["error"] == "no Final Answer after max_steps=4 steps"
    assert record["success"] is False and record["final_answer"] is None
    assert len(record["steps"]) == 4
    for step in record["steps"]:
        assert step["action"] is None and step["observation_ok"] is False
        assert step["observation"].startswith("Invalid format: found neither")


def test_without_final_answer_the_last_code_block_is_still_checked():
    replies = [
        f"Thought: try it.\nAction: python\nAction Input: ```python\n{SOLUTION}```",
        "I think that is it.",
    ]
    record = run_agent(
        ScriptedTeacher(replies), PROBLEM, {}, AgentConfig(max_steps=2, tool_timeout=5.0)
    )
    assert record["error"] == "no Final Answer after max_steps=2 steps"
    assert record["final_answer"].strip() == SOLUTION.strip()
    if _checking_available():
        assert record["success"] is True


def test_a_bare_code_block_defining_the_entry_point_is_the_final_answer():
    reply = f"Here is my code:\n```python\n{SOLUTION}```\nIt reverses the words."
    record = run_agent(
        ScriptedTeacher([reply]), PROBLEM, {}, AgentConfig(max_steps=2, tool_timeout=5.0)
    )
    assert record["error"] is None and len(record["steps"]) == 1
    step = record["steps"][0]
    assert step["thought"] == "Here is my code:" and step["action"] is None
    assert record["final_answer"].strip() == SOLUTION.strip()
    if _checking_available():
        assert record["success"] is True


def test_a_bare_code_block_that_defines_nothing_asked_for_is_a_python_action():
    step = parse_step("Let me try:\n```python\nprint(1 + 1)\n```", entry_point="reverse_words")
    assert step.error is None and step.final_answer is None
    assert step.action == {"tool": "python", "input": "print(1 + 1)"}
    assert step.thought == "Let me try:"


def test_token_budget_stops_the_run():
    costly = Completion(
        text="Thought: t\nAction: echo\nAction Input: x",
        usage=Usage(prompt_tokens=10, completion_tokens=600),
    )
    config = AgentConfig(max_steps=10, token_budget=1000, tool_timeout=1.0)
    record = run_agent(ScriptedTeacher([costly] * 3), PROBLEM, {"echo": EchoTool()}, config)
    assert len(record["steps"]) == 2
    assert record["error"].startswith("no Final Answer within the token budget (1200 >= 1000")


def test_teacher_and_tool_failures_are_recorded_not_raised(monkeypatch):
    record = run_agent(ScriptedTeacher([RuntimeError("rate limited")]), PROBLEM, {}, CONFIG)
    assert record["error"] == "teacher error: RuntimeError: rate limited"
    assert record["steps"] == []

    class Broken:
        name = "broken"
        description = "raises"

        def run(self, input, *, timeout, session=None):
            raise ValueError("boom")

    release = threading.Event()

    class Hangs:
        name = "hangs"
        description = "never answers"

        def run(self, input, *, timeout, session=None):
            release.wait(10)
            return Observation("late")

    monkeypatch.setattr(loop, "TOOL_GRACE_SECONDS", 0.05)
    tools = {"broken": Broken(), "hangs": Hangs()}
    replies = [
        "Action: broken\nAction Input: 1",
        "Action: hangs\nAction Input: 1",
        "Action: missing\nAction Input: 1",
        Completion(text=None),  # a teacher returning nothing must not crash the loop
    ]
    config = AgentConfig(max_steps=4, tool_timeout=0.05)
    try:
        record = run_agent(ScriptedTeacher(replies), PROBLEM, tools, config)
    finally:
        release.set()
    observations = [s["observation"] for s in record["steps"]]
    assert observations[0] == "tool error: ValueError: boom"
    assert observations[1] == "tool 'hangs' did not answer within 0.05 s"
    assert observations[2] == "unknown tool 'missing'; available tools: broken, hangs"
    assert observations[3].startswith("Invalid format")
    assert record["error"] == "no Final Answer after max_steps=4 steps"


def test_openai_tool_calls_in_raw_drive_actions():
    echo = EchoTool()
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "echo", "arguments": json.dumps({"text": "from a tool call"})},
    }
    as_dict = Completion(text="", raw={"choices": [{"message": {"tool_calls": [call]}}]})
    as_object = Completion(
        text="Let me check.",
        raw=SimpleNamespace(
            choices=[SimpleNamespace(message=SimpleNamespace(tool_calls=[SimpleNamespace(**call)]))]
        ),
    )
    replies = [as_dict, as_object, f"Final Answer:\n```python\n{SOLUTION}```"]
    record = run_agent(ScriptedTeacher(replies), PROBLEM, {"echo": echo}, CONFIG)
    assert [c[0] for c in echo.calls] == ["from a tool call", "from a tool call"]
    assert record["steps"][0]["action"] == {"tool": "echo", "input": "from a tool call"}
    # the chat stays in ReAct text form
    assert record["messages"][2]["content"] == "Action: echo\nAction Input: from a tool call"
    assert record["messages"][4]["content"].startswith("Let me check.\nAction: echo")


def test_tool_calls_from_variants():
    assert tool_calls_from(None) == []
    assert tool_calls_from({"tool_calls": [{"function": {"name": "python", "arguments": ""}}]}) == [
        {"tool": "python", "input": "", "id": ""}
    ]
    raw = {"message": {"tool_calls": [{"name": "retrieve", "arguments": '{"query": "heapq"}'}]}}
    assert tool_calls_from(raw)[0]["input"] == "heapq"


def test_reasoning_field_is_kept():
    reply = Completion(
        text=f"Final Answer:\n```python\n{SOLUTION}```", reasoning="server-side thinking"
    )
    record = run_agent(ScriptedTeacher([reply]), PROBLEM, {}, CONFIG)
    assert record["steps"][0]["reasoning"] == "server-side thinking"


def test_build_tools_from_config():
    config = Config()
    config.tools.enabled = ["calculator"]
    config.tools.options = {"calculator": {"max_exponent": 3}}
    tools = build_tools(config)
    assert list(tools) == ["calculator"]
    assert tools["calculator"].max_exponent == 3
    config.tools.enabled = ["calculater"]
    with pytest.raises(PluginError, match="did you mean 'calculator'"):
        build_tools(config)


# ---------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("text", "tool", "tool_input"),
    [
        ("Thought: go\nAction: python\nAction Input: print(1)", "python", "print(1)"),
        ("thought: go\naction:python\naction input:print(1)", "python", "print(1)"),
        ("**Thought:** go\n**Action:** `Python`\n**Action Input:** print(1)", "python", "print(1)"),
        ("Action 1: python\nAction Input 1: print(1)", "python", "print(1)"),
        ("Action: [python]\nAction_Input: print(1)", "python", "print(1)"),
        (
            "Action: python\nAction Input:\n```python\nprint(1)\n```\nmore text",
            "python",
            "print(1)",
        ),
        ("Action: python\n```py\nprint(1)\n```", "python", "print(1)"),
        ('Action: python\nAction Input: {"code": "print(1)"}', "python", "print(1)"),
        ('Action: python\nAction Input: "print(1)"', "python", "print(1)"),
        ('Action: retrieve\nAction Input: {"query": "gcd", "k": 2}', "retrieve", "gcd"),
        ('```json\n{"action": "python", "action_input": "print(1)"}\n```', "python", "print(1)"),
        (
            '<tool_call>{"name": "python", "arguments": {"code": "print(1)"}}</tool_call>',
            "python",
            "print(1)",
        ),
        ('{"name": "python", "arguments": "{\\"code\\": \\"print(1)\\"}"}', "python", "print(1)"),
    ],
)
def test_parse_action_variants(text, tool, tool_input):
    step = parse_step(text)
    assert step.error is None
    assert step.action == {"tool": tool, "input": tool_input}
    assert step.final_answer is None


def test_parse_think_blocks_and_reasoning():
    step = parse_step(
        "<think>plan A\nAction: fake</think>\nThought: real\nAction: python\nAction Input: 1",
        reasoning="from the server",
    )
    assert step.reasoning == "from the server\n\nplan A\nAction: fake"
    assert step.thought == "real" and step.action == {"tool": "python", "input": "1"}
    # a closing tag only (the template opened it), and an unclosed block
    step = parse_step("thinking here</think>\nFinal Answer: def f():\n    return 1")
    assert step.reasoning == "thinking here" and step.code == "def f():\n    return 1"
    step = parse_step("<think>never closed... Final Answer: nope")
    assert step.reasoning.startswith("never closed") and step.final_answer is None
    assert step.error


def test_parse_final_answer_forms():
    step = parse_step("Thought: done\n**Final Answer:**\n```python\ndef f():\n    return 1\n```")
    assert step.thought == "done" and step.code == "def f():\n    return 1"
    step = parse_step(
        "Final Answer:\n```python\nprint(f())\n```\n```python\ndef f():\n    return 2\n```\n"
        "```python\nf()\n```",
        entry_point="f",
    )
    assert step.code == "def f():\n    return 2"  # the block defining the entry point
    assert parse_step("Final Answer: done").code is None  # parses as Python, defines nothing
    step = parse_step("Final Answer: I cannot solve it.")
    assert step.final_answer == "I cannot solve it." and step.code is None
    assert step.error == "the Final Answer has no python code"
    step = parse_step('{"action": "Final Answer", "action_input": "def f():\\n    return 3"}')
    assert step.code == "def f():\n    return 3"


def test_parse_cuts_a_self_written_observation():
    text = "Action: python\nAction Input: print(2)\nObservation: 2\nThought: ok\nFinal Answer: x"
    step = parse_step(text)
    assert step.hallucinated_observation
    assert step.text == "Action: python\nAction Input: print(2)"
    assert step.action == {"tool": "python", "input": "print(2)"} and step.final_answer is None
    # an observation recap before any action is not cut
    step = parse_step(
        "Observation: it printed 2\nThought: so\nFinal Answer:\n```\ndef f(): pass\n```"
    )
    assert not step.hallucinated_observation and step.code == "def f(): pass"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "Action:",
        "Action: python\nAction Input:",
        "```python\n\n```",
        "{not json",
        "\x00",
    ],
)
def test_malformed_replies_give_errors_not_exceptions(text):
    step = parse_step(text)
    assert step.error and step.action is None and step.code is None


# ---------------------------------------------------------------------------- show trajectory


def test_show_trajectory_renders_each_part_in_its_colour(tmp_path):
    from click.testing import CliRunner

    from deepcoder_core.cli import cli

    replies = [
        Completion(
            text="Thought: try it\nAction: echo\nAction Input: hello",
            reasoning="I should echo first",
        ),
        "Action: nope\nAction Input: 1",
        f"Final Answer:\n```python\n{SOLUTION}```",
    ]
    record = run_agent(ScriptedTeacher(replies), PROBLEM, {"echo": EchoTool()}, CONFIG)
    other = dict(record, id="other-id", problem_id="other")
    path = tmp_path / "trajectories.jsonl"
    path.write_text(json.dumps(other) + "\n" + json.dumps(record) + "\n{broken\n")

    runner = CliRunner()
    result = runner.invoke(cli, ["show", "trajectory", str(path), "--id", record["id"], "--color"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "other-id" not in out and record["id"] in out
    assert "skipped" in out and ":3:" in out  # the broken line is reported, not fatal
    sgr = {  # ANSI colour codes rich writes for each part
        "reasoning": "\x1b[35mI should echo first",
        "thought": "\x1b[36mtry it",
        "action": "\x1b[1;33mAction: echo",
        "observation": "\x1b[32mecho: hello",
        "failed observation": "\x1b[31munknown tool 'nope'",
    }
    for part, code in sgr.items():
        assert code in out, part
    assert "final answer" in out and "reverse_words" in out

    plain = runner.invoke(cli, ["show", "trajectory", str(path), "--no-color"])
    assert plain.exit_code == 0 and "\x1b[" not in plain.output
    assert "other-id" in plain.output and "Observation: echo: hello" in plain.output

    missing = runner.invoke(cli, ["show", "trajectory", str(path), "--id", "nope"])
    assert missing.exit_code == 2 and "no trajectory with id nope" in missing.output


def test_show_trajectory_skips_records_that_are_not_trajectories(tmp_path):
    from click.testing import CliRunner

    from deepcoder_core.cli import cli

    path = tmp_path / "trajectories.jsonl"
    path.write_text(json.dumps({"id": "x", "problem_id": "p", "success": 1}) + "\n")
    result = CliRunner().invoke(cli, ["show", "trajectory", str(path)])
    assert "skipped" in result.output and ":1: field success has type int" in result.output
    assert result.exit_code == 2 and "Error: " in result.output
    assert "no trajectories in the file" in result.output


def test_unfenced_action_input_ends_at_the_next_part():
    step = parse_step("Action: python\nAction Input: print(1)\nThought: then\nFinal Answer: x")
    assert step.action == {"tool": "python", "input": "print(1)"}
    step = parse_step('Action: python\nAction Input: x = {"a": 1}\nprint(x)')
    assert step.action["input"] == 'x = {"a": 1}\nprint(x)'


def test_fallback_prefers_python_code_that_defines_the_entry_point():
    echo = EchoTool()
    echo.name = "python"  # stands in for the python tool: only the action input matters here
    replies = [
        f"Action: python\nAction Input: {SOLUTION}\nprint(reverse_words('a b'))",
        "```python\nprint('just a probe')\n```",
    ]
    run = AgentRun(PROBLEM, {}, {"python": echo}, AgentConfig(max_steps=2, tool_timeout=5.0))
    for reply in replies:
        run.advance(reply)  # a bare string is accepted as the completion text
    record = run.finish()
    assert record["error"] == "no Final Answer after max_steps=2 steps"
    assert record["final_answer"].startswith("def reverse_words")
    if _checking_available():
        assert record["success"] is True


def test_random_fragments_never_raise():
    import random

    fragments = [
        "Thought:", "Action:", "Action Input:", "Observation:", "Final Answer:", "<think>",
        "</think>", "```", "```python\n", "```json\n", "{", "}", '"', "\n", " python", " echo",
        '{"action": "echo", "action_input": 1}', '{"name": "x", "arguments": "{"}', "<tool_call>",
        "def reverse_words(s):\n    return s\n", "**", "\x00", "Action 2:", "FINAL ANSWER:",
    ]  # fmt: skip
    rng = random.Random(0)
    tools = {"echo": EchoTool()}
    for _ in range(400):
        text = "".join(rng.choice(fragments) for _ in range(rng.randint(0, 12)))
        step = parse_step(text, reasoning=rng.choice([None, "", "r"]))
        assert step.action is None or set(step.action) == {"tool", "input"}
        run = AgentRun(PROBLEM, {}, tools, CONFIG)
        run.advance(text)
        assert run.error is None, (text, run.error)  # no internal failure, only format hints
        assert len(run.steps) == 1
