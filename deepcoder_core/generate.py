"""Stage 1, ``deepcoder generate``: the teacher solves problems as a ReAct agent; trajectories out.

The agents run on one of the two schedules of :mod:`deepcoder_core.agent.schedule`, chosen
by what the teacher offers: threads for remote teachers (``generation.concurrency`` requests
in flight), batched steps for local ones with ``complete_batch``.

The output is append-only JSONL (:class:`~deepcoder_core.io.JsonlWriter`): each trajectory
is flushed and fsynced when it ends, a truncated last line left by a kill is cut on the
next open, and ``resume`` skips the ``(problem, sample)`` pairs already written. A teacher
error (after the teacher's own retries) is recorded on its trajectory and generation goes
on; a fatal one (bad key, unknown model) stops the run (:class:`GenerationError`). The
summary JSON (``out.with_suffix(".summary.json")``) describes every trajectory in the output
file.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import click

from .config import Config, ConfigError, config_options
from .errors import StageError
from .io import BadLine, JsonlWriter, atomic_write_json
from .records import Trajectory, read_trajectories
from .teachers import TeacherError

SUMMARY_SCHEMA = 1


class GenerationError(StageError):
    """Generation cannot go on (a fatal teacher error, bad options); the message says why."""


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"2/8"`` -> ``(2, 8)``: this process takes problems ``i, i+n, i+2n, ...`` (0-based)."""
    if text is None:
        return None
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard {text!r}: expected i/n, e.g. 0/4") from None
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"--shard {text!r}: need 0 <= i < n")
    return index, count


def summary_path(out: Path) -> Path:
    return Path(out).with_suffix(".summary.json")


def error_kind(error: str | None) -> str | None:
    """A short label for a trajectory's ``error`` string, for the summary's errors-by-kind."""
    if not error:
        return None
    if error.startswith("teacher error ("):
        return "teacher:" + error[len("teacher error (") :].split(")", 1)[0]
    for needle, kind in (
        ("max_steps", "max_steps"),
        ("token budget", "token_budget"),
        ("agent error", "agent"),
        ("without a Final Answer", "no_final_answer"),
        ("checking failed", "checking"),
    ):
        if needle in error:
            return kind
    return "other"


def existing_pairs(out: Path, bad: list[BadLine] | None = None) -> set[tuple[str, int]]:
    """The ``(problem_id, sample)`` pairs already in ``out`` (unreadable lines go to ``bad``,
    and their pairs are generated again)."""
    if not out.exists():
        return set()
    bad = [] if bad is None else bad
    return {(t.problem_id, t.sample) for t in read_trajectories(out, bad)}


class _Live:
    """Running counts for the progress bar and the run's part of the summary."""

    def __init__(self, teacher: Any) -> None:
        self.teacher = teacher
        self.done = 0
        self.success = 0
        self.teacher_failed = 0
        self.errors = 0
        self.tokens = 0
        self.started = time.monotonic()

    def add(self, trajectory: Trajectory, teacher_failed: bool) -> None:
        self.done += 1
        self.success += trajectory.success
        self.teacher_failed += teacher_failed
        self.errors += bool(trajectory.error)
        self.tokens += trajectory.prompt_tokens + trajectory.completion_tokens

    @property
    def retries(self) -> int:
        stats = getattr(self.teacher, "stats", None)
        return int(getattr(stats, "retries", 0))

    def line(self) -> str:
        elapsed = max(1e-9, time.monotonic() - self.started)
        rate = self.done / elapsed
        ok = f"{100 * self.success / self.done:.0f}%" if self.done else "-"
        return (
            f"{rate:.2f}/s  success {ok}  {self.tokens / 1000:.1f}k tok  "
            f"{self.retries} retries  {self.errors} errors"
        )


def _progress(enabled: bool, total: int, skipped: int):
    """A rich progress bar on stderr (done/total, rate, success, tokens, retries, errors)."""
    if not enabled:
        return None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn("generate"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[stats]}"),
        console=Console(stderr=True),
        transient=False,
    )
    task = progress.add_task("generate", total=total, completed=skipped, stats="")
    return progress, task


