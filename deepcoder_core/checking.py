"""Check a candidate solution against a problem's tests, in the sandbox, with a verdict the
candidate cannot forge.

Each check runs in two sandbox children under two uids (``deepcoder_core.sandbox``: a
request with a partner). The *solution* child runs the candidate as ordinary Python (no
RestrictedPython: solutions may use any module) and answers calls; the *judge* child runs
the tests and alone holds the pipe the verdict travels on. The solution never sees the
tests or the counters; values cross between them as tagged JSON data (``to_data`` /
``from_data``: plain values only, never objects with behaviour), so a candidate that exits
early, writes to any descriptor, patches builtins, walks frames or returns an object whose
``__eq__`` always holds cannot raise the pass count. The tests themselves (from problem
files, also untrusted) get the same OS isolation. Consequences: a call's arguments are
copied (mutation of an argument is not seen by the tests), and arguments, results and
top-level values must be plain data (numbers, text, bytes, lists, tuples, sets, dicts,
``None``); a class defined by the solution cannot be used by the tests. A problem's
``context`` (the statement's imports and helpers) runs in the solution's process before the
solution; the tests repeat what they need of it.

Tests follow the HumanEval convention: a ``check(candidate)`` function called with the
function named ``entry_point``, and/or plain top-level asserts, which may call any
top-level function of the solution.

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
reached, e.g. after a crash or in a loop that did not run, count as failed). The judge
reports the counts as progress while the tests run, so a candidate that hangs on its fifth
assert is still credited with the four before it (the hanging one counts as failed).
"""

from __future__ import annotations

import ast
import base64
import builtins
import types
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, TypeGuard

from .sandbox import (
    SandboxError,
    SandboxPool,
    SandboxRequest,
    get_pool,
    partner,
    register_source,
    report_progress,
    short_traceback,
)
from .sandbox.protocol import ProtocolError

if TYPE_CHECKING:
    from .problems import Problem

JUDGE_RUNNER = "deepcoder_core.checking:run_judge"
SOLUTION_RUNNER = "deepcoder_core.checking:serve_solution"
_MAX_ASSERTS = 10_000_000  # a verdict claiming more asserts than this is not believed
_SOLUTION, _TESTS, _CONTEXT = "<solution>", "<tests>", "<context>"


@dataclass
class CheckResult:
    passed: int
    total: int
    error: str | None = None

    def __post_init__(self) -> None:
        if not (_count(self.passed) and _count(self.total) and self.passed <= self.total):
            raise ValueError(
                f"check result needs whole numbers 0 <= passed <= total, got "
                f"passed={self.passed!r}, total={self.total!r}"
            )
        if self.error is not None and not isinstance(self.error, str):
            raise ValueError(f"check result error must be text, got {type(self.error).__name__}")

    @property
    def success(self) -> bool:
        return self.total > 0 and self.passed == self.total

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "success": self.success}


def _count(value: Any) -> TypeGuard[int]:
    return type(value) is int and 0 <= value <= _MAX_ASSERTS


def count_asserts(tests: str) -> int:
    """Assert statements in the test source (0 if it does not parse)."""
    try:
        tree = ast.parse(tests)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
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


# ---------------------------------------------------------------------------- values as data

_MAX_DEPTH = 100
_SCALARS = (type(None), bool, int, float, str)


def to_data(value: Any, depth: int = 0) -> Any:
    """A value of the solution as tagged JSON: scalars as themselves, the rest ``[tag, body]``.

    Runs in the solution child, so it may be generous (subclasses, numpy via ``tolist``): the
    judge's ``from_data`` alone decides what a value can be.
    """
    if depth > _MAX_DEPTH:
        raise TypeError("the value is nested too deeply to cross to the tests")
    if type(value) in _SCALARS:
        return value
    for base in (bool, int, float, str):  # subclasses cross as their plain value
        if isinstance(value, base):
            return base(value)
    if isinstance(value, bytes | bytearray):
        return ["b", base64.b64encode(bytes(value)).decode()]
    if isinstance(value, complex):
        return ["c", [value.real, value.imag]]
    if isinstance(value, tuple):
        return ["t", [to_data(v, depth + 1) for v in value]]
    if isinstance(value, list):
        return ["l", [to_data(v, depth + 1) for v in value]]
    if isinstance(value, frozenset):
        return ["f", [to_data(v, depth + 1) for v in value]]
    if isinstance(value, set):
        return ["s", [to_data(v, depth + 1) for v in value]]
    if isinstance(value, dict):
        return ["d", [[to_data(k, depth + 1), to_data(v, depth + 1)] for k, v in value.items()]]
    if type(value).__name__ in ("Decimal", "Fraction"):
        return [type(value).__name__[0], str(value)]
    tolist = getattr(value, "tolist", None)  # numpy arrays and scalars
    if callable(tolist):
        return to_data(tolist(), depth + 1)
    raise TypeError(
        f"a value of type {type(value).__name__} cannot cross to the tests (plain data only)"
    )


