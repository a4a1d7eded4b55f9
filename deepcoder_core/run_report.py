"""The final report of `deepcoder run`: one Markdown page a person opens, with PNG plots.

It reads what the stages left in the run directory (their summaries, ``metrics.jsonl``,
the evaluation report) and writes ``report.md`` and ``plots/``: the summary table of
teacher, undistilled student and distilled student, the loss and per-span divergence curves
(the metric names of :mod:`deepcoder_core.distill.metrics`), pass rates by model, and
span-type token shares.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .config import Config
from .distill.metrics import span_key
from .io import read_jsonl
from .protocols import SPAN_NAMES
from .report import (
    Column,
    bar_chart,
    format_value,
    image_link,
    line_chart,
    markdown_table,
    write_markdown,
)


def _load(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def _loss_curves(metrics: Path) -> dict[str, list[tuple[float, float]]]:
    """``(step, value)`` of ``loss`` (as ``total``) and of each span's ``divergence``."""
    curves: dict[str, list[tuple[float, float]]] = {}
    if not metrics.exists():
        return curves
    for _, record in read_jsonl(metrics, errors=[]):
        step = record.get("step")
        for span in ("total", *SPAN_NAMES.values()):
            key = "loss" if span == "total" else span_key("divergence", span)
            if step is not None and isinstance(record.get(key), int | float):
                curves.setdefault(span, []).append((float(step), float(record[key])))
    return curves


def write_run_report(out: Path, state: dict[str, Any], config: Config) -> dict[str, Any]:
    """Write ``out/report.md`` and ``out/plots/*.png``; return what the report shows."""
    out = Path(out)
    plots = out / "plots"
    stages = state.get("stages", {})
    generation = _load(out / "trajectories.summary.json") or {}
    dataset = _load(out / "dataset" / "summary.json") or {}
    training = _load(out / "train" / "summary.json") or {}
    evaluation = _load(out / "eval" / "report.json") or {}

    blocks = [
        "# deepcoder run report",
        f"Teacher `{config.teacher.name}`"
        + (f" ({config.teacher.options['model']})" if config.teacher.options.get("model") else "")
        + f", loss `{config.loss.name}`, weighting `{config.weighting.name}`, "
        f"{config.training.max_steps} training steps. Config: `config.yaml`.",
    ]

    models = evaluation.get("models", {})
    ks = evaluation.get("ks", [1])
    charts: list[str] = []
    if models:
        rows = []
        for name, report in models.items():
            overall = report.get("overall", {})
            agreement = overall.get("agreement") or {}
            rows.append(
                {
                    "model": name,
                    **{f"pass@{k}": overall.get(f"pass@{k}") for k in ks},
                    "tests passed": overall.get("tests_pass_rate"),
                    "steps": overall.get("mean_steps"),
                    "tool errors": overall.get("tool_error_rate"),
                    "format errors": overall.get("format_error_rate"),
                    "valid tool calls": overall.get("tool_call_validity"),
                    "reason F1 vs teacher": agreement.get("reasoning_f1"),
                    "action match vs teacher": agreement.get("action_match"),
                }
            )
        blocks += [
            "## Teacher, undistilled student and distilled student",
            f"{evaluation.get('problems', {}).get('count', '?')} held-out problems, "
            f"{evaluation.get('samples', '?')} sample(s) each. Details: `eval/report.md`.",
            # Columns no model has a value for (agreement needs teacher trajectories of the
            # same problems) would only be dashes.
            markdown_table(rows, [c for c in rows[0] if any(r[c] is not None for r in rows)]),
        ]
        bar_chart(
            plots / "pass_rates.png",
            {
                name: {
                    **{f"pass@{k}": r.get("overall", {}).get(f"pass@{k}") for k in ks},
                    "tests passed": r.get("overall", {}).get("tests_pass_rate"),
                }
                for name, r in models.items()
            },
            title="pass rates by model",
            ylabel="rate",
            ylim=(0, 1),
        )
        charts.append("pass_rates.png")

    curves = _loss_curves(out / "train" / "metrics.jsonl")
    if training:
        span_rows = [
            {"span": span, "first": v.get("first"), "last": v.get("last")}
            for span, v in training.get("span_divergence", {}).items()
        ]
        blocks += [
            "## Distillation",
            f"{training.get('steps')} steps, signal `{training.get('signal')}`, "
            f"loss {format_value(training.get('loss', {}).get('first'))} -> "
            f"{format_value(training.get('loss', {}).get('last'))}, "
            f"{training.get('tokens_per_second')} tokens/s.",
        ]
        if span_rows:
            columns: list[Column] = [
                "span",
                ("first", "divergence, first"),
                ("last", "divergence, last"),
            ]
            blocks.append(markdown_table(span_rows, columns, digits=4))
    if curves:
        line_chart(
            plots / "span_divergence.png",
            {span: points for span, points in curves.items() if span != "total"}
            or {"total": curves.get("total", [])},
            title="divergence per span type",
            xlabel="step",
            ylabel="divergence",
        )
        charts.append("span_divergence.png")

    shares = dataset.get("span_ratios")
    if shares:
        bar_chart(
            plots / "span_shares.png",
            {"tokens": {span: shares.get(span) for span in SPAN_NAMES.values()}},
            title="token share by span type",
            ylabel="share of tokens",
            ylim=(0, 1),
        )
        charts.append("span_shares.png")
        blocks += [
            "## Data",
            f"{generation.get('trajectories', '?')} trajectories "
            f"(success rate {generation.get('success_rate')}), "
            f"{dataset.get('examples', '?')} training examples, {dataset.get('tokens', '?')} tokens, "
            f"dropped: {dataset.get('drops') or 'none'}.",
        ]

    stage_rows = [
        {"stage": name, "status": s.get("status"), "seconds": s.get("seconds")}
        for name, s in stages.items()
        if name != "report"  # this page
    ]
    blocks += ["## Stages", markdown_table(stage_rows, ["stage", "status", "seconds"])]
    if charts:
        blocks.append("## Plots")
        blocks += [image_link(plots / c, out, Path(c).stem) for c in charts]
    write_markdown(out / "report.md", blocks)
    return {
        "report": str(out / "report.md"),
        "plots": charts,
        "models": {
            name: {f"pass@{k}": r.get("overall", {}).get(f"pass@{k}") for k in ks}
            for name, r in models.items()
        },
    }
