"""Evaluation metrics: pure functions of trajectories (:class:`~deepcoder_core.records.Trajectory`),
no files, no models.

Metrics of a group of problems (definitions also written into the report, see
:data:`deepcoder_core.evaluate.report.DEFINITIONS`):

- ``pass@k``: mean over problems of the unbiased estimator of Chen et al. (2021), see
  :func:`pass_at_k`, with ``n`` samples and ``c`` of them passing every test.
- ``success_rate``: share of trajectories passing every test (= pass@1 for any n).
- ``tests_pass_rate``: mean share of a problem's tests that the answer passes.
- ``mean_steps``: teacher replies per trajectory.
- ``tool_error_rate``: tool calls whose observation reported failure (the tool failed,
  timed out or does not exist) / tool calls. ``format_error_rate``: replies with neither a
  valid action nor a final answer / replies.
- ``teacher_error_rate``: trajectories ended by a teacher failure (network, server).
- ``reasoning_tokens`` / ``action_tokens`` / ``answer_tokens``: mean per trajectory of the
  thoughts plus thinking text, of the tool names plus inputs, and of the final answer.
  Counted with the Qwen3 tokenizer for every model, so models with different vocabularies
  are compared on one scale (a regex word count if the tokenizer files are missing).
- agreement with teacher trajectories (when given): see :func:`agreement`.
"""

from __future__ import annotations

import ast
import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from typing import Any

from ..records import Action, Step, Trajectory