def from_data(data: Any, depth: int = 0) -> Any:
    """The judge's reading of ``to_data``: builds only builtin values; ValueError otherwise."""
    if depth > _MAX_DEPTH:
        raise ValueError("value nested too deeply")
    if type(data) in _SCALARS:
        return data
    if type(data) is not list or len(data) != 2 or type(data[0]) is not str:
        raise ValueError("malformed value")
    tag, body = data
    if tag == "b" and type(body) is str:
        return base64.b64decode(body.encode(), validate=True)
    if tag == "c" and type(body) is list and len(body) == 2:
        real, imag = body
        if type(real) in (int, float) and type(imag) in (int, float):
            return complex(real, imag)
    if tag in ("D", "F") and type(body) is str:
        import decimal
        import fractions

        try:
            return decimal.Decimal(body) if tag == "D" else fractions.Fraction(body)
        except (ArithmeticError, ValueError):
            raise ValueError("malformed number") from None
    if type(body) is not list:
        raise ValueError("malformed value")
    if tag == "d":
        out = {}
        for pair in body:
            if type(pair) is not list or len(pair) != 2:
                raise ValueError("malformed mapping")
            key = from_data(pair[0], depth + 1)
            try:
                out[key] = from_data(pair[1], depth + 1)
            except TypeError:
                raise ValueError("unhashable key") from None
        return out
    items = [from_data(v, depth + 1) for v in body]
    try:
        if tag == "l":
            return items
        if tag == "t":
            return tuple(items)
        if tag == "s":
            return set(items)
        if tag == "f":
            return frozenset(items)
    except TypeError:
        raise ValueError("unhashable set member") from None
    raise ValueError(f"unknown value tag {tag!r}")


# ---------------------------------------------------------------------------- solution child


def _raised(exc: BaseException) -> dict[str, Any]:
    return {
        "raised": {
            "type": type(exc).__name__,
            "message": str(exc)[:2000],
            "traceback": short_traceback(exc, [_SOLUTION]),
        }
    }


def serve_solution(payload: dict[str, Any], limits: dict[str, Any]) -> dict[str, Any]:
    """Sandbox partner runner (solution child): run the candidate, then answer the judge."""
    channel = partner()
    code, context = payload["code"], payload.get("context")
    register_source(_SOLUTION, code)
    namespace: dict[str, Any] = {"__name__": "solution", "__builtins__": __builtins__}
    try:
        if context:  # the statement's imports and helpers, which the solution may call
            register_source(_CONTEXT, context)
            exec(compile(context, _CONTEXT, "exec"), namespace)
        exec(compile(code, _SOLUTION, "exec"), namespace)
        loaded: dict[str, Any] = {"names": {}, "values": {}}
        for name, value in list(namespace.items()):
            if name.startswith("__") or isinstance(value, types.ModuleType):
                continue
            if isinstance(value, type):
                loaded["names"][name] = "class"
            elif callable(value):
                loaded["names"][name] = "function"
            else:
                try:
                    loaded["values"][name] = to_data(value)
                except (TypeError, ValueError, RecursionError):
                    continue
    except BaseException as exc:  # the candidate's own failure is the verdict
        loaded = _raised(exc)
    while True:
        try:
            request = channel.recv()
        except ProtocolError:
            return {}
        if request.get("op") == "load":
            reply = loaded
        else:
            try:
                function = namespace[request["name"]]
                args = from_data(request["args"])
                kwargs = from_data(request["kwargs"])
                reply = {"value": to_data(function(*args, **kwargs))}
            except BaseException as exc:  # reported to the judge, which decides what it means
                reply = _raised(exc)
        try:
            channel.send(reply)
        except (ProtocolError, ValueError, OSError):
            channel.send(_raised(TypeError("the result is too large to cross to the tests")))


