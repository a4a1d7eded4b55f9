"""`deepcoder run`: every stage from one config, in one run directory, skipping what is done.

Run directory layout::

    <out>/config.yaml              config snapshot (secrets redacted)
    <out>/state.json               per stage: fingerprint, status, summary
    <out>/trajectories.jsonl       generate          (+ trajectories.summary.json)
    <out>/dataset/                 process           (+ dataset/summary.json)
    <out>/teacher_logits/          teacher-logits    (only when the loss needs a distribution)
    <out>/baseline/                the student before distillation
    <out>/train/                   train             (student/, metrics.jsonl, plots/, summary.json)
    <out>/eval/                    eval              (report.json, report.md, charts)
    <out>/report.md                the final report, with plots in <out>/plots/

A stage's fingerprint hashes its config sections and its inputs' fingerprints; a stage is
skipped when its fingerprint matches a completed entry in ``state.json`` and its output is
there. Each stage resumes its own partial output, so a killed run picks up where it stopped.

Before the first stage, every later one is checked to be able to run (a student, a
tokenizer, the teacher signal the loss needs, problems, eval models), so a missing setting
stops the run at once with what to set, not after hours of generation.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from .config import Config, config_options, snapshot
from .errors import StageError
from .io import atomic_write_json

STAGES = ("generate", "process", "teacher-logits", "train", "eval", "report")


class PipelineError(StageError):
    """A stage cannot run with this configuration; the message says what to change."""


@dataclass
class Stage:
    name: str
    sections: tuple[str, ...]
    output: str
    run: Callable[[RunContext], dict[str, Any]]
    enabled: Callable[[RunContext], bool] = lambda ctx: True


class RunContext:
    """What stages share: the config, the run directory, fingerprints of finished stages."""

    def __init__(self, config: Config, out: Path, echo: Callable[[str], None] = click.echo):
        self.config = config
        self.out = out
        self.echo = echo
        self.state_path = out / "state.json"
        self.state: dict[str, Any] = (
            json.loads(self.state_path.read_text()) if self.state_path.exists() else {"stages": {}}
        )
        self.fingerprints: dict[str, str] = {}

    def save_state(self) -> None:
        atomic_write_json(self.state_path, self.state)

    # ------------------------------------------------------------------ shared facts
    def teacher_spec(self) -> dict[str, Any]:
        return {"teacher": self.config.teacher.name, "options": dict(self.config.teacher.options)}

    def teacher_model_path(self) -> str | None:
        """The local model folder of a local teacher (hf, ct2), else None."""
        if self.config.teacher.name not in ("hf", "ct2"):
            return None
        from .models import resolve_model_path

        return resolve_model_path(self.config.teacher.options.get("model"), self.config.paths.cache)

    def tokenizer_path(self) -> str:
        cfg = self.config
        path = (
            cfg.processing.tokenizer
            or cfg.student.tokenizer
            or cfg.student.path
            or self.teacher_model_path()  # the student is pruned from this teacher
        )
        if path is None:
            raise PipelineError(
                "no tokenizer for processing: set processing.tokenizer or student.path "
                f"(teacher '{cfg.teacher.name}' is not a local model to borrow one from)"
            )
        return str(path)

    def check_student(self) -> None:
        """Fail unless the train stage can get a student, and a tokenizer for a built one."""
        student, teacher = self.config.student, self.config.teacher.name
        if student.path:
            return
        local = self.teacher_model_path() is not None
        if student.init.from_teacher:
            if not local:
                raise PipelineError(
                    f"student.init.from_teacher prunes a local teacher, and teacher '{teacher}' "
                    "is not one; set student.path to a causal-LM folder (or student.init.config "
                    "and student.tokenizer for a small random student)"
                )
        elif student.init.config:
            if student.tokenizer is None and not local:
                raise PipelineError(
                    "student.init.config builds a random student that borrows the teacher's "
                    f"tokenizer, and teacher '{teacher}' has none to lend; set "
                    "student.tokenizer (e.g. qwen3) or student.path"
                )
        else:
            raise PipelineError(
                "no student to train: set student.path to a causal-LM folder, or "
                "student.init.from_teacher.layers (with an hf teacher) or student.init.config"
            )

    def loss_needs_distribution(self) -> bool:
        loss = _build("loss", self.config.loss.name, self.config.loss.options)
        return "labels" not in tuple(getattr(loss, "signals", ("distribution",)))

    def problems(self, section: str):
        """The problems of the ``generation`` or ``eval`` section (set, split, limit), selected
        as ``deepcoder generate`` and ``deepcoder eval`` select them."""
        from .problems import resolve_problems

        cfg = getattr(self.config, section)
        return resolve_problems(cfg.problems, cfg.split, cfg.limit)


def _build(kind: str, name: str, options: dict[str, Any]) -> Any:
    """A component built from its config options; options it rejects are a PipelineError."""
    from .plugins import PluginError, lookup

    entry = lookup(kind, name)
    try:
        return entry.build(**options)  # factories are cheap: models load on first use
    except PluginError:
        raise
    except Exception as exc:  # e.g. a missing API key, an option out of range: one line
        raise PipelineError(f"{kind} '{entry.name}' (plugin {entry.plugin}): {exc}") from None


def _problems_fingerprint(problems) -> str:
    blob = json.dumps([p.to_dict() for p in problems], sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


# ---------------------------------------------------------------------------- stages


def _generate(ctx: RunContext) -> dict[str, Any]:
    from .generate import generate, teacher_failure

    cfg = ctx.config
    problems = ctx.problems("generation")
    if not problems:
        raise PipelineError(f"no problems for generation.split={cfg.generation.split!r}")
    summary = generate(cfg, problems=problems, out=ctx.out / "trajectories.jsonl", resume=True)
    kinds = teacher_failure(summary)
    if kinds is not None:
        raise PipelineError(
            f"every trajectory failed with a teacher error ({kinds}); nothing to distil — "
            f"see {ctx.out / 'trajectories.jsonl'}"
        )
    return summary


def _process(ctx: RunContext) -> dict[str, Any]:
    from .process import process

    summary = process(
        ctx.config,
        trajectories=ctx.out / "trajectories.jsonl",
        out=ctx.out / "dataset",
        tokenizer=ctx.tokenizer_path(),
    )
    if not summary["examples"]:
        raise PipelineError(_empty_dataset(ctx, summary))
    return summary


# What would keep the records processing dropped, by the reason its summary counts them under.
_KEEP_WITH = {
    "unsuccessful": "set processing.successful_only: false",
    "too_short": "lower processing.min_tokens",
    "too_long": "set processing.overflow: truncate or split, or raise processing.max_length",
    "low_reasoning_ratio": "lower processing.min_reasoning_ratio",
    "low_action_ratio": "lower processing.min_action_ratio",
    "no_labeled_tokens": "set another processing.detector or processing.format",
    "duplicate": "set processing.dedup: false",
    "bad input": "fix the bad input lines listed in the summary",
}


def _empty_dataset(ctx: RunContext, summary: dict[str, Any]) -> str:
    """Why processing kept nothing, counted by reason, and the settings that would keep more."""
    counts = dict(summary.get("drops", {}))
    if summary.get("bad_input", {}).get("count"):
        counts["bad input"] = summary["bad_input"]["count"]
    dropped = ", ".join(f"{reason} {n}" for reason, n in counts.items()) or "none"
    advice = "; ".join(_KEEP_WITH[reason] for reason in counts if reason in _KEEP_WITH)
    return (
        f"processing kept no example of the {summary['records']['read']} trajectories read "
        f"(dropped: {dropped}), so there is nothing to train on"
        + (f"; to keep them, {advice}" if advice else "")
        + f" (see {ctx.out / 'dataset' / 'summary.json'})"
    )


def _logits_enabled(ctx: RunContext) -> bool:
    from .plugins import lookup

    cfg = ctx.config
    needs = ctx.loss_needs_distribution()
    entry = lookup("teacher", cfg.teacher.name)
    white_box = callable(getattr(entry.factory, "score", None))
    if needs and not white_box:
        raise PipelineError(
            f"loss '{cfg.loss.name}' needs the teacher's distribution, but teacher "
            f"'{cfg.teacher.name}' gives text only; use a labels loss (--loss ce) or a "
            "white-box teacher (hf, or openai against an SGLang server)"
        )
    # Without the cache, training runs the teacher itself: it must be a model in this process.
    in_process = cfg.teacher.name in ("hf", "ct2") or hasattr(entry.factory, "hf_model")
    if needs and not cfg.teacher_logits.enabled and not in_process:
        raise PipelineError(
            f"loss '{cfg.loss.name}' needs the teacher's distribution and teacher_logits.enabled "
            f"is false, so training would run teacher '{cfg.teacher.name}' itself, which only "
            "scores on its server; set teacher_logits.enabled: true to cache its top-k first"
        )
    return needs and cfg.teacher_logits.enabled


def _teacher_logits(ctx: RunContext) -> dict[str, Any]:
    from .distill.teacher_logits import cache_teacher_logits

    # teacher=None: the configured teacher (a local hf model, or a server's score()).
    return cache_teacher_logits(
        ctx.config, data=ctx.out / "dataset", out=ctx.out / "teacher_logits"
    )


def _baseline_path(ctx: RunContext) -> Path:
    """The undistilled student: the given folder, or the one built by `student.init`."""
    if ctx.config.student.path:
        return Path(ctx.config.student.path)
    baseline = ctx.out / "baseline"
    if not (baseline / "config.json").exists():
        from .distill.student import build_student

        model, tokenizer = build_student(ctx.config, teacher_path=ctx.teacher_model_path())
        staging = ctx.out / ".baseline-partial"
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        staging.replace(baseline)
    return baseline


def _train(ctx: RunContext) -> dict[str, Any]:
    from .distill.train import train

    logits = ctx.out / "teacher_logits"
    uses_cache = ctx.state["stages"].get("teacher-logits", {}).get("status") == "done"
    return train(
        ctx.config,
        data=ctx.out / "dataset",
        out=ctx.out / "train",
        student=str(_baseline_path(ctx)),
        teacher_logits=logits if uses_cache else None,
        resume=True,
    )


EVAL_MODELS = ("teacher", "baseline", "student")


def _eval(ctx: RunContext) -> dict[str, Any]:
    from .evaluate import evaluate

    cfg = ctx.config
    from .evaluate import local_model_spec

    # Students run with the local teacher's engine and settings, on their own weights.
    available = {
        "teacher": ctx.teacher_spec(),
        "baseline": local_model_spec(cfg, str(_baseline_path(ctx))),
        "student": local_model_spec(cfg, str(ctx.out / "train" / "student")),
    }
    return evaluate(
        cfg,
        models={name: available[name] for name in cfg.eval.models},
        problems=ctx.problems("eval"),
        out=ctx.out / "eval",
        teacher_trajectories=ctx.out / "trajectories.jsonl",
        source=cfg.eval.problems or "bundled",
    )


def _report(ctx: RunContext) -> dict[str, Any]:
    from .run_report import write_run_report

    return write_run_report(ctx.out, ctx.state, ctx.config)


PIPELINE = (
    Stage("generate", ("teacher", "agent", "tools", "generation"), "trajectories.jsonl", _generate),
    Stage("process", ("processing", "student"), "dataset", _process),
    Stage(
        "teacher-logits", ("teacher_logits",), "teacher_logits", _teacher_logits, _logits_enabled
    ),
    Stage("train", ("student", "loss", "weighting", "training"), "train", _train),
    Stage("eval", ("eval", "agent", "tools"), "eval", _eval),
    Stage("report", (), "report.md", _report),
)


def _fingerprint(ctx: RunContext, stage: Stage, upstream: list[str]) -> str:
    parts = {
        "sections": ctx.config.section_fingerprint(*stage.sections) if stage.sections else "",
        "upstream": upstream,
    }
    if stage.name == "generate":
        parts["problems"] = _problems_fingerprint(ctx.problems("generation"))
    if stage.name == "eval":
        parts["problems"] = _problems_fingerprint(ctx.problems("eval"))
        parts["teacher"] = ctx.config.section_fingerprint("teacher")
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def run_pipeline(config: Config, out: Path, force: tuple[str, ...] = ()) -> dict[str, Any]:
    """Run every enabled stage in order; returns the state (per-stage status and summaries)."""
    unknown = [f for f in force if f not in STAGES]
    if unknown:
        raise PipelineError(f"--force {unknown[0]}: unknown stage; stages: {', '.join(STAGES)}")
    ctx = RunContext(config, out)
    _check_stages(ctx)  # before anything is written: a refused run leaves no run directory
    out.mkdir(parents=True, exist_ok=True)
    snapshot(config, out / "config.yaml")
    run_stages(ctx, PIPELINE, force=force, err=False)
    return ctx.state


def _check_stages(ctx: RunContext) -> None:
    """Fail now, not after hours of generation, when a later stage could not run."""
    from .problems import ProblemError
    from .process import OVERFLOW
    from .spans import FORMATS

    ctx.tokenizer_path()
    ctx.check_student()
    # process checks these too, but only once generation is done
    processing = ctx.config.processing
    if processing.overflow not in OVERFLOW:
        raise PipelineError(
            f"processing.overflow {processing.overflow!r}: expected one of {', '.join(OVERFLOW)}"
        )
    if processing.format not in ("auto", *FORMATS):
        raise PipelineError(
            f"processing.format {processing.format!r}: expected auto or one of {', '.join(FORMATS)}"
        )
    for stage in PIPELINE:
        stage.enabled(ctx)  # the loss's teacher signal
    if not ctx.config.eval.models:
        raise PipelineError(f"eval.models: empty; list some of {', '.join(EVAL_MODELS)}")
    unknown = [m for m in ctx.config.eval.models if m not in EVAL_MODELS]
    if unknown:
        raise PipelineError(f"eval.models: unknown {unknown}; choose from {list(EVAL_MODELS)}")
    for section in ("generation", "eval"):
        try:
            problems = ctx.problems(section)
        except ProblemError as exc:
            raise PipelineError(f"{section}.problems: {exc}") from None
        if not problems:
            cfg = getattr(ctx.config, section)
            raise PipelineError(
                f"no problems for {section} in {cfg.problems or 'the bundled set'} "
                f"with {section}.split={cfg.split!r}; check {section}.problems and the split"
            )


def _discard(path: Path) -> None:
    """Delete a stage's output and the files written beside it (generate's summary and config)."""
    import shutil

    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    for side in (path.with_suffix(".summary.json"), path.with_suffix(".config.yaml")):
        if side != path and side.exists():
            side.unlink()


@click.command("run")
@config_options
@click.option("--teacher", help="Teacher plugin (teacher.name).")
@click.option("--loss", help="Loss plugin (loss.name).")
@click.option("--weighting", help="Weighting plugin (weighting.name).")
@click.option("--student", help="Student model folder (student.path).")
@click.option("--out", help="Run directory (paths.out).")
@click.option("--force", multiple=True, type=click.Choice(STAGES), help="Re-run this stage.")
def run_command(config_path, teacher, loss, weighting, student, out, overrides, force) -> None:
    """Run the whole pipeline: generate, process, teacher-logits, train, eval, report."""
    from .config import apply_sandbox, load_config
    from .plugins import PluginError

    config = load_config(
        config_path,
        overrides,
        flags={
            "teacher.name": teacher,
            "loss.name": loss,
            "weighting.name": weighting,
            "student.path": student,
            "paths.out": out,
        },
    )
    apply_sandbox(config)
    try:
        _preflight(config)
        run_pipeline(config, Path(config.paths.out), tuple(force))
    except PluginError as exc:  # not a DeepcoderError; those (a stage's too) end as one line
        raise PipelineError(str(exc)) from None
    click.secho(f"Done. Report: {Path(config.paths.out) / 'report.md'}", fg="green", bold=True)


def _preflight(config: Config) -> None:
    """Build the cheap components first, so a typo or a missing key fails before hours of work."""
    from .plugins import lookup

    lookup("loss", config.loss.name)
    _build("weighting", config.weighting.name, config.weighting.options)
    for tool in config.tools.enabled:
        lookup("tool", tool)
    _build("teacher", config.teacher.name, config.teacher.options)


def run_stages(
    ctx: RunContext,
    stages: tuple[Stage, ...] | list[Stage],
    *,
    force: tuple[str, ...] = (),
    upstream: list[str] | None = None,
    label: str = "",
    err: bool = True,
) -> list[str]:
    """Run ``stages`` in order in ``ctx.out`` with :func:`run_pipeline`'s rules (skip a stage
    done with the same fingerprint and output, discard a stale output, record the state);
    returns the upstream list (``"<fingerprint>:<finished_at>"`` of each enabled stage).

    ``upstream``: what earlier work these stages depend on (another run directory's
    upstream list), so a change there re-runs them. Progress lines go to stderr (stdout
    with ``err=False``, as ``run`` prints them), prefixed by ``label``. Used by ``run`` and by
    ``deepcoder compare`` for its shared and per-variant stages.
    """
    upstream = list(upstream or [])
    prefix = f"{label} " if label else ""
    ctx.out.mkdir(parents=True, exist_ok=True)
    total = len(stages)
    for index, stage in enumerate(stages, start=1):
        if not stage.enabled(ctx):
            ctx.state["stages"][stage.name] = {"status": "not needed"}
            ctx.save_state()
            click.secho(
                f"{prefix}[{index}/{total}] {stage.name}: not needed", fg="bright_black", err=err
            )
            continue
        fingerprint = _fingerprint(ctx, stage, upstream)
        previous = ctx.state["stages"].get(stage.name, {})
        up_to_date = (
            previous.get("status") == "done"
            and previous.get("fingerprint") == fingerprint
            and (ctx.out / stage.output).exists()
            and stage.name not in force
        )
        if up_to_date:
            click.secho(
                f"{prefix}[{index}/{total}] {stage.name}: up to date, skipped", fg="green", err=err
            )
        else:
            click.secho(f"{prefix}[{index}/{total}] {stage.name}", fg="cyan", bold=True, err=err)
            if previous.get("fingerprint") not in (None, fingerprint) or stage.name in force:
                _discard(ctx.out / stage.output)  # settings or inputs changed: start afresh
            # (downstream stages depend on this output's identity, so a forced re-run cascades)
            ctx.state["stages"][stage.name] = {"status": "running", "fingerprint": fingerprint}
            ctx.save_state()
            started = time.time()
            summary = stage.run(ctx)
            ctx.state["stages"][stage.name] = {
                "status": "done",
                "fingerprint": fingerprint,
                "finished_at": time.time(),
                "seconds": round(time.time() - started, 2),
                "summary": summary,
            }
            ctx.save_state()
        upstream.append(f"{fingerprint}:{ctx.state['stages'][stage.name].get('finished_at')}")
    return upstream
