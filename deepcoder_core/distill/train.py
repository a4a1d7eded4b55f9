"""``deepcoder train``: the distillation recipe, config in, trained student out.

1. Load the processed dataset, build the loss and the weighting (plugins) and the student
   (:mod:`.student`: a folder, a pruned teacher or a random config; LoRA on request).
2. Pick the teacher signal (:func:`.signals.resolve_signal`): the top-k cache, the online
   white-box teacher, or the teacher's tokens.
3. Find the checkpoint to resume from and put back the running state of the loss and the
   weighting (:mod:`.checkpoint`).
4. Train with :class:`.trainer.DistillTrainer`, a ``transformers.Trainer`` whose loss is the
   span-aware engine, on :class:`.data.Examples` batched by :class:`.data.Collator`.
5. Save the student, draw the plots, write ``summary.json``.

What a run leaves in ``out/``: ``config.yaml`` (snapshot), ``metrics.jsonl`` (one line per
logged step: ``loss``, per span ``divergence/<span>``, ``top1_agreement/<span>`` and
``tokens/<span>`` (:mod:`.metrics`), tokens/s, learning rate, grad norm, MoE expert load),
``plots/*.png``, ``tensorboard/``, ``checkpoints/``, ``student/`` (the model, or only the
LoRA adapters) and ``summary.json``.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..config import Config, config_options
from ..io import atomic_write_json
from ..protocols import SPAN_NAMES, TrainingState
from .checkpoint import (
    checkpoint_step,
    component_state,
    latest_checkpoint,
    load_state,
    restore_component,
    trim_metrics,
)
from .data import Collator, Examples, TokenAligner, load_processed
from .errors import TrainError, one_line_errors
from .metrics import span_key
from .on_policy import ROLLOUTS, build_rollout_source, trim_rollouts
from .signals import resolve_signal

if TYPE_CHECKING:
    from .trainer import Setup

ORDER_COLUMNS = ("span_type", "difficulty", "category", "success", "teacher_entropy")
"""What a weighting's ``order(examples)`` sees of each example (the columns the data has)."""


