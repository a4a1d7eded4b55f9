"""``deepcoder compare``: train several variants from one dataset and teacher cache, evaluate
them on the same held-out problems with the same seeds, and write one report.

Layout of ``--out`` (default ``<paths.out>/compare``)::

    shared/                 a run directory (state.json) of the stages every variant shares:
      trajectories.jsonl      generate (train split)        -- pipeline stage
      dataset/                process                       -- pipeline stage
      teacher_logits/         teacher-logits (when a variant's loss needs a distribution)
      baseline/               the undistilled student (absent with student.path)
      eval/                   the teacher on the held-out problems (agreement references)
      heldout/                those teacher trajectories, processed like the training data
    variants/<name>/        a run directory per variant:
      train/                  its training (absent for train: false)
      eval/                   its evaluation (trajectories/<name>.jsonl, report.json)
      heldout.json            its per-span divergence from the teacher on heldout/
    report.json, report.md, *.png

Every stage runs through :func:`deepcoder_core.pipeline.run_stages`, with ``deepcoder run``'s
rules: a stage done with the same fingerprint is skipped, a changed one starts afresh, a
killed one resumes (generation appends, training resumes from its latest checkpoint,
evaluation reuses its JSONL). A variant's stages depend on the shared ones' fingerprints,
so regenerating the data retrains every variant, and nothing else does.

The shared stages use the config as given, except that, when any variant's loss needs the
teacher's distribution, they take that variant's loss (so the teacher-logit cache is built)
and, with ``teacher_logits.spans: null``, cache the spans of every variant's weighting.
Every variant's config is built and checked (plugins, options, teacher signal, problems)
before any stage runs.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..config import config_options
from ..errors import StageError
from .report import VariantResult, build_compare_report, write_compare_report
from .variants import CACHE_KEYS, Variant, VariantError, VariantSet, load_variants

if TYPE_CHECKING:
    from ..config import Config
    from ..pipeline import RunContext, Stage

DEFAULT_VARIANTS = Path(__file__).resolve().parents[2] / "configs" / "compare.yaml"
"""The default variant set (``configs/compare.yaml`` of the source tree)."""


class CompareError(StageError):
    """A comparison that cannot run as asked; the message says what to change."""


# ---------------------------------------------------------------------------- configs


def variant_configs(
    config_path: str | None, overrides: tuple[str, ...], variants: VariantSet
) -> tuple[Config, dict[str, Config]]:
    """The base config and, per variant, the base with the variant's overrides on top; a
    bad override is a VariantError naming the file and the variant."""
    from ..config import ConfigError, load_config

    base = load_config(config_path, overrides)
    configs = {}
    for name, variant in variants.variants.items():
        try:
            configs[name] = load_config(config_path, [*overrides, *variant.overrides])
        except ConfigError as exc:
            raise VariantError(f"{variants.path}: variant '{name}': {exc}") from None
    return base, configs


def shared_config(
    base: Config, configs: dict[str, Config], variants: VariantSet, folder: Path
) -> Config:
    """The config of the shared stages (module docstring); ``folder``: where they run."""
    from ..distill.cache_spans import span_names, stored_spans
    from ..pipeline import RunContext

    trained = [configs[n] for n, v in variants.variants.items() if v.train]
    needing = [c for c in trained if RunContext(c, folder).loss_needs_distribution()]
    if not needing:
        return dataclasses.replace(base, loss=trained[0].loss) if trained else base
    spans = base.teacher_logits.spans
    if spans is None:
        spans = span_names(sorted({s for c in needing for s in stored_spans(c)}))
    return dataclasses.replace(
        base,
        loss=needing[0].loss,
        teacher_logits=dataclasses.replace(base.teacher_logits, spans=spans),
    )


def check_variants(configs: dict[str, Config], variants: VariantSet, folder: Path) -> None:
    """Fail before any stage runs when a variant could not train or be evaluated (its
    plugins, their options, the teacher signal its loss needs, problems); ``folder``: where
    the shared stages run."""
    from ..pipeline import PipelineError, RunContext, _check_stages, _preflight
    from ..plugins import PluginError

    for name, config in configs.items():
        try:
            _preflight(config)
            _check_stages(RunContext(config, folder))
        except (PipelineError, PluginError) as exc:
            raise VariantError(f"{variants.path}: variant '{name}': {exc}") from None


def check_shared(shared: RunContext) -> None:
    """The same checks for the shared stages' own config."""
    from ..pipeline import PipelineError, _check_stages, _preflight
    from ..plugins import PluginError

    try:
        _preflight(shared.config)
        _check_stages(shared)
    except (PipelineError, PluginError) as exc:
        raise CompareError(str(exc)) from None


# ---------------------------------------------------------------------------- shared stages


def _baseline(ctx: RunContext) -> dict[str, Any]:
    from ..pipeline import _baseline_path

    return {"path": str(_baseline_path(ctx))}