# ---------------------------------------------------------------------------- judge child


class SolutionError(Exception):
    """The candidate raised an exception that is not a builtin one, or ended."""


# Raised in the tests these would end the judge, or end a map()/filter() over the candidate
# early (so `all(map(candidate, xs))` would hold): they come back as SolutionError instead.
_NOT_RERAISED = (SystemExit, KeyboardInterrupt, GeneratorExit, StopIteration, StopAsyncIteration)


def _reraise(raised: Any) -> BaseException:
    """The exception the tests see for one the candidate raised (a builtin type when it was)."""
    if type(raised) is not dict:
        return SolutionError("the solution sent a malformed answer")
    name, message = str(raised.get("type", "")), str(raised.get("message", ""))
    cls = getattr(builtins, name, None)
    if (
        isinstance(cls, type)
        and issubclass(cls, BaseException)
        and not issubclass(cls, _NOT_RERAISED)
    ):
        try:
            exc: BaseException = cls(message) if message else cls()
        except Exception:
            exc = SolutionError(f"{name}: {message}")
    else:
        exc = SolutionError(f"{name}: {message}" if message else name)
    text = raised.get("traceback")
    exc.solution_traceback = text if type(text) is str else None  # type: ignore[attr-defined]
    return exc


class _Solution:
    """The judge's side of the channel: calls cross as data, answers come back as data."""

    def __init__(self, channel: Any):
        self.channel = channel
        self.ended: str | None = None

    def ask(self, request: dict[str, Any]) -> Any:
        if self.ended:
            raise SolutionError(self.ended)
        try:
            self.channel.send(request)
            reply = self.channel.recv()
        except (ProtocolError, OSError) as exc:
            self.ended = f"the solution process ended or broke the protocol ({exc})"
            raise SolutionError(self.ended) from None
        if type(reply) is not dict:
            raise SolutionError("the solution sent a malformed answer")
        return reply

    def call(self, name: str, args: tuple, kwargs: dict) -> Any:
        try:
            request = {"op": "call", "name": name, "args": to_data(args), "kwargs": to_data(kwargs)}
        except TypeError as exc:
            raise TypeError(
                f"an argument to {name}() cannot cross to the solution: {exc}"
            ) from None
        reply = self.ask(request)
        if "raised" in reply:
            raise _reraise(reply["raised"])
        try:
            return from_data(reply.get("value"))
        except ValueError as exc:
            raise SolutionError(f"{name}() returned a malformed value ({exc})") from None


def _remote_function(solution: _Solution, name: str) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        return solution.call(name, args, kwargs)

    call.__name__ = call.__qualname__ = name
    return call


def _remote_class(name: str) -> Any:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"class {name} of the solution cannot be used by the tests (values cross as data)"
        )

    refuse.__name__ = name
    return refuse


def _solution_name(name: Any) -> bool:
    """A name of the solution the tests may see: never one that would shadow a builtin the
    tests rely on (``abs``, ``sorted``, ``len``...) or a private or harness name."""
    return (
        type(name) is str
        and name.isidentifier()
        and not name.startswith("_")
        and name not in vars(builtins)
    )


