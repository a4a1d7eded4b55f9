"""Running evaluation: each model solves the problems as an agent; its trajectories are kept.

Each model (a teacher plugin spec: a local folder through ``hf``, a server through
``openai``, any installed teacher) solves every problem ``n`` times with the same ReAct loop,
tools and schedules (:mod:`deepcoder_core.agent.schedule`) as generation. Answers are
checked with the problem's tests in the sandbox. Trajectories are appended to
``<out>/trajectories/<model>.jsonl`` as they finish, so a killed evaluation resumes where it
stopped; the file is reused only while its ``.meta.json`` fingerprint (spec, sampling
params, ``agent`` section, tools) matches. :func:`evaluate` then aggregates the metrics
(:mod:`.metrics`) into ``report.json`` and writes ``report.md`` and the charts
(:mod:`.report`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import time
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..errors import StageError
from ..io import BadLine
from ..records import Trajectory, read_trajectories
from .metrics import BOOTSTRAP_ROUNDS, BOOTSTRAP_SEED, INTERVAL_LEVEL, TokenCounter, model_report
from .report import write_charts, write_report_markdown

if TYPE_CHECKING:
    from ..config import Config
    from ..problems import Problem

REPORT_SCHEMA = 1

INTERVAL = {
    "method": "percentile bootstrap over problems x samples (Efron & Tibshirani 1993)",
    "rounds": BOOTSTRAP_ROUNDS,
    "seed": BOOTSTRAP_SEED,
    "level": INTERVAL_LEVEL,
}
"""How every ``intervals`` entry of a report was computed (:mod:`.metrics`)."""


class EvalError(StageError):
    """An evaluation that cannot run as asked (bad model spec, k > n, fatal teacher error)."""


def choose_references(trajectories: Iterable[Trajectory]) -> dict[str, Trajectory]:
    """One teacher trajectory per problem: its first successful one, else its first one."""
    chosen: dict[str, Trajectory] = {}
    for trajectory in trajectories:
        current = chosen.get(trajectory.problem_id)
        if current is None or (trajectory.success and not current.success):
            chosen[trajectory.problem_id] = trajectory
    return chosen


def reference_trajectories(path: Path) -> dict[str, Trajectory]:
    """:func:`choose_references` of a teacher trajectory file (bad lines are skipped)."""
    bad: list[BadLine] = []
    try:
        chosen = choose_references(read_trajectories(path, bad))
    except OSError as exc:
        raise EvalError(f"teacher trajectories {path}: {exc.strerror}") from None
    if bad:
        click.echo(f"Warning: skipped {len(bad)} bad lines, first: {bad[0]}", err=True)
    return chosen


def _safe_name(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name).strip("_") or "model"


def _fingerprint(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


class _Progress:
    """One status line on stderr at most every two seconds, and one at the end."""

    def __init__(self, name: str, total: int, done: int, solved: int, enabled: bool) -> None:
        self.name, self.total, self.done, self.solved = name, total, done, solved
        self.enabled = enabled
        self._last = 0.0
        self._start = time.monotonic()

    def add(self, trajectory: Trajectory) -> None:
        self.done += 1
        self.solved += trajectory.success
        if time.monotonic() - self._last >= 2.0 or self.done == self.total:
            self.show()

    def show(self) -> None:
        if not self.enabled:
            return
        self._last = time.monotonic()
        elapsed = time.monotonic() - self._start
        click.echo(
            f"[{self.name}] {self.done}/{self.total} trajectories, {self.solved} solved, "
            f"{elapsed:.0f}s",
            err=True,
        )


def _run_model(
    config: Config,
    name: str,
    spec: dict[str, Any],
    problems: list[Problem],
    samples: int,
    params: dict[str, Any],
    tools: dict[str, Any],
    directory: Path,
    progress: bool,
    scaffold: bool = False,
) -> list[Trajectory]:
    """All trajectories of one model, reusing those already in its JSONL file; ``scaffold``:
    the model acts with ``agent.scaffold`` (exemplars never from an evaluated problem)."""
    from ..agent import AgentRun, run_agents
    from ..io import JsonlWriter, atomic_write_json
    from ..plugins import PluginError, build
    from ..teachers import TeacherError

    path = directory / f"{_safe_name(name)}.jsonl"
    meta_path = path.with_suffix(".meta.json")
    meta = {
        "model": name,
        "spec": spec,
        "params": params,
        "agent": dataclasses.asdict(config.agent),
        "tools": sorted(tools),
        "scaffold": scaffold,
    }
    fingerprint = _fingerprint(meta)
    records: dict[tuple[str, int], Trajectory] = {}
    if path.exists():
        try:
            old = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            old = {}
        if old.get("fingerprint") == fingerprint:
            bad: list[BadLine] = []  # an unreadable line's pair is simply run again
            for trajectory in read_trajectories(path, bad):
                records[(trajectory.problem_id, trajectory.sample)] = trajectory
        else:
            path.unlink()  # another model spec or settings: these trajectories do not count
    atomic_write_json(meta_path, {**meta, "fingerprint": fingerprint})

    wanted = {(p.id, s) for p in problems for s in range(samples)}
    jobs = [(p, s) for p in problems for s in range(samples) if (p.id, s) not in records]
    kept = [r for key, r in records.items() if key in wanted]
    if jobs:
        try:
            teacher = build("teacher", spec["teacher"], **spec.get("options", {}))
        except PluginError as exc:
            raise EvalError(f"model '{name}': {exc}") from None
        except Exception as exc:  # a factory failing to load its model: say which model
            raise EvalError(f"model '{name}': {type(exc).__name__}: {exc}") from None
        info = {
            "plugin": spec["teacher"],
            "model": getattr(teacher, "model", None),
            "params": params,
        }

        bar = _Progress(name, len(wanted), len(kept), sum(t.success for t in kept), progress)
        with JsonlWriter(path) as writer:

            def record(run: AgentRun) -> None:
                trajectory = run.finish_trajectory()
                writer.write(trajectory.to_dict())
                kept.append(trajectory)
                bar.add(trajectory)

            try:
                run_agents(
                    teacher,
                    jobs,
                    record,
                    info=info,
                    tools=tools,
                    agent=config.agent,
                    concurrency=config.generation.concurrency,
                    seed=config.generation.seed,
                    id_prefix=f"{_safe_name(name)}/",
                    scaffold=scaffold,
                    exclude={p.id for p in problems},
                )
            except TeacherError as exc:  # a fatal one: this model cannot be evaluated
                raise EvalError(f"model '{name}': {exc}") from exc
        del teacher
    order = {p.id: i for i, p in enumerate(problems)}
    return sorted(kept, key=lambda t: (order[t.problem_id], t.sample))


def evaluate(
    config: Config,
    *,
    models: dict[str, dict[str, Any]],
    problems: list[Problem],
    out: Path,
    samples: int | None = None,
    ks: list[int] | None = None,
    teacher_trajectories: Path | None = None,
    source: str | None = None,
    suite_of: dict[str, str] | None = None,
    reference: str | None = "teacher",
    scaffolded: set[str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate every model of ``models`` (name -> {"teacher": plugin, "options": {...}}) on
    ``problems`` with ``samples`` attempts each; write the report into ``out``; return it.

    ``source`` names the problems in the report (default: the sets of ``suite_of``; the
    report names none when neither is given); ``suite_of`` (problem id -> set name, e.g.
    "bundled", "humaneval") adds per-set metrics when the problems come from several sets.

    Agreement metrics compare each model with one teacher trajectory per problem
    (:func:`choose_references`). The references are ``teacher_trajectories`` when they
    cover every problem; otherwise, when the model named ``reference`` is evaluated, its
    own trajectories here (it runs first; it gets no agreement with itself); otherwise
    ``teacher_trajectories`` as far as they go. ``report["agreement_reference"]`` says which.

    ``scaffolded``: the models that act with ``agent.scaffold`` (default: the ``reference``
    model, the teacher; every model with ``agent.scaffold.students``); the others act on
    their own, which is what a distilled student has to learn.

    ``samples``/``ks`` default to ``config.eval.samples``/``config.eval.k``; sampling uses
    ``config.eval.temperature`` and ``config.generation.top_p``/``seed``.
    """
    from ..agent import STOP, build_tools
    from ..io import atomic_write_json

    samples = samples or config.eval.samples
    ks = sorted(set(ks or config.eval.k))
    if not models:
        raise EvalError("no models to evaluate: give --model, --server or --teacher")
    if not problems:
        raise EvalError("no problems to evaluate on (check --problems and the split)")
    if samples < 1 or any(k < 1 for k in ks):
        raise EvalError(f"samples ({samples}) and every k ({ks}) must be >= 1")
    if max(ks) > samples:
        raise EvalError(
            f"pass@{max(ks)} needs at least {max(ks)} samples per problem; "
            f"raise -n/eval.samples to {max(ks)} or lower --k"
        )
    for name, spec in models.items():
        if not isinstance(spec, dict) or not isinstance(spec.get("teacher"), str):
            raise EvalError(f"model '{name}': expected {{'teacher': plugin, 'options': {{...}}}}")
    if samples > 1 and config.eval.temperature <= 0:
        click.echo(
            f"Warning: {samples} samples at temperature {config.eval.temperature} may all be "
            "identical; set eval.temperature > 0 for pass@k with k > 1",
            err=True,
        )
    if source is None and suite_of:
        source = ", ".join(dict.fromkeys(suite_of.values()))
    given = reference_trajectories(Path(teacher_trajectories)) if teacher_trajectories else None
    covered = given is not None and all(p.id in given for p in problems)
    own = reference if reference in models and not covered else None
    out = Path(out)
    params = {
        "temperature": config.eval.temperature,
        "top_p": config.generation.top_p,
        "max_new_tokens": config.agent.max_new_tokens,
        "stop": list(STOP),
    }
    tools = build_tools(config)
    count = TokenCounter()
    started = time.time()
    report: dict[str, Any] = {
        "schema": REPORT_SCHEMA,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "problems": {
            "source": source,
            "count": len(problems),
            "by_difficulty": dict(Counter(p.difficulty for p in problems)),
            "by_category": dict(Counter(p.category for p in problems)),
        },
        "samples": samples,
        "ks": ks,
        "params": params,
        "tools": sorted(tools),
        "token_counter": count.name,
        "teacher_trajectories": str(teacher_trajectories) if teacher_trajectories else None,
        "interval": INTERVAL,
        "models": {},
    }
    references = None if own else given
    results: dict[str, dict[str, Any]] = {}
    # The reference model first: its trajectories are the others' references.
    for name in sorted(models, key=lambda n: n != own):
        spec = models[name]
        if scaffolded is None:
            scaffold = name == reference or config.agent.scaffold.students
        else:
            scaffold = name in scaffolded
        records = _run_model(
            config,
            name,
            spec,
            problems,
            samples,
            params,
            tools,
            out / "trajectories",
            progress,
            scaffold=scaffold,
        )
        results[name] = {
            "spec": _redacted(spec),
            "scaffold": scaffold,
            "trajectories": f"trajectories/{_safe_name(name)}.jsonl",
            **model_report(records, ks, count, None if name == own else references, suite_of),
        }
        if name == own:
            references = choose_references(records)
    report["models"] = {name: results[name] for name in models}
    report["agreement_reference"] = (
        None
        if references is None
        else {
            "kind": "model" if own else "file",
            "source": own or str(teacher_trajectories),
            "problems": sum(1 for p in problems if p.id in references),
        }
    )
    report["seconds"] = round(time.time() - started, 1)
    report["charts"], report["charts_skipped"] = write_charts(report, out)
    atomic_write_json(out / "report.json", report)
    write_report_markdown(report, out / "report.md")
    return report


def _redacted(spec: dict[str, Any]) -> dict[str, Any]:
    from ..config import redact

    return redact(spec)