def _teacher_eval(ctx: RunContext, progress: bool) -> dict[str, Any]:
    from ..evaluate import evaluate

    return evaluate(
        ctx.config,
        models={"teacher": ctx.teacher_spec()},
        problems=ctx.problems("eval"),
        out=ctx.out / "eval",
        source=ctx.config.eval.problems or "bundled",
        reference=None,
        scaffolded={"teacher"},  # the teacher acts as in generation; the students on their own
        progress=progress,
    )


def _teacher_trajectories(shared: RunContext) -> Path:
    report = shared.state["stages"]["eval"]["summary"]
    return shared.out / "eval" / report["models"]["teacher"]["trajectories"]


def _heldout_process(ctx: RunContext) -> dict[str, Any]:
    from ..process import process

    return process(
        ctx.config,
        trajectories=_teacher_trajectories(ctx),
        out=ctx.out / "heldout",
        tokenizer=ctx.tokenizer_path(),
    )


def _heldout_enabled(ctx: RunContext) -> bool:
    from .heldout import local_teacher_reason

    return local_teacher_reason(ctx.config) is None


def shared_stages(progress: bool) -> list[Stage]:
    from ..pipeline import PIPELINE, Stage

    by_name = {stage.name: stage for stage in PIPELINE}
    return [
        by_name["generate"],
        by_name["process"],
        by_name["teacher-logits"],
        Stage("baseline", ("student",), "baseline", _baseline, lambda c: not c.config.student.path),
        Stage(
            "eval", ("eval", "agent", "tools"), "eval", partial(_teacher_eval, progress=progress)
        ),
        Stage(
            "heldout-process",
            ("processing", "student"),
            "heldout",
            _heldout_process,
            _heldout_enabled,
        ),
    ]


def heldout_reason(shared: RunContext) -> str | None:
    """Why the held-out divergence is not measured, or None when it is."""
    from .heldout import local_teacher_reason

    reason = local_teacher_reason(shared.config)
    if reason:
        return reason
    summary = shared.state["stages"].get("heldout-process", {}).get("summary") or {}
    if not summary.get("examples"):
        drops = ", ".join(f"{k} {v}" for k, v in (summary.get("drops") or {}).items()) or "none"
        return (
            "processing kept no teacher trajectory of the held-out problems "
            f"(dropped: {drops}; see {shared.out / 'heldout' / 'summary.json'})"
        )
    return None


# ---------------------------------------------------------------------------- variant stages


def _model_path(ctx: RunContext, shared: RunContext, variant: Variant) -> Path:
    from ..pipeline import _baseline_path

    return ctx.out / "train" / "student" if variant.train else _baseline_path(shared)


def _variant_train(ctx: RunContext, shared: RunContext, progress: bool) -> dict[str, Any]:
    from ..distill.train import train
    from ..pipeline import _baseline_path

    uses_cache = shared.state["stages"].get("teacher-logits", {}).get("status") == "done"
    cache = shared.out / "teacher_logits" if uses_cache else None
    if cache is not None and _own_cache(ctx.config, shared.config):
        cache = _variant_cache(ctx, shared, progress)
    return train(
        ctx.config,
        data=shared.out / "dataset",
        out=ctx.out / "train",
        student=str(_baseline_path(shared)),
        teacher_logits=cache,
        resume=True,
        progress=progress,
    )


def _own_cache(config: Config, shared: Config) -> bool:
    """Whether a variant asks for another cache than the shared one (format, k or K)."""
    keys = [k.split(".", 1)[1] for k in CACHE_KEYS]
    mine, theirs = config.teacher_logits, shared.teacher_logits
    return any(getattr(mine, k) != getattr(theirs, k) for k in keys)


def _variant_cache(ctx: RunContext, shared: RunContext, progress: bool) -> Path:
    """The variant's own cache of the shared dataset, storing the shared stage's spans
    (written once, resumed like the shared one)."""
    from ..distill.teacher_logits import cache_teacher_logits

    section = dataclasses.replace(
        ctx.config.teacher_logits, spans=shared.config.teacher_logits.spans
    )
    out = ctx.out / "teacher_logits"
    cache_teacher_logits(
        dataclasses.replace(ctx.config, teacher_logits=section),
        data=shared.out / "dataset",
        out=out,
        progress=progress,
    )
    return out


def _variant_eval(
    ctx: RunContext, shared: RunContext, variant: Variant, progress: bool
) -> dict[str, Any]:
    from ..evaluate import evaluate, local_model_spec

    return evaluate(
        ctx.config,
        models={variant.name: local_model_spec(ctx.config, str(_model_path(ctx, shared, variant)))},
        problems=ctx.problems("eval"),
        out=ctx.out / "eval",
        teacher_trajectories=_teacher_trajectories(shared),
        source=ctx.config.eval.problems or "bundled",
        reference=None,
        progress=progress,
    )


def _variant_heldout(
    ctx: RunContext, shared: RunContext, variant: Variant, progress: bool
) -> dict[str, Any]:
    from ..io import atomic_write_json
    from .heldout import score_heldout

    scores = score_heldout(
        ctx.config,
        model=_model_path(ctx, shared, variant),
        data=shared.out / "heldout",
        progress=progress,
    )
    atomic_write_json(ctx.out / "heldout.json", scores)
    return {k: v for k, v in scores.items() if k != "per_example"}


