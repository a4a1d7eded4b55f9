"""Report helpers: Markdown tables and PNG charts, written atomically, matplotlib loaded lazily."""

from __future__ import annotations

import subprocess
import sys

from deepcoder_core.report import (
    bar_chart,
    format_value,
    image_link,
    line_chart,
    markdown_table,
    write_markdown,
    write_markdown_table,
)

PNG = b"\x89PNG\r\n\x1a\n"


def test_markdown_table_alignment_escaping_and_values():
    rows = [
        {"model": "a|b", "pass@1": 0.5, "steps": 3, "note": None, "ok": True},
        {"model": "c\nd", "pass@1": 0.00001, "steps": 2, "note": "x", "ok": False},
    ]
    table = markdown_table(rows, ["model", ("pass@1", "pass@1 (%)"), "steps", "note", "ok"])
    assert table.splitlines() == [
        "| model | pass@1 (%) | steps | note | ok |",
        "|---|---:|---:|---|---|",
        "| a\\|b | 0.500 | 3 | — | yes |",
        "| c d | 1e-05 | 2 | x | no |",
    ]
    assert format_value(float("nan")) == "nan"
    assert format_value(2.0, digits=1) == "2.0"


def test_write_markdown_files_are_atomic(tmp_path):
    path = write_markdown_table(tmp_path / "t.md", [{"a": 1}], ["a"], title="T")
    assert path.read_text() == "# T\n\n| a |\n|---:|\n| 1 |\n"
    write_markdown(tmp_path / "t.md", ["# New", "", "text\n"])
    assert (tmp_path / "t.md").read_text() == "# New\n\ntext\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.md"]  # no temp files left
    assert image_link(tmp_path / "img" / "c.png", tmp_path, "c") == "![c](img/c.png)"


def test_charts_are_png_with_gaps_and_no_temp_files(tmp_path):
    bars = bar_chart(
        tmp_path / "bars.png",
        {"teacher": {"easy": 0.9, "hard": 0.4}, "student": {"easy": 0.5, "hard": None}},
        title="pass@1",
        ylabel="pass@1",
        ylim=(0, 1),
    )
    lines = line_chart(
        tmp_path / "sub" / "loss.png",
        {"train": [(1, 2.0), (2, 1.5), (3, 1.2)], "eval": []},
        title="loss",
        xlabel="step",
        ylabel="loss",
        logy=True,
    )
    for path in (bars, lines):
        assert path.read_bytes()[:8] == PNG and path.stat().st_size > 1000
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["bars.png", "loss.png", "sub"]


def test_importing_report_does_not_import_matplotlib():
    code = "import sys, deepcoder_core.report; print('matplotlib' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


def test_run_report_reads_the_training_metric_names(tmp_path):
    """The run report follows train's vocabulary: ``divergence/<span>``, ``span_divergence``."""
    import json

    from deepcoder_core.config import load_config
    from deepcoder_core.distill.metrics import span_key
    from deepcoder_core.run_report import write_run_report

    train = tmp_path / "train"
    train.mkdir()
    rows = [
        {"step": step, "loss": loss, span_key("divergence", "reasoning"): loss / 2}
        for step, loss in ((1, 2.0), (2, 1.0))
    ]
    (train / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {
        "steps": 2,
        "signal": "topk",
        "loss": {"first": 2.0, "last": 1.0},
        "span_divergence": {"reasoning": {"first": 1.0, "last": 0.5}},
    }
    (train / "summary.json").write_text(json.dumps(summary))
    result = write_run_report(tmp_path, {"stages": {}}, load_config(None, [], environ={}))
    assert result["plots"] == ["span_divergence.png"]
    assert (tmp_path / "plots" / "span_divergence.png").read_bytes()[:8] == PNG
    text = (tmp_path / "report.md").read_text()
    assert "| span | divergence, first | divergence, last |" in text
    assert "| reasoning | 1.0000 | 0.5000 |" in text
