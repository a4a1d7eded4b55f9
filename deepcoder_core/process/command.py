"""``deepcoder process``: the stage from the command line, with its report on stderr/stdout.

Errors are raised, not printed: a ``ProcessError`` or ``ConfigError`` becomes the CLI's one
line ``Error: <message>`` (exit 2) in ``LazyGroup.invoke``.
"""

from __future__ import annotations

from pathlib import Path

import click

from ..config import config_options, load_config
from ..plugins import PluginError
from ..spans import FORMATS
from .settings import ProcessError
from .stage import process


@click.command("process")
@click.option(
    "--trajectories",
    required=True,
    type=click.Path(dir_okay=False),
    help="JSONL of trajectories (ours, OpenAI chat, FireAct, ShareGPT, or {text}).",
)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Dataset folder.")
@click.option("--tokenizer", help="Student tokenizer folder (default: the student's).")
@click.option("--detector", help="Span detector plugin: structured, regex, ...")
@click.option("--num-proc", type=int, help="Worker processes (0: one per core).")
@click.option(
    "--format", "fmt", type=click.Choice(["auto", *FORMATS]), help="Input format (default: auto)."
)
@config_options
def process_command(
    trajectories: str,
    out: str,
    tokenizer: str | None,
    detector: str | None,
    num_proc: int | None,
    fmt: str | None,
    config_path: str | None,
    overrides: tuple[str, ...],
) -> None:
    """Tokenize trajectories with the student's chat template and label every token's span."""
    try:
        config = load_config(config_path, overrides)
        summary = process(
            config,
            trajectories=Path(trajectories),
            out=Path(out),
            tokenizer=tokenizer,
            detector=detector,
            num_proc=num_proc,
            fmt=fmt,
            progress=True,
        )
    except (PluginError, OSError) as exc:
        raise ProcessError(str(exc)) from exc
    bad_input = summary["bad_input"]
    for bad in bad_input["lines"][:10]:
        click.secho(
            f"warning: skipped {trajectories}:{bad['line']}: {bad['reason']}", fg="yellow", err=True
        )
    too_large = bad_input["by_reason"].get("too_large", 0)
    if too_large:
        click.secho(
            f"warning: {too_large} record(s) over processing.max_record_bytes "
            f"({config.processing.max_record_bytes:,} bytes) skipped unread; raise it "
            "(--set processing.max_record_bytes=N) to keep them",
            fg="yellow",
            err=True,
        )
    if bad_input["count"] > 10:
        click.secho(
            f"warning: {bad_input['count'] - 10} more bad lines: see {out}/summary.json",
            fg="yellow",
            err=True,
        )
    ratios = ", ".join(f"{k} {v:.1%}" for k, v in summary["span_ratios"].items())
    drops = ", ".join(f"{k} {v}" for k, v in summary["drops"].items()) or "none"
    agreement = summary.get("agreement") or {}
    click.echo(
        f"{summary['examples']} examples ({summary['tokens']} tokens) from "
        f"{summary['records']['read']} records in {summary['seconds']:.1f}s -> {out}\n"
        f"spans: {ratios}\ndropped: {drops}; bad input: {bad_input['count']}"
        + (
            f"\nagreement {'/'.join(agreement['detectors'])}: {agreement['agreement']:.1%}"
            if agreement.get("agreement") is not None
            else ""
        )
    )