def variant_stages(shared: RunContext, variant: Variant, progress: bool) -> list[Stage]:
    from ..pipeline import Stage

    measured = heldout_reason(shared) is None
    return [
        Stage(
            "train",
            ("student", "loss", "weighting", "training", "teacher_logits"),
            "train",
            partial(_variant_train, shared=shared, progress=progress),
            lambda ctx: variant.train,
        ),
        Stage(
            "eval",
            ("eval", "agent", "tools"),
            "eval",
            partial(_variant_eval, shared=shared, variant=variant, progress=progress),
        ),
        Stage(
            "heldout",
            (),
            "heldout.json",
            partial(_variant_heldout, shared=shared, variant=variant, progress=progress),
            lambda ctx: measured,
        ),
    ]


# ---------------------------------------------------------------------------- the comparison


def _result(ctx: RunContext, variant: Variant) -> VariantResult:
    import json

    from ..io import BadLine
    from ..records import read_trajectories

    stages = ctx.state["stages"]
    evaluation = stages["eval"]["summary"]
    model = evaluation["models"][variant.name]
    wanted = set(model["per_problem"])
    bad: list[BadLine] = []
    trajectories = [
        t
        for t in read_trajectories(ctx.out / "eval" / model["trajectories"], bad)
        if t.problem_id in wanted and t.sample < evaluation["samples"]
    ]
    heldout_path = ctx.out / "heldout.json"
    heldout = (
        json.loads(heldout_path.read_text())
        if stages.get("heldout", {}).get("status") == "done" and heldout_path.exists()
        else None
    )
    train = stages.get("train", {})
    return VariantResult(
        name=variant.name,
        overrides=variant.overrides,
        train=variant.train,
        evaluation=evaluation,
        trajectories=trajectories,
        heldout=heldout,
        training=train.get("summary"),
        training_seconds=train.get("seconds"),
    )


def compare(
    config_path: str | None,
    overrides: tuple[str, ...],
    variants_path: str | Path,
    out: Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the comparison (module docstring); returns the report (also ``out/report.json``)."""
    from ..config import apply_sandbox
    from ..evaluate import INTERVAL
    from ..pipeline import RunContext, run_stages

    variants = load_variants(variants_path)
    base, configs = variant_configs(config_path, overrides, variants)
    out = Path(out) if out is not None else Path(base.paths.out) / "compare"
    check_variants(configs, variants, out / "shared")
    shared = RunContext(shared_config(base, configs, variants, out / "shared"), out / "shared")
    check_shared(shared)
    apply_sandbox(base)

    upstream = run_stages(shared, shared_stages(progress), label="[shared]")
    results = {}
    for index, (name, variant) in enumerate(variants.variants.items(), start=1):
        ctx = RunContext(configs[name], out / "variants" / name)
        label = f"[{index}/{len(variants.variants)} {name}]"
        run_stages(ctx, variant_stages(shared, variant, progress), upstream=upstream, label=label)
        results[name] = _result(ctx, variant)
    report = build_compare_report(
        variants,
        results,
        teacher=shared.state["stages"]["eval"]["summary"]["models"]["teacher"],
        heldout_reason=heldout_reason(shared),
        config_path=config_path,
        interval=INTERVAL,
    )
    report["out"] = str(out)
    return write_compare_report(report, out)


@click.command("compare")
@config_options
@click.option(
    "--variants",
    "variants_path",
    type=click.Path(dir_okay=False),
    help=f"Variants YAML (default {DEFAULT_VARIANTS.name}: sad, token_kd, sft, none).",
)
@click.option(
    "--out", type=click.Path(file_okay=False), help="Folder (default <paths.out>/compare)."
)
@click.option("--quiet", is_flag=True, help="No progress lines.")
def compare_command(
    config_path: str | None,
    overrides: tuple[str, ...],
    variants_path: str | None,
    out: str | None,
    quiet: bool,
) -> None:
    """Train variants on one dataset and teacher cache, evaluate them alike, report the
    differences with 95% intervals.

    \b
    deepcoder compare --config configs/config.yaml
    deepcoder compare --config configs/config.yaml --variants my_variants.yaml --out runs/cmp
    """
    from ..plugins import PluginError

    if variants_path is None and not DEFAULT_VARIANTS.exists():
        raise CompareError(
            f"no --variants given and {DEFAULT_VARIANTS} is missing; give --variants"
        )
    try:
        report = compare(
            config_path,
            overrides,
            variants_path or DEFAULT_VARIANTS,
            Path(out) if out else None,
            progress=not quiet,
        )
    except PluginError as exc:
        raise CompareError(str(exc)) from None
    for name, row in report["variants"].items():
        cells = "  ".join(
            f"{m} {c['value']:.3f}"
            for m, c in row["metrics"].items()
            if m in ("pass@1", "tool_call_validity") and c["value"] is not None
        )
        click.echo(f"{name}: {cells}")
    click.echo(f"Report: {Path(report['out']) / 'report.md'}")
