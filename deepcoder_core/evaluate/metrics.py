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
- ``tool_call_validity``: steps with a parseable action whose tool ran successfully
  (``step.action is not None and step.observation_ok``) / steps, pooled over the group's
  trajectories. The denominator is every step, final-answer steps included, so it reads as
  "how much of the agent's work was a tool call that worked"; an agent that answers at once
  without calling a tool scores 0.
- ``format_stopped_rate``: trajectories the agent loop ended early because of repeated
  format errors (``Trajectory.error`` starting with ``"stopped after"``) / trajectories.
- ``teacher_error_rate``: trajectories ended by a teacher failure (network, server).
- ``reasoning_tokens`` / ``action_tokens`` / ``answer_tokens``: mean per trajectory of the
  thoughts plus thinking text, of the tool names plus inputs, and of the final answer.
  Counted with the Qwen3 tokenizer for every model, so models with different vocabularies
  are compared on one scale (a regex word count if the tokenizer files are missing).
- agreement with teacher trajectories (when given): see :func:`agreement`.

Intervals. ``pass@1``, ``tests_pass_rate``, ``format_error_rate``, ``tool_call_validity``,
``mean_steps`` and ``format_stopped_rate`` (:data:`INTERVAL_METRICS`) carry a 95% interval:
a percentile bootstrap (Efron & Tibshirani 1993, "An Introduction to the Bootstrap",
ch. 13) with two-stage resampling for nested data (Davison & Hinkley 1997, "Bootstrap
Methods and their Application", section 3.8): each of ``B = 2000`` rounds draws the
problems with replacement, then, within each drawn problem, its samples with replacement,
and recomputes the metric; the interval is the 2.5% and 97.5% quantiles of the ``B``
values. The seed is fixed (0), so a report is reproducible. Resampling problems is what
makes the interval honest about the problem set being a sample too; resampling samples
adds the model's own sampling noise. :func:`paired_bootstrap_difference` does the same for
the difference of two models on the same problems and samples, drawing one set of indices
for both, so what the problems share cancels; a difference is called only when its
interval excludes 0.
"""

from __future__ import annotations

import ast
import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

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
        "valid_calls": sum(1 for s in calls if s.observation_ok),
        "format_errors": sum(1 for s in steps if not s.action and s.observation_ok is False),
        "format_stopped": format_stopped(trajectory),
        "reasoning_tokens": sum(count(step_reasoning(s)) for s in steps),
        "action_tokens": sum(count(_action_text(s.action)) for s in steps),
        "answer_tokens": count(trajectory.final_answer or ""),
        "tests_fraction": (
            trajectory.tests_passed / trajectory.tests_total if trajectory.tests_total else 0.0
        ),
        "teacher_error": (trajectory.error or "").startswith("teacher error"),
    }


FORMAT_STOP_PREFIX = "stopped after"
"""How the agent loop's ``Trajectory.error`` begins when repeated format errors ended a run."""


def format_stopped(trajectory: Trajectory) -> bool:
    """Whether the agent loop ended this trajectory early for repeated format errors."""
    return (trajectory.error or "").startswith(FORMAT_STOP_PREFIX)


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


# ---------------------------------------------------------------------------- intervals

BOOTSTRAP_ROUNDS = 2000
BOOTSTRAP_SEED = 0
INTERVAL_LEVEL = 0.95

Statistic = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""``(values [B, P, S, K], mask [B, P, S]) -> [B]``: a metric of ``B`` resampled groups of
``P`` problems with up to ``S`` samples each; ``K`` numbers per sample; ``mask`` marks the
real samples."""


def problem_mean(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean over problems of each problem's mean over its samples (pass@1 = mean c/n)."""
    per_problem = (values[..., 0] * mask).sum(-1) / mask.sum(-1)
    return per_problem.mean(-1)


def sample_mean(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean over every sample of the group (a per-trajectory mean such as ``mean_steps``)."""
    return (values[..., 0] * mask).sum((-2, -1)) / mask.sum((-2, -1))


def ratio(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Pooled ratio ``sum(numerator) / sum(denominator)`` over the group's samples
    (``K = 2``); NaN where the denominator is 0."""
    top = (values[..., 0] * mask).sum((-2, -1))
    bottom = (values[..., 1] * mask).sum((-2, -1))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(bottom > 0, top / np.where(bottom > 0, bottom, 1), np.nan)


def _padded(values_by_problem: Sequence[Sequence[Any]]) -> tuple[np.ndarray, np.ndarray]:
    """``[P, S, K]`` values (problems without samples dropped) and ``[P]`` sample counts."""
    rows = [[np.atleast_1d(np.asarray(v, dtype=float)) for v in vs] for vs in values_by_problem]
    rows = [r for r in rows if r]
    if not rows:
        return np.zeros((0, 0, 1)), np.zeros(0, dtype=int)
    width = rows[0][0].shape[0]
    counts = np.array([len(r) for r in rows])
    out = np.zeros((len(rows), int(counts.max()), width))
    for i, r in enumerate(rows):
        out[i, : len(r)] = np.stack(r)
    return out, counts


def bootstrap_draws(
    counts: np.ndarray, rounds: int = BOOTSTRAP_ROUNDS, seed: int = BOOTSTRAP_SEED
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The resampling of :func:`bootstrap_interval`: ``(problems [B, P], samples [B, P, S],
    mask [B, P, S])``.

    In this order, from ``numpy.random.default_rng(seed)``: ``integers(0, P, (B, P))`` picks
    the problems; ``random((B, P, S))`` ``u`` picks, for drawn problem ``p`` with ``n_p``
    samples, sample ``floor(u * n_p)`` in each of its first ``n_p`` slots (the others are
    masked out). The same seed and counts give the same draws, so every metric of a group
    (and both sides of a paired difference) is resampled alike.
    """
    rng = np.random.default_rng(seed)
    problems = rng.integers(0, len(counts), size=(rounds, len(counts)))
    width = int(counts.max()) if len(counts) else 0
    u = rng.random((rounds, len(counts), width))
    n = counts[problems]
    samples = np.floor(u * n[..., None]).astype(int)
    mask = np.arange(width) < n[..., None]
    return problems, samples, mask


def _percentile(values: np.ndarray, level: float) -> tuple[float, float] | None:
    values = values[~np.isnan(values)]
    if values.size == 0:
        return None
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def bootstrap_interval(
    values_by_problem: Sequence[Sequence[Any]],
    statistic: Statistic = problem_mean,
    rounds: int = BOOTSTRAP_ROUNDS,
    seed: int = BOOTSTRAP_SEED,
    level: float = INTERVAL_LEVEL,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of ``statistic`` over problems x samples (module
    docstring): ``values_by_problem[p][s]`` is sample ``s`` of problem ``p``, a number or a
    tuple (``ratio`` takes ``(numerator, denominator)``). None when there is no data (or the
    statistic is undefined in every round)."""
    values, counts = _padded(values_by_problem)
    if not len(counts):
        return None
    problems, samples, mask = bootstrap_draws(counts, rounds, seed)
    drawn = values[problems[..., None], samples]
    return _percentile(statistic(drawn, mask), level)


def paired_bootstrap_difference(
    a_by_problem: Sequence[Sequence[Any]],
    b_by_problem: Sequence[Sequence[Any]],
    statistic: Statistic = problem_mean,
    rounds: int = BOOTSTRAP_ROUNDS,
    seed: int = BOOTSTRAP_SEED,
    level: float = INTERVAL_LEVEL,
) -> dict[str, Any] | None:
    """``statistic(a) - statistic(b)`` with its paired percentile bootstrap interval: ``a``
    and ``b`` hold the same problems and samples in the same order (sample ``s`` of problem
    ``p`` of one is paired with the other's), and each round draws one set of indices for
    both. Returns ``{difference, interval: [lo, hi], excludes_zero}``, None without data."""
    a, counts = _padded(a_by_problem)
    b, b_counts = _padded(b_by_problem)
    if a.shape[:2] != b.shape[:2] or not np.array_equal(counts, b_counts):
        raise ValueError("a paired difference needs the same problems and samples on both sides")
    if not len(counts):
        return None
    full = (np.arange(a.shape[1]) < counts[:, None])[None]
    difference = float(statistic(a[None], full)[0] - statistic(b[None], full)[0])
    problems, samples, mask = bootstrap_draws(counts, rounds, seed)
    rows = problems[..., None]
    deltas = statistic(a[rows, samples], mask) - statistic(b[rows, samples], mask)
    interval = _percentile(deltas, level)
    if interval is None or math.isnan(difference):
        return None
    return {
        "difference": difference,
        "interval": list(interval),
        "excludes_zero": interval[0] > 0 or interval[1] < 0,
    }


def _interval_values(trajectory: Trajectory) -> dict[str, tuple[float, ...]]:
    """Per trajectory, the numbers each interval metric's statistic takes."""
    steps = trajectory.steps
    total = trajectory.tests_total
    return {
        "pass@1": (float(trajectory.success),),
        "tests_pass_rate": (trajectory.tests_passed / total if total else 0.0,),
        "format_error_rate": (
            float(sum(1 for s in steps if not s.action and s.observation_ok is False)),
            float(len(steps)),
        ),
        "tool_call_validity": (
            float(sum(1 for s in steps if s.action is not None and s.observation_ok)),
            float(len(steps)),
        ),
        "mean_steps": (float(len(steps)),),
        "format_stopped_rate": (float(format_stopped(trajectory)),),
    }


INTERVAL_METRICS: dict[str, Statistic] = {
    "pass@1": problem_mean,
    "tests_pass_rate": sample_mean,
    "format_error_rate": ratio,
    "tool_call_validity": ratio,
    "mean_steps": sample_mean,
    "format_stopped_rate": sample_mean,
}
"""The metrics that carry an interval, and the statistic each is (as in :func:`group_metrics`)."""


def interval_values(
    records: Iterable[Trajectory], keys: Sequence[tuple[str, int]] | None = None
) -> tuple[list[tuple[str, int]], dict[str, list[list[tuple[float, ...]]]]]:
    """Per interval metric, the per-sample values grouped by problem, in the order of
    ``keys`` (``(problem_id, sample)`` pairs; default: the records' own, by first
    appearance of the problem, then sample). Returns the keys used and the values."""
    by_key = {(r.problem_id, r.sample): r for r in records}
    if keys is None:
        first = {p: i for i, p in enumerate(dict.fromkeys(p for p, _ in by_key))}
        keys = sorted(by_key, key=lambda k: (first[k[0]], k[1]))
    grouped: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for key in keys:
        grouped[key[0]].append(key)
    values: dict[str, list[list[tuple[float, ...]]]] = {m: [] for m in INTERVAL_METRICS}
    for problem_keys in grouped.values():
        rows = [_interval_values(by_key[k]) for k in problem_keys]
        for metric in INTERVAL_METRICS:
            values[metric].append([row[metric] for row in rows])
    return list(keys), values


def metric_intervals(records: Iterable[Trajectory]) -> dict[str, list[float] | None]:
    """The 95% interval of every :data:`INTERVAL_METRICS` metric of a group of trajectories."""
    _, values = interval_values(records)
    out: dict[str, list[float] | None] = {}
    for metric, statistic in INTERVAL_METRICS.items():
        interval = bootstrap_interval(values[metric], statistic)
        out[metric] = list(interval) if interval is not None else None
    return out


def paired_differences(a: Iterable[Trajectory], b: Iterable[Trajectory]) -> dict[str, Any]:
    """``a - b`` for every interval metric, paired on the ``(problem_id, sample)`` pairs both
    have (:func:`paired_bootstrap_difference`), with ``pairs`` (how many)."""
    a_by = {(r.problem_id, r.sample): r for r in a}
    b_by = {(r.problem_id, r.sample): r for r in b}
    common = [k for k in a_by if k in b_by]
    keys, a_values = interval_values(a_by.values(), common)
    _, b_values = interval_values(b_by.values(), keys)
    out: dict[str, Any] = {"pairs": len(keys)}
    for metric, statistic in INTERVAL_METRICS.items():
        out[metric] = paired_bootstrap_difference(a_values[metric], b_values[metric], statistic)
    return out


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
        tool_call_validity=sum(m["valid_calls"] for m in measures) / steps if steps else None,
        format_stopped_rate=_mean(float(m["format_stopped"]) for m in measures),
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
    out["intervals"] = metric_intervals(records)
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
