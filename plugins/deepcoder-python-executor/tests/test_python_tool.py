"""The ``python`` tool: REPL-like observations, per-session state, options, and `deepcoder tools`."""

from __future__ import annotations

import json
import threading

import pytest
from click.testing import CliRunner
from deepcoder_python_executor import PythonTool

from deepcoder_core import plugins
from deepcoder_core.cli import cli
from deepcoder_core.protocols import Tool
from deepcoder_core.sandbox import SandboxPool


@pytest.fixture(scope="module")
def pool():
    with SandboxPool(size=2) as pool:
        yield pool


@pytest.fixture
def tool(pool):
    return PythonTool(timeout=5.0, pool=pool)


def test_registered_through_the_plugin_registry():
    entry = plugins.lookup("tool", "python")
    assert entry.plugin == "deepcoder-python-executor"
    tool = plugins.build("tool", "python", memory_mb=128)
    assert isinstance(tool, Tool) and tool.name == "python"
    assert "math" in tool.description and tool.limits.memory_mb == 128


def test_observation_has_stdout_then_last_expression(tool):
    observation = tool.run("print('hello')\nx = 6 * 7\nx")
    assert observation.ok and observation.text == "hello\n42"
    assert observation.meta["status"] == "ok" and observation.meta["duration"] > 0
    assert tool.run("y = 1").text == "(no output)"
    assert tool.run("None").text == "(no output)"
    assert tool.run("print('a')\nprint('b')").text == "a\nb"


def test_ordinary_code_works(tool):
    code = """
import collections, heapq, itertools, json, re, fractions, dataclasses, functools
class Node:
    def __init__(self, value):
        self.value = value
        self.children = []
heap = [5, 1, 4]
heapq.heapify(heap)
Point = dataclasses.make_dataclass("Point", ["x", "y"])
@functools.lru_cache(maxsize=None)
def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)
counts = collections.Counter("abracadabra")
pairs = list(itertools.combinations("abc", 2))
total = 0
for a, b in pairs:
    total += len(a + b)
result = {"heap": heapq.heappop(heap), "fib": fib(30), "top": counts.most_common(1),
          "json": json.dumps({"a": [1, 2]}), "re": re.findall(r"\\d+", "a1b22"),
          "frac": str(fractions.Fraction(3, 6)), "point": Point(1, 2).x,
          "node": Node(3).value, "total": total, "fstring": f"{1 + 1:>3}"}
result
"""
    observation = tool.run(code)
    assert observation.ok, observation.text
    value = eval(observation.text)  # the repr of a plain dict
    assert value == {
        "heap": 1,
        "fib": 832040,
        "top": [("a", 5)],
        "json": '{"a": [1, 2]}',
        "re": ["1", "22"],
        "frac": "1/2",
        "point": 1,
        "node": 3,
        "total": 6,
        "fstring": "  2",
    }


def test_error_is_a_short_traceback_without_host_paths(tool):
    observation = tool.run("def f(x):\n    return 1 / x\n\nf(0)")
    assert not observation.ok and observation.meta["status"] == "error"
    assert observation.text.startswith("Traceback (most recent call last):")
    assert 'File "<python>", line 4, in <module>' in observation.text
    assert 'File "<python>", line 2, in f' in observation.text
    assert observation.text.endswith("ZeroDivisionError: division by zero")
    assert "/" not in observation.text.replace("1 / x", "")  # no host file paths


def test_syntax_error_names_the_line(tool):
    observation = tool.run("x = 1\nif x\n    pass")
    assert not observation.ok
    assert "SyntaxError" in observation.text and "line 2" in observation.text


def test_names_persist_within_a_session_and_never_cross_sessions(tool):
    assert tool.run("secret_a = 'only-in-a'", session="a").ok
    assert tool.run("def double(v):\n    return 2 * v", session="a").ok
    assert tool.run("double(secret_a)", session="a").text == repr("only-in-a" * 2)
    other = tool.run("secret_a", session="b")
    assert not other.ok and "NameError" in other.text and "only-in-a" not in other.text
    assert not tool.run("secret_a").ok  # no session: nothing kept
    assert tool.run("secret_a", session="a").meta["session_cells"] == 4
    tool.close("a")
    assert not tool.run("secret_a", session="a").ok


