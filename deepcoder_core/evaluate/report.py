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
    from ..report import image_link, markdown_table, write_markdown

    ks = report["ks"]
    metric_columns: list[Column] = [
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
    from ..report import bar_chart

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
