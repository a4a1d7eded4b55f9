"""``deepcoder show``: look at pipeline records in the terminal.

Each record kind is one subcommand of the ``show`` group (``show trajectory``; other stages add
theirs next to it with ``@show_group.command(...)``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .cli import fail

# One colour per span kind, so reasoning, actions and observations are told apart at a glance.
STYLES = {
    "reasoning": "magenta",
    "thought": "cyan",
    "action": "bold yellow",
    "observation": "green",
    "observation_error": "red",
    "answer": "bold blue",
    "error": "bold red",
    "muted": "dim",
}


@click.group("show")
def show_group() -> None:
    """Render pipeline records (trajectories, ...) readably, in colour."""


def _console(color: bool | None):
    from rich.console import Console

    # click's runner and pipes are not terminals: colour only when asked or on a tty
    return Console(force_terminal=color, no_color=color is False, highlight=False, soft_wrap=True)


def render_trajectory(record: dict[str, Any], console: Any) -> None:
    """Print one Trajectory record: a header, then each step's reasoning, thought, action and
    observation in its own colour, then the final answer and the check result."""
    from rich.panel import Panel
    from rich.rule import Rule
    from rich.syntax import Syntax
    from rich.text import Text

    teacher = record.get("teacher") or {}
    usage = record.get("usage") or {}
    success = record.get("success")
    verdict = Text("passed", style="bold green") if success else Text("failed", style="bold red")
    header = Text.assemble(
        ("trajectory ", STYLES["muted"]),
        (str(record.get("id")), "bold"),
        ("  problem ", STYLES["muted"]),
        (str(record.get("problem_id")), "bold"),
        (f"  [{record.get('difficulty')}/{record.get('category')}]", STYLES["muted"]),
        "\nteacher ",
        (f"{teacher.get('plugin')}:{teacher.get('model')}", "bold"),
        "  tests ",
        verdict,
        f" {record.get('tests_passed')}/{record.get('tests_total')}",
        (
            f"  tokens {usage.get('prompt_tokens', 0)} in / "
            f"{usage.get('completion_tokens', 0)} out",
            STYLES["muted"],
        ),
    )
    if record.get("error"):
        header.append(f"\nerror: {record['error']}", style=STYLES["error"])
    console.print(Panel(header, expand=False))

    for number, step in enumerate(record.get("steps") or [], start=1):
        console.print(Rule(f"step {number}", style=STYLES["muted"]))
        if step.get("reasoning"):
            console.print(Text("Reasoning: ", style=f"bold {STYLES['reasoning']}"), end="")
            console.print(Text(step["reasoning"].strip(), style=STYLES["reasoning"]))
        if step.get("thought"):
            console.print(Text("Thought: ", style=f"bold {STYLES['thought']}"), end="")
            console.print(Text(step["thought"].strip(), style=STYLES["thought"]))
        action = step.get("action")
        if action:
            console.print(Text(f"Action: {action.get('tool')}", style=STYLES["action"]))
            console.print(Text("Action Input:", style=STYLES["action"]))
            console.print(Text(str(action.get("input", "")), style="yellow"))
        observation = step.get("observation")
        if observation is not None:
            style = STYLES["observation"]
            if step.get("observation_ok") is False:
                style = STYLES["observation_error"]
            console.print(Text("Observation: ", style=f"bold {style}"), end="")
            console.print(Text(str(observation), style=style))

    if record.get("final_answer"):
        console.print(Rule("final answer", style=STYLES["answer"]))
        console.print(Syntax(record["final_answer"], "python", theme="ansi_dark"))


@show_group.command("trajectory")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--id", "ids", multiple=True, help="Show only this trajectory (or problem) id.")
@click.option("--color/--no-color", default=None, help="Force colour on or off (default: tty).")
def show_trajectory_command(file: str, ids: tuple[str, ...], color: bool | None) -> None:
    """Render the trajectories of FILE (JSONL written by `deepcoder generate`)."""
    from .io import BadLine, read_jsonl

    bad: list[BadLine] = []
    try:
        records = [record for _, record in read_jsonl(Path(file), errors=bad)]
    except OSError as exc:
        fail(f"{file}: cannot read: {exc.strerror}")
    for line in bad:
        click.secho(f"warning: skipped {line}", fg="yellow", err=True)
    if ids:
        wanted = set(ids)
        records = [r for r in records if r.get("id") in wanted or r.get("problem_id") in wanted]
        if not records:
            fail(f"{file}: no trajectory with id {', '.join(ids)}; list them with `jq .id {file}`")
    if not records:
        fail(f"{file}: no trajectories in the file")
    console = _console(color)
    for record in records:
        render_trajectory(record, console)


@show_group.command("example")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--index", "-i", default=0, show_default=True, help="Example number (negative: from the end)."
)
@click.option("--tokenizer", help="Tokenizer folder (default: the one in DIRECTORY/summary.json).")
@click.option("--markers", is_flag=True, help="Also tag each run of tokens with its span type.")
@click.option("--color/--no-color", default=None, help="Force colour on or off (default: tty).")
def show_example_command(
    directory: str, index: int, tokenizer: str | None, markers: bool, color: bool | None
) -> None:
    """Print one example of a processed dataset (`deepcoder process`), tokens coloured by span type."""
    from .process import ProcessError, show_example

    try:
        text = show_example(Path(directory), index, tokenizer=tokenizer, markers=markers)
    except ProcessError as exc:
        fail(str(exc))
    click.echo(text, color=color)