def run_judge(payload: dict[str, Any], limits: dict[str, Any]) -> dict[str, Any]:
    """Sandbox runner (judge child): load the solution's names, then run the counted tests."""
    tests, entry_point = payload["tests"], payload.get("entry_point")
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
        remote = getattr(exc, "solution_traceback", None)
        if remote:
            errors.append(remote)
        elif isinstance(exc, AssertionError):
            source = test_lines[line - 1].strip() if 0 < line <= len(test_lines) else ""
            detail = f": {exc}" if str(exc) else ""
            errors.append(f"assertion failed (tests line {line}): {source}{detail}")
        else:
            errors.append(short_traceback(exc, [_TESTS]))

    def result() -> dict[str, Any]:
        total = max(counts["executed"], static_total)
        if not total and not errors:
            errors.append("the tests ran no assert: nothing was checked")
        return {
            "passed": counts["passed"],
            "total": total,
            "first_error": errors[0] if errors else None,
        }

    solution = _Solution(partner())
    try:
        loaded = solution.ask({"op": "load"})
    except SolutionError as exc:
        errors.append(str(exc))
        return result()
    if "raised" in loaded:
        raised = loaded["raised"] if type(loaded["raised"]) is dict else {}
        errors.append(str(raised.get("traceback") or raised.get("type") or "the solution failed"))
        return result()
    names = loaded.get("names") if type(loaded.get("names")) is dict else {}
    values = loaded.get("values") if type(loaded.get("values")) is dict else {}
    namespace: dict[str, Any] = {"__name__": "tests", "__builtins__": builtins}
    for name, value in values.items():
        if not _solution_name(name):
            continue
        try:
            namespace[name] = from_data(value)
        except ValueError:
            continue
    for name, kind in names.items():
        if _solution_name(name):
            namespace[name] = (
                _remote_function(solution, name) if kind == "function" else _remote_class(name)
            )
    namespace["_deepcoder_passed"], namespace["_deepcoder_failed"] = passed, failed
    counted = ast.fix_missing_locations(_CountAsserts().visit(tree))
    for stmt in counted.body:
        try:
            exec(compile(ast.Module([stmt], []), _TESTS, "exec"), namespace)
        except BaseException as exc:
            if not errors:
                errors.append(short_traceback(exc, [_TESTS]))
    check = namespace.get("check")
    if callable(check) and not _calls_check(tree):
        if not entry_point:
            errors.append("the tests define check(candidate) but the problem has no entry_point")
        elif names.get(entry_point) != "function":
            errors.append(f"the solution does not define a function named {entry_point!r}")
        else:
            try:
                check(namespace[entry_point])
            except BaseException as exc:
                if not errors:
                    errors.append(
                        getattr(exc, "solution_traceback", None) or short_traceback(exc, [_TESTS])
                    )
    return result()


def check_solution(
    problem: Problem, code: str, *, timeout: float = 10.0, pool: SandboxPool | None = None
) -> CheckResult:
    """Run ``code`` against ``problem.tests`` in the sandbox; never raises for the code's faults."""
    try:
        ast.parse(problem.tests)
    except (SyntaxError, ValueError, MemoryError, RecursionError) as exc:
        why = exc if isinstance(exc, SyntaxError | ValueError) else "nested too deeply to parse"
        return CheckResult(0, 0, f"problem {problem.id}: tests do not parse: {why}")
    static_total = count_asserts(problem.tests)
    try:
        compile(code, _SOLUTION, "exec", dont_inherit=True)
    except (MemoryError, RecursionError):  # Python's own parser gave up: hostile nesting
        return CheckResult(0, static_total, "the solution is nested too deeply to compile")
    except (SyntaxError, ValueError) as exc:
        line = getattr(exc, "lineno", None)
        where = f" (line {line})" if line else ""
        return CheckResult(
            0,
            static_total,
            f"{type(exc).__name__}: {exc.msg if isinstance(exc, SyntaxError) else exc}{where}",
        )
    request = SandboxRequest(
        runner=JUDGE_RUNNER,
        payload={"tests": problem.tests, "entry_point": problem.entry_point},
        partner=SOLUTION_RUNNER,
        partner_payload={"code": code, "context": getattr(problem, "context", None)},
    )
    try:
        result = (pool or get_pool()).run(request, timeout=timeout)
    except SandboxError as exc:  # recorded like any other failure; the caller goes on
        return CheckResult(0, static_total, f"sandbox unavailable: {exc}")
    data = result.data
    if result.status != "ok" or "passed" not in data:
        error = result.error or f"check ended with {result.status}"
        progress = data.get("progress")
        if not isinstance(progress, dict):
            progress = {}
        done, executed = progress.get("passed", 0), progress.get("executed", 0)
        if _count(done) and _count(executed) and done <= executed:
            return CheckResult(done, max(static_total, executed + 1), error)
        return CheckResult(0, max(static_total, 1), error)  # the judge's page alone counts
    passed, total, first = data.get("passed"), data.get("total"), data.get("first_error")
    if (
        _count(passed)
        and _count(total)
        and passed <= total
        and (first is None or type(first) is str)
    ):
        return CheckResult(passed, total, first)
    return CheckResult(0, static_total, "sandbox protocol error: malformed check result")