def generate(
    config: Config,
    *,
    problems: list[Any],
    out: Path,
    resume: bool = True,
    shard: tuple[int, int] | None = None,
    progress: bool = True,
    teacher: Any = None,
) -> dict[str, Any]:
    """Generate ``generation.samples_per_problem`` trajectories per problem into ``out``.

    ``teacher`` (optional) is an already-built teacher; by default it is built from
    ``config.teacher``. Returns the summary, also written to ``out.with_suffix(".summary.json")``.
    Raises :class:`GenerationError` on a fatal teacher error, PluginError/ConfigError on bad options.
    """
    from .agent import STOP, build_tools, run_agents
    from .config import snapshot
    from .plugins import build

    out = Path(out)
    gen = config.generation
    if gen.samples_per_problem < 1:
        raise ConfigError(
            f"generation.samples_per_problem: must be >= 1, got {gen.samples_per_problem}"
        )
    if gen.concurrency < 1:
        raise ConfigError(f"generation.concurrency: must be >= 1, got {gen.concurrency}")
    if shard is not None:
        problems = problems[shard[0] :: shard[1]]
    if teacher is None:
        teacher = build("teacher", config.teacher.name, **config.teacher.options)
    tools = build_tools(config)

    if out.exists() and not resume:
        out.unlink()  # --no-resume: start the file afresh
    bad: list[BadLine] = []
    done_pairs = existing_pairs(out, bad) if resume else set()
    pairs = [(p, s) for p in problems for s in range(gen.samples_per_problem)]
    pending = [(p, s) for p, s in pairs if (p.id, s) not in done_pairs]
    skipped = len(pairs) - len(pending)

    params: dict[str, Any] = {
        "temperature": gen.temperature,
        "top_p": gen.top_p,
        "max_new_tokens": config.agent.max_new_tokens,
        "stop": list(STOP),
    }
    info = {
        "plugin": config.teacher.name,
        "model": getattr(teacher, "model", None),
        "params": params,
    }
    snapshot(config, out.with_suffix(".config.yaml"))
    live = _Live(teacher)
    bar = _progress(progress, len(pairs), skipped)
    failed_ids: set[str] = set()

    with JsonlWriter(out) as writer:

        def record(run: Any) -> None:
            trajectory = run.finish_trajectory()
            writer.write(trajectory.to_dict())
            live.add(trajectory, run.id in failed_ids)
            if bar is not None:
                bar[0].update(bar[1], advance=1, stats=live.line())

        if bar is not None:
            bar[0].start()
        try:
            run_agents(
                teacher,
                pending,
                record,
                info=info,
                tools=tools,
                agent=config.agent,
                concurrency=gen.concurrency,
                seed=gen.seed,
                failed_ids=failed_ids,
            )
        except TeacherError as exc:  # a fatal one: every later call would fail the same way
            raise GenerationError(f"generation stopped: {exc}") from exc
        finally:
            if bar is not None:
                bar[0].stop()

    summary = summarize(out, bad=bad)
    stats_to_dict = getattr(getattr(teacher, "stats", None), "to_dict", None)
    summary.update(
        teacher=info,
        expected=len(pairs),
        skipped_existing=skipped,
        written_this_run=live.done,
        teacher_failed_this_run=live.teacher_failed,
        seconds_this_run=round(time.monotonic() - live.started, 3),
        retries=live.retries,
        teacher_stats=stats_to_dict() if callable(stats_to_dict) else None,
        shard=f"{shard[0]}/{shard[1]}" if shard else None,
    )
    atomic_write_json(summary_path(out), summary)
    return summary


def teacher_failure(summary: dict[str, Any]) -> str | None:
    """When every trajectory written this run ended with a teacher error: their kinds, e.g.
    ``"teacher:connection"`` (nothing reached the agent, so a caller should stop); else None."""
    written = summary.get("written_this_run", 0)
    if not written or summary.get("teacher_failed_this_run") != written:
        return None
    return ", ".join(k for k in summary.get("errors_by_kind", {}) if k.startswith("teacher:"))


def _rate(success: int, n: int) -> float | None:
    return round(success / n, 4) if n else None


