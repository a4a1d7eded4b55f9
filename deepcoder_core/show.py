"""``deepcoder show``: look at pipeline records in the terminal.

Each record kind is one subcommand of the ``show`` group (``show trajectory``; other stages add
theirs next to it with ``@show_group.command(...)``). Trajectories are read through
:meth:`deepcoder_core.records.Trajectory.from_dict`; a line that is not one is skipped with a
warning, like a line that is not JSON. Nothing to show raises :class:`ShowError`, which the
CLI prints as one ``Error:`` line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from . import records
from .errors import DeepcoderError
from .records import Trajectory

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


class ShowError(DeepcoderError):
    """A file that cannot be read, or holds nothing that was asked for."""


@click.group("show")
def show_group() -> None:
    """Render pipeline records (trajectories, ...) readably, in colour."""


def _console(color: bool | None):
    from rich.console import Console

    # click's runner and pipes are not terminals: colour only when asked or on a tty
    return Console(force_terminal=color, no_color=color is False, highlight=False, soft_wrap=True)


def render_trajectory(trajectory: Trajectory, console: Any) -> None:
    """Print one trajectory: a header, then each step's reasoning, thought, action and
    observation in its own colour, then the final answer and the check result."""
    from rich.panel import Panel
    from rich.rule import Rule
    from rich.syntax import Syntax
    from rich.text import Text

    verdict = ("passed", "bold green") if trajectory.success else ("failed", "bold red")
    header = Text.assemble(
        ("trajectory ", STYLES["muted"]),
        (trajectory.id, "bold"),
        ("  problem ", STYLES["muted"]),
        (trajectory.problem_id, "bold"),
        (f"  [{trajectory.difficulty}/{trajectory.category}]", STYLES["muted"]),
        "\nteacher ",
        (f"{trajectory.teacher.plugin}:{trajectory.teacher.model}", "bold"),
        "  tests ",
        verdict,
        f" {trajectory.tests_passed}/{trajectory.tests_total}",
        (
            f"  tokens {trajectory.prompt_tokens} in / {trajectory.completion_tokens} out",
            STYLES["muted"],
        ),
    )
    if trajectory.error:
        header.append(f"\nerror: {trajectory.error}", style=STYLES["error"])
    console.print(Panel(header, expand=False))

    for number, step in enumerate(trajectory.steps, start=1):
        console.print(Rule(f"step {number}", style=STYLES["muted"]))
        if step.reasoning:
            console.print(Text("Reasoning: ", style=f"bold {STYLES['reasoning']}"), end="")
            console.print(Text(step.reasoning.strip(), style=STYLES["reasoning"]))
        if step.thought:
            console.print(Text("Thought: ", style=f"bold {STYLES['thought']}"), end="")
            console.print(Text(step.thought.strip(), style=STYLES["thought"]))
        if step.action:
            console.print(Text(f"Action: {step.action.tool}", style=STYLES["action"]))
            console.print(Text("Action Input:", style=STYLES["action"]))
            console.print(Text(step.action.input, style="yellow"))
        if step.observation is not None:
            style = STYLES["observation"]
            if step.observation_ok is False:
                style = STYLES["observation_error"]
            console.print(Text("Observation: ", style=f"bold {style}"), end="")
            console.print(Text(step.observation, style=style))

    if trajectory.final_answer:
        console.print(Rule("final answer", style=STYLES["answer"]))
        console.print(Syntax(trajectory.final_answer, "python", theme="ansi_dark"))


@show_group.command("trajectory")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--id", "ids", multiple=True, help="Show only this trajectory (or problem) id.")
@click.option("--color/--no-color", default=None, help="Force colour on or off (default: tty).")
def show_trajectory_command(file: str, ids: tuple[str, ...], color: bool | None) -> None:
    """Render the trajectories of FILE (JSONL written by `deepcoder generate`)."""
    trajectories = _load(Path(file))
    if ids:
        wanted = set(ids)
        trajectories = [t for t in trajectories if t.id in wanted or t.problem_id in wanted]
        if not trajectories:
            raise ShowError(
                f"{file}: no trajectory with id {', '.join(ids)}; list them with `jq .id {file}`"
            )
    if not trajectories:
        raise ShowError(f"{file}: no trajectories in the file")
    console = _console(color)
    for trajectory in trajectories:
        render_trajectory(trajectory, console)


def _load(path: Path) -> list[Trajectory]:
    """The trajectories of a JSONL file; unreadable lines are skipped with a warning."""
    from .io import BadLine

    bad: list[BadLine] = []
    try:
        trajectories = list(records.read_trajectories(path, bad))
    except OSError as exc:
        raise ShowError(f"{path}: cannot read: {exc.strerror}") from None
    for line in sorted(bad, key=lambda b: b.line):
        click.secho(f"warning: skipped {line}", fg="yellow", err=True)
    return trajectories


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
    from .process import show_example

    # a ProcessError is a DeepcoderError: the CLI prints it as one line
    text = show_example(Path(directory), index, tokenizer=tokenizer, markers=markers)
    click.echo(text, color=color)
