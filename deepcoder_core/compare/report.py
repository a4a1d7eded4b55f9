"""The report of ``deepcoder compare``: ``report.json``, ``report.md`` and side-by-side charts.

Per variant: the evaluation metrics with their 95% intervals (the ``intervals`` of its
evaluation report, :mod:`deepcoder_core.evaluate.metrics`), agreement with the teacher's
own held-out trajectories, the held-out per-span divergence and top-1 agreement
(:mod:`.heldout`) with intervals from the same bootstrap over problems (the examples of a
problem are its samples), and the training time. Per pair ``(a, b)`` of
:meth:`~deepcoder_core.compare.variants.VariantSet.pairs`: ``a - b`` with its paired
bootstrap interval, on the ``(problem, sample)`` pairs both evaluated (the held-out
examples for the divergences); the report calls a difference only when that interval
excludes 0, and says so in words.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..evaluate.metrics import (
    INTERVAL_METRICS,
    bootstrap_interval,
    paired_bootstrap_difference,
    paired_differences,
    ratio,
)
from ..evaluate.report import with_interval
from ..protocols import SPAN_NAMES
from ..records import Trajectory
from .variants import VariantSet

if TYPE_CHECKING:
    from ..report import Column

COMPARE_SCHEMA = 1

LABELS = {
    "pass@1": "pass@1",
    "tests_pass_rate": "tests passed",
    "format_error_rate": "format errors",
    "tool_call_validity": "valid tool calls",
    "mean_steps": "steps",
    "format_stopped_rate": "format-stopped",
}
RATES = [m for m in INTERVAL_METRICS if m != "mean_steps"]
HELDOUT_METRICS = {"divergence": 0, "top1_agreement": 1}  # column of span_totals' rows


@dataclass
class VariantResult:
    """What one variant left: its evaluation report and trajectories, held-out scores, training."""

    name: str
    overrides: list[str]
    train: bool
    evaluation: dict[str, Any]  # the variant's eval report.json
    trajectories: list[Trajectory]
    heldout: dict[str, Any] | None  # score_heldout's result
    training: dict[str, Any] | None  # the train summary
    training_seconds: float | None


def _cell(value: Any, interval: Any) -> dict[str, Any]:
    return {"value": value, "interval": interval}


def _heldout_values(heldout: dict[str, Any], span: int, column: int) -> list[list[tuple]]:
    """Per problem, per example ``(metric x tokens, tokens)`` of one span: a ratio's input."""
    grouped: dict[str, list[tuple[float, float]]] = {}
    for example in heldout["per_example"]:
        row = example["totals"][span]
        grouped.setdefault(example["problem_id"], []).append((row[column], row[2]))
    return list(grouped.values())


def _heldout_block(heldout: dict[str, Any] | None) -> dict[str, Any] | None:
    if not heldout or "per_example" not in heldout:
        return None
    spans: dict[str, Any] = {}
    for number, name in SPAN_NAMES.items():
        summary = heldout["spans"].get(name)
        if summary is None:
            continue
        spans[name] = {"tokens": summary["tokens"]}
        for metric, column in HELDOUT_METRICS.items():
            interval = bootstrap_interval(_heldout_values(heldout, number, column), ratio)
            spans[name][metric] = _cell(summary[metric], list(interval) if interval else None)
    return {"divergence": heldout["divergence"], "examples": heldout["examples"], "spans": spans}


def _heldout_differences(a: dict[str, Any] | None, b: dict[str, Any] | None) -> dict[str, Any]:
    if not a or not b or "per_example" not in a or "per_example" not in b:
        return {}
    if [e["problem_id"] for e in a["per_example"]] != [e["problem_id"] for e in b["per_example"]]:
        return {}  # scored on other examples: nothing to pair
    out: dict[str, Any] = {}
    for number, name in SPAN_NAMES.items():
        if name not in a["spans"] or name not in b["spans"]:
            continue
        out[name] = {
            metric: paired_bootstrap_difference(
                _heldout_values(a, number, column), _heldout_values(b, number, column), ratio
            )
            for metric, column in HELDOUT_METRICS.items()
        }
    return out