def summarize(out: Path, bad: list[BadLine] | None = None) -> dict[str, Any]:
    """Counts, success rate, tokens, time and errors over every trajectory in ``out``."""
    trajectories = list(read_trajectories(out, [])) if out.exists() else []
    n = len(trajectories)
    success = sum(t.success for t in trajectories)
    prompt = sum(t.prompt_tokens for t in trajectories)
    completion = sum(t.completion_tokens for t in trajectories)
    seconds = [t.seconds for t in trajectories]
    steps = [len(t.steps) for t in trajectories]
    kinds = Counter(k for k in (error_kind(t.error) for t in trajectories) if k)
    groups: dict[str, dict[str, list[bool]]] = {
        "category": defaultdict(list),
        "difficulty": defaultdict(list),
    }
    for t in trajectories:
        groups["category"][str(t.category)].append(t.success)
        groups["difficulty"][str(t.difficulty)].append(t.success)
    by = {
        field: {
            key: {"n": len(v), "success": sum(v), "success_rate": _rate(sum(v), len(v))}
            for key, v in sorted(values.items())
        }
        for field, values in groups.items()
    }
    return {
        "schema": SUMMARY_SCHEMA,
        "out": str(out),
        "trajectories": n,
        "success": success,
        "success_rate": _rate(success, n),
        "with_error": sum(1 for t in trajectories if t.error),
        "errors_by_kind": dict(kinds.most_common()),
        "tokens": {"prompt": prompt, "completion": completion, "total": prompt + completion},
        "mean_seconds_per_trajectory": round(sum(seconds) / n, 3) if n else None,
        "mean_steps": round(sum(steps) / n, 3) if n else None,
        "by_category": by["category"],
        "by_difficulty": by["difficulty"],
        "unreadable_lines": [str(b) for b in (bad or [])][:20],
    }


# ---------------------------------------------------------------------------- command


@click.command("generate")
@click.option("--problems", "problems_source", help="Problems file (JSONL/JSON) or 'bundled'.")
@click.option("--teacher", help="Teacher plugin: hf, groq, openai, replay, ...")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Trajectories JSONL.")
@click.option("--concurrency", type=int, help="Agents in flight (remote) or per batch (local).")
@click.option("--samples-per-problem", type=int, help="Trajectories per problem.")
@click.option("--max-steps", type=int, help="Thought/Action/Observation rounds per trajectory.")
@click.option("--temperature", type=float, help="Sampling temperature.")
@click.option("--shard", help="i/n: take every n-th problem starting at i (0-based).")
@click.option("--resume/--no-resume", default=True, help="Skip pairs already in --out (default).")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar on stderr.")
@config_options
def generate_command(
    problems_source: str | None,
    teacher: str | None,
    out: str,
    concurrency: int | None,
    samples_per_problem: int | None,
    max_steps: int | None,
    temperature: float | None,
    shard: str | None,
    resume: bool,
    progress: bool,
    config_path: str | None,
    overrides: tuple[str, ...],
) -> None:
    """Run the teacher as a ReAct agent on problems; write trajectories (JSONL) and a summary."""
    import json

    from .config import apply_sandbox, load_config
    from .plugins import PluginError
    from .problems import resolve_problems

    config = load_config(config_path, overrides)
    flags: dict[str, Any] = {
        "teacher.name": teacher,
        "generation.problems": problems_source,
        "generation.concurrency": concurrency,
        "generation.samples_per_problem": samples_per_problem,
        "generation.temperature": temperature,
        "agent.max_steps": max_steps,
    }
    # Another teacher than the file's: the file's options belong to its teacher, not this one.
    if (
        teacher
        and teacher != config.teacher.name
        and not any(o.startswith("teacher.options") for o in overrides)
    ):
        flags["teacher.options"] = {}
    config = load_config(config_path, overrides, flags=flags)
    apply_sandbox(config)
    shard_spec = parse_shard(shard)
    gen = config.generation
    problems = resolve_problems(gen.problems, gen.split, gen.limit)
    if not problems:
        raise ConfigError(
            f"no problems to generate from {gen.problems or 'bundled'} (split={gen.split})"
        )
    try:
        summary = generate(
            config,
            problems=problems,
            out=Path(out),
            resume=resume,
            shard=shard_spec,
            progress=progress,
        )
    except (PluginError, TeacherError) as exc:  # building the teacher or its tools
        raise GenerationError(str(exc)) from None
    brief = {k: summary[k] for k in ("trajectories", "success", "success_rate", "with_error")}
    brief.update(written=summary["written_this_run"], retries=summary["retries"])
    click.echo(json.dumps(brief))
    click.echo(f"wrote {out}; summary {summary_path(Path(out))}", err=True)
    kinds = teacher_failure(summary)
    if kinds is not None:
        raise GenerationError(
            f"every trajectory of this run failed with a teacher error ({kinds}); see {out}",
            exit_code=1,
        )