# ---------------------------------------------------------------------------- pass@k


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k estimator (Chen et al. 2021, "Evaluating Large Language Models Trained
    on Code", eq. 1 and its numerically stable form in Figure 3).

    With ``n`` samples of which ``c`` are correct, the probability that at least one of ``k``
    samples drawn without replacement is correct:

        pass@k = 1 - C(n - c, k) / C(n, k) = 1 - prod_{i = n-c+1}^{n} (1 - k / i)

    The product avoids the huge binomials. ``n - c < k`` means every draw of ``k`` holds a
    correct sample: 1.0.
    """
    if n < 1 or k < 1 or not 0 <= c <= n:
        raise ValueError(f"pass_at_k needs n >= 1, k >= 1 and 0 <= c <= n; got n={n} c={c} k={k}")
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got n={n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


# ---------------------------------------------------------------------------- text measures

_WORD = re.compile(r"\w+|[^\w\s]")


def words(text: str | None) -> list[str]:
    """Lower-cased word and punctuation tokens (the unit of the agreement measures)."""
    return _WORD.findall((text or "").lower())


def token_f1(candidate: list[str], reference: list[str]) -> float:
    """Bag-of-tokens F1 (SQuAD, Rajpurkar et al. 2016): 2PR/(P+R) over the multiset overlap."""
    if not candidate and not reference:
        return 1.0
    overlap = sum((Counter(candidate) & Counter(reference)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(candidate), overlap / len(reference)
    return 2 * precision * recall / (precision + recall)


def rouge_l(candidate: list[str], reference: list[str], limit: int = 400) -> float:
    """ROUGE-L F1 (Lin 2004): from the longest common subsequence, F = 2PR/(P+R) with
    P = LCS/|candidate|, R = LCS/|reference|. Sequences are cut at ``limit`` tokens (O(nm))."""
    candidate, reference = candidate[:limit], reference[:limit]
    if not candidate and not reference:
        return 1.0
    if not candidate or not reference:
        return 0.0
    previous = [0] * (len(reference) + 1)
    for a in candidate:
        current = [0]
        for j, b in enumerate(reference):
            current.append(previous[j] + 1 if a == b else max(previous[j + 1], current[j]))
        previous = current
    lcs = previous[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(candidate), lcs / len(reference)
    return 2 * precision * recall / (precision + recall)


def normalize_code(text: str | None) -> str:
    """Code in a canonical form: ``ast.unparse(ast.parse(.))`` drops comments and layout
    differences; text that is not Python has its whitespace collapsed instead."""
    text = (text or "").strip()
    try:
        return ast.unparse(ast.parse(text))
    except (SyntaxError, ValueError, RecursionError):
        return " ".join(text.split())


class TokenCounter:
    """Counts tokens with the Qwen3 tokenizer (``tokenizers``), else words and punctuation."""

    def __init__(self) -> None:
        self._tokenizer: Any = None
        self.name = "regex"
        try:
            from tokenizers import Tokenizer

            from ..models import qwen3_tokenizer_path

            self._tokenizer = Tokenizer.from_file(str(qwen3_tokenizer_path() / "tokenizer.json"))
            self.name = "qwen3"
        except Exception:  # missing package or files: the word count is still comparable
            self._tokenizer = None

    def __call__(self, text: str | None) -> int:
        if not text:
            return 0
        if self._tokenizer is not None:
            return len(self._tokenizer.encode(text, add_special_tokens=False).ids)
        return len(words(text))


# ---------------------------------------------------------------------------- per trajectory


def step_reasoning(step: Step) -> str:
    """The reasoning text of a step: its separate thinking, then its thought."""
    return "\n".join(p for p in (step.reasoning, step.thought) if p)


def _action_text(action: Action | None) -> str:
    return f"{action.tool}\n{action.input}" if action else ""


def trajectory_measures(trajectory: Trajectory, count: Callable[[str], int]) -> dict[str, Any]:
    """Counts of one trajectory that the group metrics average."""
    steps = trajectory.steps
    calls = [s for s in steps if s.action]
    return {
        "steps": len(steps),
        "tool_calls": len(calls),
        "tool_errors": sum(1 for s in calls if s.observation_ok is False),
        "format_errors": sum(1 for s in steps if not s.action and s.observation_ok is False),
        "reasoning_tokens": sum(count(step_reasoning(s)) for s in steps),
        "action_tokens": sum(count(_action_text(s.action)) for s in steps),
        "answer_tokens": count(trajectory.final_answer or ""),
        "tests_fraction": (
            trajectory.tests_passed / trajectory.tests_total if trajectory.tests_total else 0.0
        ),
        "teacher_error": (trajectory.error or "").startswith("teacher error"),
    }


def agreement(student: Trajectory, teacher: Trajectory) -> dict[str, float | None]:
    """How closely a student trajectory follows the teacher's on the same problem.

    Steps are aligned by position: step i of the student with step i of the teacher, over
    ``max(len_s, len_t)`` positions (a step one side lacks scores 0).

    - ``reasoning_f1`` / ``reasoning_rouge_l``: mean over positions of the token F1 and the
      ROUGE-L F1 (:func:`token_f1`, :func:`rouge_l`) between the steps' reasoning texts
      (thinking + thought, lower-cased word tokens).
    - ``action_exact``: over positions where either side calls a tool, the share where both
      call the same tool with the identical input string.
    - ``action_match``: the same with inputs compared after :func:`normalize_code`
      (layout and comments ignored). None when neither side called a tool.
    - ``answer_match``: 1 when both final answers are the same code after normalization.
    """
    s_steps, t_steps = student.steps, teacher.steps
    positions = max(len(s_steps), len(t_steps))
    f1 = rouge = 0.0
    exact = match = 0
    action_positions = 0
    for i in range(positions):
        s = s_steps[i] if i < len(s_steps) else None
        t = t_steps[i] if i < len(t_steps) else None
        if s is not None and t is not None:
            a, b = words(step_reasoning(s)), words(step_reasoning(t))
            f1 += token_f1(a, b)
            rouge += rouge_l(a, b)
        sa = s.action if s else None
        ta = t.action if t else None
        if sa or ta:
            action_positions += 1
            if sa and ta and sa.tool == ta.tool:
                exact += sa.input == ta.input
                match += normalize_code(sa.input) == normalize_code(ta.input)
    answer = None
    if student.final_answer is not None or teacher.final_answer is not None:
        answer = float(normalize_code(student.final_answer) == normalize_code(teacher.final_answer))
    return {
        "reasoning_f1": f1 / positions if positions else None,
        "reasoning_rouge_l": rouge / positions if positions else None,
        "action_exact": exact / action_positions if action_positions else None,
        "action_match": match / action_positions if action_positions else None,
        "answer_match": answer,
    }


# ---------------------------------------------------------------------------- metrics

AGREEMENT_KEYS = (
    "reasoning_f1",
    "reasoning_rouge_l",
    "action_exact",
    "action_match",
    "answer_match",
)


def _mean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def group_metrics(
    records: list[Trajectory],
    ks: list[int],
    count: Callable[[str], int],
    references: dict[str, Trajectory] | None = None,
) -> dict[str, Any]:
    """The metrics (module docstring) of the trajectories of one model on one group."""
    by_problem: dict[str, list[Trajectory]] = defaultdict(list)
    for record in records:
        by_problem[record.problem_id].append(record)
    measures = [trajectory_measures(r, count) for r in records]
    out: dict[str, Any] = {"problems": len(by_problem), "trajectories": len(records)}
    for k in ks:
        scores = [
            pass_at_k(len(rs), sum(1 for r in rs if r.success), k)
            for rs in by_problem.values()
            if len(rs) >= k
        ]
        out[f"pass@{k}"] = _mean(scores)
    calls = sum(m["tool_calls"] for m in measures)
    steps = sum(m["steps"] for m in measures)
    out.update(
        success_rate=_mean(float(r.success) for r in records),
        tests_pass_rate=_mean(m["tests_fraction"] for m in measures),
        mean_steps=_mean(m["steps"] for m in measures),
        tool_calls=_mean(m["tool_calls"] for m in measures),
        tool_error_rate=sum(m["tool_errors"] for m in measures) / calls if calls else None,
        format_error_rate=sum(m["format_errors"] for m in measures) / steps if steps else None,
        teacher_error_rate=_mean(float(m["teacher_error"]) for m in measures),
        reasoning_tokens=_mean(m["reasoning_tokens"] for m in measures),
        action_tokens=_mean(m["action_tokens"] for m in measures),
        answer_tokens=_mean(m["answer_tokens"] for m in measures),
    )
    if references is not None:
        pairs = [
            agreement(r, references[r.problem_id]) for r in records if r.problem_id in references
        ]
        out["agreement"] = {
            "trajectories": len(pairs),
            **{key: _mean(p[key] for p in pairs) for key in AGREEMENT_KEYS},
        }
    return out


def model_report(
    records: list[Trajectory],
    ks: list[int],
    count: Callable[[str], int],
    references: dict[str, Trajectory] | None = None,
    suite_of: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Overall, per-difficulty and per-category metrics, and per-problem n and c; with
    ``suite_of`` (problem id -> problem set name) naming several sets, per set too."""
    difficulty: dict[str, list[Trajectory]] = defaultdict(list)
    category: dict[str, list[Trajectory]] = defaultdict(list)
    suites: dict[str, list[Trajectory]] = defaultdict(list)
    problems: dict[str, dict[str, Any]] = {}
    for record in records:
        difficulty[record.difficulty or "unknown"].append(record)
        category[record.category or "unknown"].append(record)
        suites[(suite_of or {}).get(record.problem_id, "problems")].append(record)
        entry = problems.setdefault(
            record.problem_id,
            {"n": 0, "c": 0, "category": record.category, "difficulty": record.difficulty},
        )
        entry["n"] += 1
        entry["c"] += record.success
    order = {"easy": 0, "medium": 1, "hard": 2}
    by_suite = (
        {name: group_metrics(rs, ks, count, references) for name, rs in suites.items()}
        if len(set((suite_of or {}).values())) > 1
        else None
    )
    return {
        "overall": group_metrics(records, ks, count, references),
        **({"by_suite": by_suite} if by_suite else {}),
        "by_difficulty": {
            d: group_metrics(rs, ks, count, references)
            for d, rs in sorted(difficulty.items(), key=lambda kv: (order.get(kv[0], 3), kv[0]))
        },
        "by_category": {
            c: group_metrics(rs, ks, count, references) for c, rs in sorted(category.items())
        },
        "per_problem": problems,
    }
