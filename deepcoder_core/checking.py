"""Check a candidate solution against a problem's tests, in the sandbox.

The candidate runs as ordinary Python (no RestrictedPython: solutions may use any module),
isolated and limited by ``deepcoder_core.sandbox``. Tests follow the HumanEval convention:
a ``check(candidate)`` function called with the function named ``entry_point``, and/or
plain top-level asserts.

Partial credit: every ``assert`` statement of the tests is rewritten (``ast``) into

    try:
        assert <test>, <msg>
    except BaseException as _deepcoder_exc:
        _deepcoder_failed(_deepcoder_exc, <line>)
    else:
        _deepcoder_passed()

so one failing assert (or a candidate that raises) does not hide the others, and
top-level statements run one at a time. ``passed`` counts asserts that held, ``total`` the
asserts executed, at least the number of assert statements in the source (asserts never
reached, e.g. after a crash or in a loop that did not run, count as failed). The counts
are reported as progress while the tests run, so a candidate that hangs on its fifth
assert is still credited with the four before it (the hanging one counts as failed).
"""

from __future__ import annotations

import ast
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from .sandbox import (
    SandboxError,
    SandboxPool,
    SandboxRequest,
    get_pool,
    register_source,
    report_progress,
    short_traceback,
)

if TYPE_CHECKING:
    from .problems import Problem

CHECK_RUNNER = "deepcoder_core.checking:run_check"
_SOLUTION, _TESTS = "<solution>", "<tests>"


@dataclass
class CheckResult:
    passed: int
    total: int
    error: str | None = None

    @property
    def success(self) -> bool:
        return self.total > 0 and self.passed == self.total

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "success": self.success}


def count_asserts(tests: str) -> int:
    """Assert statements in the test source (0 if it does not parse)."""
    try:
        tree = ast.parse(tests)
    except SyntaxError:
        return 0
    return sum(isinstance(node, ast.Assert) for node in ast.walk(tree))


class _CountAsserts(ast.NodeTransformer):
    def visit_Assert(self, node: ast.Assert) -> ast.stmt:
        failed = ast.Expr(
            ast.Call(
                ast.Name("_deepcoder_failed", ast.Load()),
                [ast.Name("_deepcoder_exc", ast.Load()), ast.Constant(node.lineno)],
                [],
            )
        )
        passed = ast.Expr(ast.Call(ast.Name("_deepcoder_passed", ast.Load()), [], []))
        handler = ast.ExceptHandler(
            ast.Name("BaseException", ast.Load()), "_deepcoder_exc", [failed]
        )
        new = ast.Try(body=[node], handlers=[handler], orelse=[passed], finalbody=[])
        return ast.copy_location(new, node)


def _calls_check(tree: ast.Module) -> bool:
    """Whether the tests call ``check(...)`` themselves at top level."""
    for stmt in tree.body:
        for node in ast.walk(stmt):
            if isinstance(node, ast.FunctionDef | ast.ClassDef | ast.Lambda):
                break
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "check"
            ):
                return True
    return False


def run_check(payload: dict[str, Any], limits: dict[str, Any]) -> dict[str, Any]:
    """Sandbox runner (in the child): run the candidate, then the counted tests."""
    code, tests, entry_point = payload["code"], payload["tests"], payload.get("entry_point")
    register_source(_SOLUTION, code)
    register_source(_TESTS, tests)
    tree = ast.parse(tests, _TESTS)
    static_total = sum(isinstance(node, ast.Assert) for node in ast.walk(tree))
    counts = {"passed": 0, "executed": 0}
    errors: list[str] = []
    test_lines = tests.splitlines()

    def passed() -> None:
        counts["passed"] += 1
        counts["executed"] += 1
        report_progress(counts)

    def failed(exc: BaseException, line: int) -> None:
        counts["executed"] += 1
        report_progress(counts)
        if errors:
            return
        if isinstance(exc, AssertionError):
            source = test_lines[line - 1].strip() if 0 < line <= len(test_lines) else ""
            detail = f": {exc}" if str(exc) else ""
            errors.append(f"assertion failed (tests line {line}): {source}{detail}")
        else:
            errors.append(short_traceback(exc, [_SOLUTION, _TESTS]))

    def result() -> dict[str, Any]:
        total = max(counts["executed"], static_total)
        if not total and not errors:
            errors.append("the tests ran no assert: nothing was checked")
        return {
            "passed": counts["passed"],
            "total": total,
            "first_error": errors[0] if errors else None,
        }

    namespace: dict[str, Any] = {"__name__": "solution", "__builtins__": __builtins__}
    try:
        exec(compile(code, _SOLUTION, "exec"), namespace)
    except BaseException as exc:  # the candidate's own failure is the verdict
        errors.append(short_traceback(exc, [_SOLUTION]))
        return result()
    namespace["_deepcoder_passed"], namespace["_deepcoder_failed"] = passed, failed
    counted = ast.fix_missing_locations(_CountAsserts().visit(tree))
    for stmt in counted.body:
        try:
            exec(compile(ast.Module([stmt], []), _TESTS, "exec"), namespace)
        except BaseException as exc:
            if not errors:
                errors.append(short_traceback(exc, [_SOLUTION, _TESTS]))
    check = namespace.get("check")
    if callable(check) and not _calls_check(tree):
        if not entry_point:
            errors.append("the tests define check(candidate) but the problem has no entry_point")
        elif not callable(namespace.get(entry_point)):
            errors.append(f"the solution does not define a function named {entry_point!r}")
        else:
            try:
                check(namespace[entry_point])
            except BaseException as exc:
                if not errors:
                    errors.append(short_traceback(exc, [_SOLUTION, _TESTS]))
    return result()


def check_solution(
    problem: Problem, code: str, *, timeout: float = 10.0, pool: SandboxPool | None = None
) -> CheckResult:
    """Run ``code`` against ``problem.tests`` in the sandbox; never raises for the code's faults."""
    try:
        ast.parse(problem.tests)
    except SyntaxError as exc:
        return CheckResult(0, 0, f"problem {problem.id}: tests do not parse: {exc}")
    static_total = count_asserts(problem.tests)
    try:
        compile(code, _SOLUTION, "exec", dont_inherit=True)
    except (SyntaxError, ValueError) as exc:
        where = f" (line {exc.lineno})" if getattr(exc, "lineno", None) else ""
        return CheckResult(
            0,
            static_total,
            f"{type(exc).__name__}: {exc.msg if isinstance(exc, SyntaxError) else exc}{where}",
        )
    request = SandboxRequest(
        runner=CHECK_RUNNER,
        payload={"code": code, "tests": problem.tests, "entry_point": problem.entry_point},
    )
    try:
        result = (pool or get_pool()).run(request, timeout=timeout)
    except SandboxError as exc:  # recorded like any other failure; the caller goes on
        return CheckResult(0, static_total, f"sandbox unavailable: {exc}")
    if result.status != "ok" or "passed" not in result.data:
        error = result.error or f"check ended with {result.status}"
        progress = result.data.get("progress") or {}  # asserts decided before the child died
        passed, executed = progress.get("passed", 0), progress.get("executed", 0)
        return CheckResult(passed, max(static_total, executed + 1), error)
    return CheckResult(result.data["passed"], result.data["total"], result.data.get("first_error"))
