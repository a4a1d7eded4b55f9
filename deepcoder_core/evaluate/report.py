"""The evaluation report files: ``report.md`` (settings, tables, definitions) and PNG charts.

Both read the ``report.json`` dict that :func:`deepcoder_core.evaluate.evaluate` builds: its
models' overall, per-set, per-difficulty and per-category metrics. Tables and charts are
drawn with the shared helpers of :mod:`deepcoder_core.report`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .metrics import AGREEMENT_KEYS

if TYPE_CHECKING:
    from ..report import Column

DEFINITIONS = {
    "pass@k": "1 - C(n-c,k)/C(n,k) per problem (n samples, c passing all tests), averaged over "
    "problems (Chen et al. 2021)",
    "success_rate": "trajectories passing every test / trajectories",
    "tests_pass_rate": "mean share of a problem's tests passed",
    "mean_steps": "teacher replies per trajectory",
    "tool_error_rate": "tool calls whose observation reported failure / tool calls",
    "format_error_rate": "replies with neither a valid action nor a final answer / replies",
    "tool_call_validity": "steps with a parseable action whose tool ran successfully "
    "(action is not None and observation_ok) / steps, final-answer steps included",
    "format_stopped_rate": "trajectories the agent ended early after repeated format errors "
    '(error starting with "stopped after") / trajectories',
    "[lo, hi]": "95% interval: percentile bootstrap over problems x samples (Efron & "
    "Tibshirani 1993), 2000 rounds resampling the problems, then each problem's samples, "
    "with replacement; seed 0",
    "reasoning/action/answer tokens": "mean per trajectory: thinking + thoughts / tool name + "
    "input / final answer",
    "agreement": "steps aligned by position with the teacher's trajectory of the problem: "
    "token F1 and ROUGE-L of reasoning; exact and normalized (AST) match of actions; "
    "normalized match of final answers",
}


def with_interval(value: Any, interval: list[float] | None, digits: int = 3) -> Any:
    """A table cell ``value [lo, hi]`` (the value alone when it has no interval)."""
    from ..report import format_value

    if value is None or interval is None:
        return value
    low, high = (format_value(float(v), digits) for v in interval)
    return f"{format_value(float(value), digits)} [{low}, {high}]"


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
                "tool_call_validity",
                "format_stopped_rate",
                "reasoning_tokens",
                "action_tokens",
            )
        }
    )
    for key, interval in (metrics.get("intervals") or {}).items():
        if key in row:
            row[key] = with_interval(row[key], interval)
    for key, value in (metrics.get("agreement") or {}).items():
        if key != "trajectories":
            row[key] = value
    return row


def _has_agreement(report: dict[str, Any]) -> bool:
    return any(
        (m["overall"].get("agreement") or {}).get("trajectories") for m in report["models"].values()
    )


def _agreement_line(report: dict[str, Any]) -> str:
    reference = report.get("agreement_reference")
    if not _has_agreement(report):
        return (
            "No agreement with the teacher: no teacher trajectory of these problems (give "
            "teacher trajectories that cover them, or evaluate the teacher as `teacher`)."
        )
    if reference and reference.get("kind") == "model":
        return (
            f"Agreement: each model against `{reference['source']}`'s own trajectories on "
            f"these problems ({reference['problems']} problems)."
        )
    source = (reference or {}).get("source") or report.get("teacher_trajectories")
    count = (reference or {}).get("problems", "?")
    return f"Agreement: against the teacher trajectories in `{source}` ({count} problems)."


def write_report_markdown(report: dict[str, Any], path: Path) -> Path:
    """``report.md``: settings, overall / per-difficulty / per-category tables, charts, definitions."""
    from ..report import image_link, markdown_table, write_markdown

    ks = report["ks"]
    metric_columns: list[Column] = [
        *[f"pass@{k}" for k in ks],
        ("tests_pass_rate", "tests passed"),
        ("mean_steps", "steps"),
        ("tool_error_rate", "tool errors"),
        ("format_error_rate", "format errors"),
        ("tool_call_validity", "valid tool calls"),
        ("format_stopped_rate", "format-stopped"),
        ("reasoning_tokens", "reasoning tok"),
        ("action_tokens", "action tok"),
    ]
    if _has_agreement(report):
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
        f"{problems['count']} problems"
        + (f" from `{problems['source']}`" if problems.get("source") else "")
        + f", {report['samples']} "
        f"sample(s) per problem, temperature {report['params']['temperature']}, tools: "
        f"{', '.join(report['tools']) or 'none'}; tokens counted with {report['token_counter']}; "
        f"{report['created']}, {report['seconds']} s. Rates and steps show their 95% "
        "interval as [lo, hi].",
        _agreement_line(report),
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
    if report.get("charts") or report.get("charts_skipped"):
        blocks.append("## Charts")
        blocks += [image_link(path.parent / c, path.parent, Path(c).stem) for c in report["charts"]]
        blocks += [
            f"Not drawn: `{c}`, {why}." for c, why in report.get("charts_skipped", {}).items()
        ]
    blocks += [
        "## Definitions",
        "\n".join(f"- **{k}**: {v}" for k, v in DEFINITIONS.items()),
    ]
    return write_markdown(path, blocks)


def _has_values(data: dict[str, dict[str, Any]]) -> bool:
    return any(v is not None for values in data.values() for v in values.values())


def write_charts(report: dict[str, Any], out: Path) -> tuple[list[str], dict[str, str]]:
    """PNG charts (pass@k per model, pass@1 by set, difficulty and category, token use,
    agreement); returns the file names written (relative to ``out``) and, for each chart
    left out because no model has a value for it, why. A chart without data is not drawn."""
    from ..report import bar_chart

    models = report["models"]
    if not models:
        return [], {}
    key = f"pass@{report['ks'][0]}"
    overall = {n: m["overall"] for n, m in models.items()}
    # file -> (data, title, ylabel, ylim, why it would be empty)
    planned: dict[str, tuple[dict[str, dict[str, Any]], str, str, Any, str]] = {
        "pass_at_k.png": (
            {
                n: {f"pass@{k}": o.get(f"pass@{k}") for k in report["ks"]}
                for n, o in overall.items()
            },
            "pass@k",
            "pass@k",
            (0, 1),
            "no model has a pass@k value",
        )
    }
    for group in ("by_suite", "by_difficulty", "by_category"):
        if any(m.get(group) for m in models.values()):
            planned[f"{group}.png"] = (
                {
                    n: {g: v.get(key) for g, v in (m.get(group) or {}).items()}
                    for n, m in models.items()
                },
                f"{key} {group.replace('_', ' ')}",
                key,
                (0, 1),
                f"no model has a {key} value {group.replace('_', ' ')}",
            )
    planned["tokens.png"] = (
        {
            n: {
                "reasoning": o.get("reasoning_tokens"),
                "action": o.get("action_tokens"),
                "answer": o.get("answer_tokens"),
            }
            for n, o in overall.items()
        },
        f"tokens per trajectory ({report['token_counter']})",
        "tokens",
        None,
        "no trajectory to count tokens of",
    )
    planned["agreement.png"] = (
        {
            n: {k: (o.get("agreement") or {}).get(k) for k in AGREEMENT_KEYS}
            for n, o in overall.items()
        },
        "agreement with the teacher",
        "score",
        (0, 1),
        "no teacher trajectory of these problems to compare with",
    )
    charts, skipped = [], {}
    for name, (data, title, ylabel, ylim, why) in planned.items():
        if not _has_values(data):
            skipped[name] = why
            (out / name).unlink(missing_ok=True)  # an earlier report's chart would mislead
            continue
        bar_chart(out / name, data, title=title, ylabel=ylabel, ylim=ylim)
        charts.append(name)
    return charts, skipped