def build_compare_report(
    variants: VariantSet,
    results: dict[str, VariantResult],
    *,
    teacher: dict[str, Any] | None,
    heldout_reason: str | None,
    config_path: str | None,
    interval: dict[str, Any],
) -> dict[str, Any]:
    """The ``report.json`` dict (module docstring)."""
    first = next(iter(results.values())).evaluation
    rows: dict[str, Any] = {}
    for name, result in results.items():
        overall = result.evaluation["models"][name]["overall"]
        rows[name] = {
            "overrides": result.overrides,
            "train": result.train,
            "metrics": {
                m: _cell(overall.get(m), overall.get("intervals", {}).get(m))
                for m in INTERVAL_METRICS
            },
            "agreement": overall.get("agreement"),
            "heldout": _heldout_block(result.heldout),
            "heldout_skipped": (result.heldout or {}).get("skipped"),
            "training_seconds": result.training_seconds,
            "training": (
                {
                    "steps": result.training.get("steps"),
                    "loss": result.training.get("loss"),
                    "loss_fn": result.training.get("loss_fn"),
                    "weighting": result.training.get("weighting"),
                }
                if result.training
                else None
            ),
        }
    differences = []
    for a, b in variants.pairs():
        if a not in results or b not in results:
            continue
        differences.append(
            {
                "a": a,
                "b": b,
                **paired_differences(results[a].trajectories, results[b].trajectories),
                "heldout": _heldout_differences(results[a].heldout, results[b].heldout),
            }
        )
    reference = None
    if teacher is not None:
        overall = teacher["overall"]
        reference = {
            m: _cell(overall.get(m), overall.get("intervals", {}).get(m)) for m in INTERVAL_METRICS
        }
    return {
        "schema": COMPARE_SCHEMA,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": config_path,
        "variants_file": str(variants.path),
        "problems": first["problems"],
        "samples": first["samples"],
        "params": first["params"],
        "interval": interval,
        "baseline": variants.baseline,
        "contrasts": [list(c) for c in variants.contrasts],
        "teacher": reference,
        "heldout_reason": heldout_reason,
        "variants": rows,
        "differences": differences,
    }


# ---------------------------------------------------------------------------- words


def _number(value: float) -> str:
    from ..report import format_value

    return format_value(float(value))


def verdict(a: str, b: str, metric: str, result: dict[str, Any] | None) -> str:
    """One sentence: the difference ``a - b`` and whether it is called."""
    if result is None:
        return f"{metric}: no data to compare {a} with {b}."
    d, (low, high) = result["difference"], result["interval"]
    span = (
        f"{'+' if d >= 0 else '-'}{_number(abs(d))}, 95% interval [{_number(low)}, {_number(high)}]"
    )
    if result["excludes_zero"]:
        word = "higher" if d > 0 else "lower"
        return f"{metric}: {a} is {word} than {b} ({span}, which excludes 0)."
    return f"{metric}: no difference called between {a} and {b} ({span} includes 0)."


# ---------------------------------------------------------------------------- markdown


def _metric_table(report: dict[str, Any]) -> str:
    from ..report import markdown_table

    rows = []
    for name, row in report["variants"].items():
        cells = {
            LABELS[m]: with_interval(c["value"], c["interval"]) for m, c in row["metrics"].items()
        }
        agreement = row.get("agreement") or {}
        rows.append(
            {
                "variant": name,
                "overrides": ", ".join(row["overrides"])
                or ("not trained" if not row["train"] else "—"),
                **cells,
                "reason F1 vs teacher": agreement.get("reasoning_f1"),
                "action match vs teacher": agreement.get("action_match"),
                "training s": row["training_seconds"],
            }
        )
    if report.get("teacher"):
        rows.append(
            {
                "variant": "teacher (reference)",
                "overrides": "—",
                **{
                    LABELS[m]: with_interval(c["value"], c["interval"])
                    for m, c in report["teacher"].items()
                },
            }
        )
    columns = ["variant", "overrides", *LABELS.values()]
    columns += [
        c
        for c in ("reason F1 vs teacher", "action match vs teacher", "training s")
        if any(r.get(c) is not None for r in rows)
    ]
    return markdown_table(rows, columns)