def train(
    config: Config,
    *,
    data: str | Path,
    out: str | Path,
    student: str | None = None,
    teacher: Any = None,
    teacher_logits: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Distil into the student; returns the summary (also ``out/summary.json``).

    ``student`` (a model folder) stands for ``student.path`` in this run; ``config`` itself
    is left as given.
    """
    import torch
    from accelerate import PartialState

    from ..config import snapshot
    from ..plugins import build
    from .plots import plot_metrics
    from .student import apply_lora, build_student, is_moe, save_lora_base
    from .trainer import DistillTrainer, Setup, lm_head_weight

    out = Path(out)
    started = time.perf_counter()
    if student is not None:
        config = replace(config, student=replace(config.student, path=student))
    main = PartialState().is_main_process

    # 1. data, components, student
    dataset = load_processed(data)
    loss_fn = build("loss", config.loss.name, **config.loss.options)
    weighting = build("weighting", config.weighting.name, **config.weighting.options)
    ce_fn = build("loss", "ce") if config.loss.ce_weight > 0 else None
    for component in (loss_fn, weighting):
        component_state(component)  # a state no checkpoint can hold fails now, not at a save
    model, tokenizer = build_student(config)
    student_width = lm_head_weight(model).shape[0]

    # 2. teacher signal
    signal = resolve_signal(
        config,
        loss_fn,
        teacher=teacher,
        teacher_logits=teacher_logits,
        dataset=dataset,
        tokenizer=tokenizer,
        student_width=student_width,
    )
    if signal.cache is not None:
        signal.cache.check_training(config, weighting, loss_fn)  # span set, temperature
    elif signal.kind != "labels" and _has_teacher_prefix(dataset):
        warnings.warn(
            f"{data}: rows carry the teacher's own system message (privileged exemplars), which "
            "only the teacher-logit cache reads; the online teacher scores the student's prompt "
            "(set teacher_logits.enabled=true to distil the exemplars away)",
            stacklevel=2,
        )

    # 3. resume point and running state
    checkpoint = latest_checkpoint(out) if resume else None
    if main:
        metrics = out / "metrics.jsonl"
        if checkpoint is None:
            metrics.unlink(missing_ok=True)  # a fresh run: old curves would mix in
            (out / ROLLOUTS).unlink(missing_ok=True)
        else:
            trim_metrics(metrics, checkpoint_step(checkpoint))
            trim_rollouts(out / ROLLOUTS, checkpoint_step(checkpoint))
        snapshot(config, out / "config.yaml")
    state = TrainingState(total_steps=config.training.max_steps)
    saved = load_state(checkpoint) if checkpoint is not None else None
    if saved is not None:
        state.span_divergence_ema = saved["span_divergence_ema"]
        for key, component in (("weighting", weighting), ("loss", loss_fn)):
            if key in saved:
                restore_component(component, saved[key])

    lora = config.student.lora.enabled
    if lora:
        base = save_lora_base(model, tokenizer, config, out) if main else None
        model = apply_lora(model, config)
        if base is not None:
            model.peft_config["default"].base_model_name_or_path = base
    # on-policy: the student's rollouts, scored by the teacher (checked before step 1)
    rollouts, on_policy_loss = build_rollout_source(
        config, model=model, tokenizer=tokenizer, weighting=weighting, signal=signal, out=out
    )
    setup = Setup(
        config=config,
        loss_fn=loss_fn,
        weighting=weighting,
        signal=signal.kind,
        teacher=signal.teacher,
        cache=signal.cache,
        width=signal.width if signal.width != student_width else None,
        ce_fn=ce_fn,
        moe=is_moe(model),
        state=state,
        rollouts=rollouts,
        on_policy_loss=on_policy_loss,
    )

    # 4. data in training order, and the Trainer
    order = None
    if hasattr(weighting, "order"):
        columns = [c for c in ORDER_COLUMNS if c in dataset.column_names]
        order = list(weighting.order(dataset.select_columns(columns).to_list()))
    aligner = None
    if signal.kind == "aligned":
        assert signal.teacher is not None, "an aligned signal comes with its teacher"
        aligner = TokenAligner(tokenizer, signal.teacher.tokenizer)
    report_to = list(config.training.report_to)
    callbacks: list[Any] = []
    if "tensorboard" in report_to and main:
        from torch.utils.tensorboard import SummaryWriter
        from transformers.integrations import TensorBoardCallback

        callbacks.append(TensorBoardCallback(SummaryWriter(str(out / "tensorboard"))))
    trainer = DistillTrainer(
        model=model,
        args=_training_args(config, out, [r for r in report_to if r != "tensorboard"]),
        train_dataset=Examples(dataset, order),
        # Padding is masked out; id 0 exists in every vocabulary (the tokenizer's pad may not).
        data_collator=Collator(0, signal.cache, aligner),
        processing_class=tokenizer,
        callbacks=callbacks,
        setup=setup,
        metrics=out / "metrics.jsonl",
        progress=progress,
    )
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)

    # 5. the student, plots and summary
    summary: dict[str, Any] = {}
    if main:
        final = out / "student"
        trainer.save_model(str(final))
        if lora:
            tokenizer.save_pretrained(final)
        plots = plot_metrics(out / "metrics.jsonl", out / "plots")
        summary = summarize(out, result, setup, model, plots, time.perf_counter() - started)
        atomic_write_json(out / "summary.json", summary)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
    return summary


def warmup_steps(config: Config) -> int:
    """Optimizer steps of the LR warm-up: ``training.warmup_ratio`` of ``training.max_steps``.

    Rounded up, so any positive ratio warms up for at least one step; the tolerance keeps a
    product such as 0.1 x 30 = 3.0000000000000004 at 3.
    """
    t = config.training
    return max(0, math.ceil(t.warmup_ratio * t.max_steps - 1e-9))


# TrainingArguments name -> the training section's key for the same setting.
_TRAINING_ARGUMENTS = {
    "max_steps": "max_steps",
    "per_device_train_batch_size": "batch_size",
    "gradient_accumulation_steps": "gradient_accumulation_steps",
    "learning_rate": "learning_rate",
    "lr_scheduler_type": "lr_scheduler",
    "weight_decay": "weight_decay",
    "max_grad_norm": "max_grad_norm",
    "bf16": "bf16",
    "seed": "seed",
    "data_seed": "seed",
    "save_steps": "save_steps",
    "save_total_limit": "save_total_limit",
    "logging_steps": "logging_steps",
}


def _training_args(config: Config, out: Path, report_to: list[str]) -> Any:
    import torch
    from transformers import TrainingArguments

    t = config.training
    return TrainingArguments(
        # Without a GPU, processes started by `accelerate launch` / torchrun must use gloo.
        use_cpu=not torch.accelerator.is_available(),
        output_dir=str(out / "checkpoints"),
        warmup_steps=warmup_steps(config),
        **{argument: getattr(t, key) for argument, key in _TRAINING_ARGUMENTS.items()},
        report_to=report_to,
        remove_unused_columns=False,
        disable_tqdm=True,  # MetricsCallback draws the bar, with per-span divergences
        dataloader_pin_memory=False,
        log_level="warning",
    )


def summarize(
    out: Path,
    result: Any,
    setup: Setup,
    model: Any,
    plots: list[Path],
    seconds: float,
) -> dict[str, Any]:
    """Final numbers: per-span divergence at the first and last logged step, speed, where things are."""
    from ..io import read_jsonl

    records = [r for _, r in read_jsonl(out / "metrics.jsonl", errors=[])]
    spans: dict[str, dict[str, float]] = {}
    for name in SPAN_NAMES.values():
        key = span_key("divergence", name)
        values = [r[key] for r in records if key in r]
        if values:
            spans[name] = {"first": values[0], "last": values[-1]}
    speeds = [r["tokens_per_second"] for r in records if "tokens_per_second" in r]
    steps = [r["step_seconds"] for r in records if "step_seconds" in r]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    on_policy = [r for r in records if r.get("on_policy_steps")]
    return {
        "schema": 1,
        "steps": result.global_step,
        "loss": {
            "first": records[0]["loss"] if records else None,
            "last": records[-1]["loss"] if records else None,
        },
        "span_divergence": spans,
        "signal": setup.signal,
        "loss_fn": setup.config.loss.name,
        "weighting": setup.config.weighting.name,
        "teacher": setup.teacher.identity if setup.teacher is not None else None,
        "tokens_per_second": round(sum(speeds) / len(speeds), 1) if speeds else None,
        "step_seconds": round(sum(steps) / len(steps), 4) if steps else None,
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable_parameters": trainable,
        "lora": setup.config.student.lora.enabled,
        "moe": setup.moe,
        "seconds": round(seconds, 2),
        "student": str(out / "student"),
        "metrics": str(out / "metrics.jsonl"),
        "plots": [str(p) for p in plots],
        "finite": all(math.isfinite(r["loss"]) for r in records),
        "on_policy": _on_policy_summary(setup, on_policy, out),
    }


def _on_policy_summary(setup: Setup, records: list[dict[str, Any]], out: Path) -> Any:
    """Rollout figures over the logged on-policy steps, and the time split per step."""
    op = setup.config.training.on_policy
    if op.fraction <= 0:
        return None
    steps = sum(r["on_policy_steps"] for r in records)

    def mean(key: str) -> float | None:
        values = [r[key] for r in records if key in r]
        return round(sum(values) / len(values), 4) if values else None

    def per_step(key: str) -> float | None:
        total = sum(r.get(key, 0.0) for r in records)
        return round(total / steps, 3) if steps else None

    return {
        "fraction": op.fraction,
        "loss": op.loss or setup.config.loss.name,
        "gate": op.gate,
        "horizon": op.horizon,
        "steps": steps,
        "success": mean("rollout/success"),
        "format_error_rate": mean("rollout/format_error_rate"),
        "tool_error_rate": mean("rollout/tool_error_rate"),
        "seconds_per_step": {
            "rollout": per_step("time/rollout"),
            "scoring": per_step("time/scoring"),
            "update": per_step("time/update"),
        },
        "rollouts": str(out / ROLLOUTS),
    }


# ---------------------------------------------------------------------------- command


@click.command("train")
@click.option("--data", required=True, type=click.Path(file_okay=False), help="Processed dataset.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run folder.")
@click.option("--student", help="Student model folder (default: student.path / student.init).")
@click.option("--teacher", help="Online white-box teacher: plugin name or model folder.")
@click.option(
    "--teacher-logits", type=click.Path(file_okay=False), help="Top-k cache from teacher-logits."
)
@click.option("--loss", help="Loss plugin (default: loss.name).")
@click.option("--weighting", help="Weighting plugin (default: weighting.name).")
@click.option("--max-steps", type=int, help="Optimizer steps (default: training.max_steps).")
@click.option(
    "--on-policy",
    "on_policy",
    type=click.FloatRange(0, 1),
    help="Share of steps on the student's own rollouts (training.on_policy.fraction).",
)
@click.option("--resume", is_flag=True, help="Continue from the last checkpoint in --out.")
@config_options
def train_command(
    data: str,
    out: str,
    student: str | None,
    teacher: str | None,
    teacher_logits: str | None,
    loss: str | None,
    weighting: str | None,
    max_steps: int | None,
    on_policy: float | None,
    resume: bool,
    config_path: str | None,
    overrides: tuple[str, ...],
) -> None:
    """Distil the teacher into the student with span-aware losses and weightings."""
    from ..config import load_config

    if teacher and teacher_logits:
        raise TrainError("give either --teacher (online) or --teacher-logits (cache), not both")
    flags = {
        "loss.name": loss,
        "weighting.name": weighting,
        "training.max_steps": max_steps,
        "training.on_policy.fraction": on_policy,
    }
    with one_line_errors():
        config = load_config(config_path, overrides, flags)
        sources: dict[str, Any] = {
            "student": student,
            "teacher": teacher,
            "teacher_logits": teacher_logits,
        }
        summary = train(config, data=data, out=out, resume=resume, **sources)
    if summary:
        print_summary(summary)


def print_summary(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"trained {summary['steps']} steps ({summary['signal']} signal)")
    table.add_column("span")
    table.add_column("first divergence", justify="right")
    table.add_column("last divergence", justify="right")
    for name, values in summary["span_divergence"].items():
        table.add_row(name, f"{values['first']:.4f}", f"{values['last']:.4f}")
    console = Console()
    console.print(table)
    console.print(
        f"{summary['tokens_per_second']} tokens/s, {summary['step_seconds']} s/step; "
        f"student: {summary['student']}; metrics: {summary['metrics']}; "
        f"plots: {', '.join(summary['plots'])}"
    )


def _has_teacher_prefix(dataset: Any) -> bool:
    if "teacher_prefix_replaces" not in dataset.column_names:
        return False
    return any(dataset["teacher_prefix_replaces"])