def test_failed_cell_leaves_no_state_and_replay_is_silent(tool):
    assert tool.run("print('once')\nkept = 1", session="s").text == "once"
    failed = tool.run("lost = 2\n1 / 0", session="s")
    assert not failed.ok
    assert tool.run("kept", session="s").text == "1"  # 'once' is not printed again
    assert "NameError" in tool.run("lost", session="s").text


def test_replay_is_deterministic_for_random(tool):
    first = tool.run("import random\nx = random.random()\nx", session="r").text
    assert tool.run("x", session="r").text == first
    assert tool.run("x", session="r").text == first


def test_sessions_are_thread_safe(tool):
    results = {}

    def work(i):
        tool.run(f"mine = {i}", session=f"t{i}")
        results[i] = tool.run("mine * 10", session=f"t{i}").text

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: str(i * 10) for i in range(6)}


def test_options_timeout_memory_and_output(pool):
    small = PythonTool(timeout=0.5, memory_mb=64, max_output_chars=200, pool=pool)
    slow = small.run("while True:\n    pass", timeout=30)  # the tool's own timeout is the cap
    assert slow.meta["status"] == "timeout" and "timed out after 0.5 s" in slow.text
    assert "MemoryError" in small.run("len('x' * 100_000_000)").text
    assert PythonTool(pool=pool).run("len('x' * 100_000_000)").text == "100000000"
    flood = small.run("print('y' * 5000)")
    assert flood.meta["truncated"] and "output truncated" in flood.text
    assert len(flood.text) < 300
    with pytest.raises(ValueError, match="memory_mb"):
        PythonTool(memory_mb=1)


# ---------------------------------------------------------------------------- CLI


def test_cli_tools_list():
    result = CliRunner().invoke(cli, ["tools", "list", "--json"])
    assert result.exit_code == 0, result.output
    listing = json.loads(result.output)
    rows = {row["name"]: row for row in listing["tools"]}
    assert rows["python"]["plugin"] == "deepcoder-python-executor"
    assert "REPL" in rows["python"]["description"]
    assert listing["sandbox"]["isolation"] == "namespaces" and listing["sandbox"]["available"]


def test_cli_tools_list_shows_the_level_from_the_config(tmp_path):
    from deepcoder_core.sandbox import configure

    config = tmp_path / "c.yaml"
    config.write_text("sandbox:\n  isolation: rlimits\n")
    try:
        result = CliRunner().invoke(cli, ["tools", "list", "--config", str(config)])
    finally:
        configure(isolation="namespaces")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("sandbox isolation: rlimits (rlimits, empty environment")


def test_cli_tools_run_from_stdin_and_file(tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["tools", "run", "python", "-"], input="print(2 ** 10)\n")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {
        "ok": True,
        "text": "1024",
        "meta": json.loads(result.output)["meta"],
    }
    source = tmp_path / "bad.py"
    source.write_text("import os\n")
    result = runner.invoke(cli, ["tools", "run", "python", "--input", str(source)])
    observation = json.loads(result.output)
    assert result.exit_code == 0 and observation["ok"] is False
    assert "not allowed" in observation["text"] and observation["meta"]["status"] == "error"


def test_cli_tools_run_errors_are_one_line(tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["tools", "run", "python"])
    assert result.exit_code == 2 and "exactly one input" in result.output
    result = runner.invoke(cli, ["tools", "run", "pyhton", "-"], input="1")
    assert result.exit_code == 2 and "did you mean 'python'" in result.output
    result = runner.invoke(cli, ["tools", "run", "python", "-i", str(tmp_path / "missing.py")])
    assert result.exit_code == 2 and "cannot read tool input" in result.output
    result = runner.invoke(cli, ["tools", "run", "python", "-o", "memory_mb=1", "-"], input="1")
    assert result.exit_code == 2 and "memory_mb" in result.output
    result = runner.invoke(cli, ["tools", "run", "python", "-o", "novalue", "-"], input="1")
    assert result.exit_code == 2 and "KEY=VALUE" in result.output


def test_unavailable_sandbox_is_an_observation_not_an_exception():
    closed = SandboxPool(size=1)
    closed.close()
    observation = PythonTool(pool=closed).run("1")
    assert not observation.ok and observation.meta == {"status": "unavailable"}
    assert observation.text == "sandbox unavailable: the sandbox pool is closed"