def _heldout_table(report: dict[str, Any]) -> str | None:
    from ..report import markdown_table

    rows = []
    for name, row in report["variants"].items():
        for span, values in ((row.get("heldout") or {}).get("spans") or {}).items():
            rows.append(
                {
                    "variant": name,
                    "span": span,
                    "tokens": values["tokens"],
                    **{
                        metric: with_interval(values[metric]["value"], values[metric]["interval"])
                        for metric in HELDOUT_METRICS
                    },
                }
            )
    if not rows:
        return None
    columns: list[Column] = [
        "variant",
        "span",
        "tokens",
        ("divergence", "divergence (KL)"),
        ("top1_agreement", "top-1 agreement"),
    ]
    return markdown_table(rows, columns, digits=4)


def _difference_lines(report: dict[str, Any]) -> list[str]:
    lines = []
    for diff in report["differences"]:
        a, b = diff["a"], diff["b"]
        lines.append(f"### {a} − {b}")
        lines.append(
            f"Paired on {diff['pairs']} (problem, sample) pairs both evaluated.\n\n"
            + "\n".join(f"- {verdict(a, b, LABELS[m], diff.get(m))}" for m in INTERVAL_METRICS)
        )
        heldout = diff.get("heldout") or {}
        if heldout:
            lines.append(
                "Held-out, per span:\n\n"
                + "\n".join(
                    f"- {verdict(a, b, f'{span} {metric}', result)}"
                    for span, metrics in heldout.items()
                    for metric, result in metrics.items()
                )
            )
    return lines


def write_compare_markdown(report: dict[str, Any], path: Path) -> Path:
    from ..report import image_link, write_markdown

    problems = report["problems"]
    blocks = [
        "# Comparison of distillation variants",
        f"{len(report['variants'])} variants, trained on one dataset and teacher cache, "
        f"evaluated on the same {problems['count']} held-out problems"
        + (f" from `{problems['source']}`" if problems.get("source") else "")
        + f", {report['samples']} sample(s) each, temperature {report['params']['temperature']}, "
        f"same seeds. Variants: `{report['variants_file']}`.",
        "Every metric shows its 95% interval [lo, hi]: "
        f"{report['interval']['method']}, {report['interval']['rounds']} rounds, seed "
        f"{report['interval']['seed']}. A difference is called only when the paired interval "
        "of the difference excludes 0.",
        "## Metrics",
        _metric_table(report),
        "## Held-out divergence from the teacher, per span",
    ]
    heldout = _heldout_table(report)
    if heldout:
        blocks += [
            "On the teacher's own trajectories of the held-out problems, processed like the "
            "training data: mean KL(teacher || student) per token and top-1 agreement.",
            heldout,
        ]
    else:
        blocks.append(f"Not measured: {report.get('heldout_reason') or 'no variant was scored'}.")
    if report["differences"]:
        blocks.append("## Differences")
        blocks += _difference_lines(report)
    blocks.append("## Charts")
    blocks += [image_link(path.parent / c, path.parent, Path(c).stem) for c in report["charts"]]
    blocks += [f"Not drawn: `{c}`, {why}." for c, why in report["charts_skipped"].items()]
    return write_markdown(path, blocks)


# ---------------------------------------------------------------------------- charts


