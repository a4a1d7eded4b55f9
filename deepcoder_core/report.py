"""Report writing shared by ``eval`` and ``run``: Markdown tables and PNG charts, written atomically.

Charts use matplotlib's Agg backend (no display), imported inside the functions so the CLI
never loads matplotlib unless a report is written. Every file goes to a temporary name in
the target folder and is renamed into place, so a killed run leaves the old file or the
new one.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .io import atomic_write_text

Column = str | tuple[str, str]
"""A table column: a row key, or ``(key, header)``."""


def format_value(value: Any, digits: int = 3) -> str:
    """A table cell: floats rounded to ``digits`` significant decimals, None as an em dash."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if value != 0 and abs(value) < 10 ** (-digits):
            return f"{value:.{digits}g}"
        return f"{value:.{digits}f}"
    return str(value)


def _cell(value: Any, digits: int) -> str:
    # A pipe or newline would break the Markdown table row.
    return format_value(value, digits).replace("|", "\\|").replace("\n", " ")


def markdown_table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[Column], *, digits: int = 3
) -> str:
    """A GitHub-flavoured Markdown table of ``rows`` (dicts); numbers are right-aligned."""
    keys = [c if isinstance(c, str) else c[0] for c in columns]
    headers = [c if isinstance(c, str) else c[1] for c in columns]
    numeric = [
        any(isinstance(r.get(k), int | float) and not isinstance(r.get(k), bool) for r in rows)
        for k in keys
    ]
    lines = [
        "| " + " | ".join(h.replace("|", "\\|") for h in headers) + " |",
        "|" + "|".join("---:" if n else "---" for n in numeric) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(k), digits) for k in keys) + " |")
    return "\n".join(lines) + "\n"


def write_markdown(path: str | Path, blocks: Sequence[str]) -> Path:
    """Write Markdown ``blocks`` (headings, paragraphs, tables) separated by blank lines."""
    text = "\n\n".join(block.strip("\n") for block in blocks if block) + "\n"
    return atomic_write_text(path, text)


def write_markdown_table(
    path: str | Path,
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[Column],
    *,
    title: str | None = None,
    digits: int = 3,
) -> Path:
    """A Markdown file holding one table (and an optional ``# title``)."""
    blocks = [f"# {title}"] if title else []
    return write_markdown(path, [*blocks, markdown_table(rows, columns, digits=digits)])


def image_link(path: str | Path, relative_to: str | Path, alt: str = "") -> str:
    """``![alt](relative/path.png)`` for a Markdown file in ``relative_to``."""
    rel = os.path.relpath(Path(path), Path(relative_to))
    return f"![{alt}]({Path(rel).as_posix()})"


# ---------------------------------------------------------------------------- charts


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure: Any, path: str | Path, dpi: int = 120) -> Path:
    """Save a matplotlib figure as PNG atomically and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".png")
    os.close(fd)
    try:
        figure.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        _pyplot().close(figure)
    return path


def bar_chart(
    path: str | Path,
    data: Mapping[str, Mapping[str, float | None]],
    *,
    title: str,
    ylabel: str,
    ylim: tuple[float, float] | None = None,
) -> Path:
    """Grouped bars: ``data[series][group] = value`` (one colour per series, one cluster per group).

    Missing or None values leave a gap. ``ylim=(0, 1)`` suits rates such as pass@k.
    """
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
        xs, ys = [], []
        for j, group in enumerate(groups):
            value = data[name].get(group)
            if value is not None and not (isinstance(value, float) and math.isnan(value)):
                xs.append(j - 0.4 + width * (i + 0.5))
                ys.append(float(value))
        bars = axes.bar(xs, ys, width=width, label=name)
        axes.bar_label(bars, fmt="%.2g", fontsize=7, padding=1)
    axes.set_xticks(
        range(len(groups)),
        groups,
        rotation=20 if len(groups) > 5 else 0,
        ha="right" if len(groups) > 5 else "center",
    )
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    if ylim is not None:
        axes.set_ylim(*ylim)
    if len(series) > 1:
        axes.legend(fontsize=8)
    axes.grid(axis="y", alpha=0.3)
    return save_figure(figure, path)


def line_chart(
    path: str | Path,
    series: Mapping[str, Sequence[tuple[float, float]]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    logy: bool = False,
) -> Path:
    """One line per series of ``(x, y)`` points, e.g. training loss per step."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(6.0, 3.6))
    for name, points in series.items():
        if points:
            xs, ys = zip(*points, strict=True)
            axes.plot(xs, ys, label=name, marker="." if len(points) < 30 else None)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    if logy:
        axes.set_yscale("log")
    if len(series) > 1:
        axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    return save_figure(figure, path)