def interval_chart(
    path: Path,
    data: dict[str, dict[str, tuple[float, list[float] | None]]],
    *,
    title: str,
    ylabel: str,
    ylim: tuple[float, float] | None = None,
) -> Path:
    """Grouped bars with 95% interval whiskers: ``data[series][group] = (value, [lo, hi])``,
    one colour per series (variant), one cluster per group (metric or span)."""
    from ..report import _pyplot, save_figure

    plt = _pyplot()
    series = list(data)
    groups: list[str] = []
    for values in data.values():
        groups += [g for g in values if g not in groups]
    figure, axes = plt.subplots(
        figsize=(max(5.0, 1.0 + 0.9 * len(groups) * max(1, len(series))), 3.6)
    )
    width = 0.8 / max(1, len(series))
    for i, name in enumerate(series):
        xs, ys, low, high = [], [], [], []
        for j, group in enumerate(groups):
            value, interval = data[name].get(group, (None, None))
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue
            xs.append(j - 0.4 + width * (i + 0.5))
            ys.append(float(value))
            lo, hi = interval if interval else (value, value)
            low.append(max(0.0, float(value) - lo))
            high.append(max(0.0, hi - float(value)))
        axes.bar(xs, ys, width=width, label=name, yerr=[low, high], capsize=3)
    axes.set_xticks(range(len(groups)), groups, rotation=20 if len(groups) > 5 else 0)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    if ylim is not None:
        axes.set_ylim(*ylim)
    if len(series) > 1:
        axes.legend(fontsize=8)
    axes.grid(axis="y", alpha=0.3)
    return save_figure(figure, path)


def _has_values(data: dict[str, dict[str, Any]]) -> bool:
    return any(v[0] is not None for values in data.values() for v in values.values())


def write_compare_charts(report: dict[str, Any], out: Path) -> tuple[list[str], dict[str, str]]:
    """Side-by-side charts of the variants; a chart without data is not drawn (and why is
    returned)."""
    from ..report import bar_chart

    variants = report["variants"]

    def metric_data(metrics: list[str]) -> dict[str, dict[str, tuple]]:
        data = {
            name: {
                LABELS[m]: (row["metrics"][m]["value"], row["metrics"][m]["interval"])
                for m in metrics
            }
            for name, row in variants.items()
        }
        if report.get("teacher"):
            data["teacher"] = {
                LABELS[m]: (report["teacher"][m]["value"], report["teacher"][m]["interval"])
                for m in metrics
            }
        return data

    def heldout_data(metric: str) -> dict[str, dict[str, tuple]]:
        return {
            name: {
                span: (v[metric]["value"], v[metric]["interval"])
                for span, v in ((row.get("heldout") or {}).get("spans") or {}).items()
            }
            for name, row in variants.items()
        }

    planned = {
        "rates.png": (
            metric_data(RATES),
            "rates by variant (95% intervals)",
            "rate",
            (0, 1),
            "no variant has a rate",
        ),
        "steps.png": (
            metric_data(["mean_steps"]),
            "steps per trajectory (95% intervals)",
            "steps",
            None,
            "no trajectory",
        ),
        "heldout_divergence.png": (
            heldout_data("divergence"),
            "held-out KL(teacher || student) per span",
            "divergence",
            None,
            f"held-out divergence not measured ({report.get('heldout_reason') or 'no data'})",
        ),
        "heldout_top1.png": (
            heldout_data("top1_agreement"),
            "held-out top-1 agreement per span",
            "agreement",
            (0, 1),
            f"held-out agreement not measured ({report.get('heldout_reason') or 'no data'})",
        ),
    }
    charts, skipped = [], {}
    for name, (data, title, ylabel, ylim, why) in planned.items():
        if not _has_values(data):
            skipped[name] = why
            (out / name).unlink(missing_ok=True)
            continue
        interval_chart(out / name, data, title=title, ylabel=ylabel, ylim=ylim)
        charts.append(name)
    seconds = {
        n: r["training_seconds"] for n, r in variants.items() if r["training_seconds"] is not None
    }
    if seconds:
        bar_chart(
            out / "training_seconds.png",
            {"training": seconds},
            title="training time",
            ylabel="seconds",
        )
        charts.append("training_seconds.png")
    else:
        skipped["training_seconds.png"] = "no variant was trained"
        (out / "training_seconds.png").unlink(missing_ok=True)
    return charts, skipped


def write_compare_report(report: dict[str, Any], out: Path) -> dict[str, Any]:
    """Charts, ``report.json`` and ``report.md`` into ``out``; returns the report."""
    from ..io import atomic_write_json

    out.mkdir(parents=True, exist_ok=True)
    report["charts"], report["charts_skipped"] = write_compare_charts(report, out)
    atomic_write_json(out / "report.json", report)
    write_compare_markdown(report, out / "report.md")
    return report
