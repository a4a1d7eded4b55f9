"""The ``transformers.Trainer`` subclass whose loss is the span-aware distillation engine.

The Trainer owns everything that is not ours -- gradient accumulation, bf16, clipping, LR
schedules, checkpoints and resume, TensorBoard, ``accelerate launch`` (DDP / FSDP /
DeepSpeed). Ours is :meth:`DistillTrainer.compute_loss`: the student's final hidden states
go to the loss engine together with the teacher signal (online teacher, top-k cache or the
teacher's tokens) and per-token span weights.

Normalisation: for a gradient-accumulation window W over all processes, the loss is

    L = sum_{t in W} w_t * d_t / sum_{t in W} w_t

(``w_t`` span weight, ``d_t`` per-token divergence), so the gradient does not depend on how
W is split into micro-batches or processes (the gradient-accumulation fix of transformers
4.46, applied to weighted token counts). Each micro-batch passes the window's weighted
token count as the engine's ``normalizer``.

Metrics (names in :mod:`deepcoder_core.distill.metrics`) are summed over each optimizer
step's window, reduced over processes, and then update the running per-span divergence,
feed the weighting's ``observe`` and, at each logging step, ``metrics.jsonl``.

This module imports torch and transformers; the command imports it only when it trains.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer
from transformers.trainer_callback import PrinterCallback, ProgressCallback, TrainerCallback

from ..config import Config
from ..io import JsonlWriter
from ..protocols import SPAN_NAMES, TrainingState
from .checkpoint import PREFIX, save_state
from .data import positions, token_batch, topk_for_student
from .engine import distill_loss
from .errors import CacheError
from .metrics import SPAN_NUMBERS, span_key, span_means, span_totals
from .on_policy import RolloutStats
from .teacher_cache import TeacherLogitsCache
from .teacher_logits import WhiteBoxTeacher

EMA_DECAY = 0.9  # running per-span divergence: ema = 0.9 * ema + 0.1 * this step's mean


@dataclass
class Setup:
    """Everything compute_loss needs besides the model and the batch."""

    config: Config
    loss_fn: Any
    weighting: Any
    signal: str  # "online" | "aligned" (online, other tokenizer) | "topk" | "labels"
    teacher: WhiteBoxTeacher | None = None
    cache: TeacherLogitsCache | None = None  # topk: the teacher-logit cache the batches carry
    width: int | None = None  # logits columns both sides share (vocabulary padding differs)
    ce_fn: Any = None  # cross-entropy on the teacher's tokens when loss.ce_weight > 0
    moe: bool = False
    state: TrainingState = field(default_factory=TrainingState)
    rollouts: Any = None  # on_policy.RolloutSource when training.on_policy.fraction > 0
    on_policy_loss: Any = None  # the loss of rollout batches (on_policy.loss)


def lm_head_weight(model: Any, width: int | None = None) -> Any:
    """The output projection ``[V, H]`` of a (possibly PEFT- or DDP-wrapped) causal LM."""
    inner = getattr(model, "module", model)
    weight = inner.get_output_embeddings().weight
    return weight if width is None else weight[:width]


def expert_load(router_logits: Any, mask: Any, top_k: int, num_experts: int) -> Any:
    """Share of routed (token, slot) pairs per expert over real tokens, summed over layers ``[E]``.

    A balanced router gives 1/E each (Switch Transformer load, Fedus et al. 2021).
    """
    counts = torch.zeros(num_experts)
    flat = mask.reshape(-1).bool()
    for layer in router_logits:
        if layer is None:
            continue
        chosen = torch.topk(layer.detach().float().reshape(flat.shape[0], -1), top_k, dim=-1)[1]
        counts += torch.bincount(chosen[flat].reshape(-1).cpu(), minlength=num_experts)[
            :num_experts
        ].float()
    return counts / counts.sum().clamp_min(1)


def engine_loss(
    setup: Setup,
    *,
    student: Any,
    teacher: dict[str, Any],
    span_type: Any,
    weights: Any,
    normalizer: Any,
    loss_fn: Any = None,
) -> tuple[Any, dict[str, Any]]:
    """The one call into the loss engine; returns ``(loss, the engine's metrics)``."""
    section = setup.config.loss
    signal: dict[str, Any] = {}
    if "labels" in teacher:
        signal["labels"] = teacher["labels"]
    elif "topk" in teacher:
        signal["teacher_topk"] = teacher["topk"]
        signal["teacher_topk_tempered"] = teacher.get("tempered", False)
    else:
        signal["teacher_logits"] = teacher["hidden"]
    result = distill_loss(
        loss_fn or setup.loss_fn,
        span_type=span_type,
        student_logits=student,
        weights=weights,
        temperature=section.temperature,
        chunk_size=section.chunk_size,
        normalizer=normalizer,
        nonfinite=section.nonfinite,
        **signal,
    )
    return result.loss, result.metrics


class DistillTrainer(Trainer):
    """Trainer whose loss is the span-aware distillation engine (plus MoE router loss).

    ``metrics``: the ``metrics.jsonl`` file; ``progress``: draw the progress bar.
    """

    # compute_loss divides by the window's weighted token count itself.
    loss_is_scaled_for_ga = True

    def __init__(
        self, *args: Any, setup: Setup, metrics: Path, progress: bool = True, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.setup = setup
        # Per span number: span_totals' [divergence x tokens, top1_agreement x tokens, tokens].
        self.window = torch.zeros(len(SPAN_NAMES), 3, dtype=torch.float64)
        self.since_log = torch.zeros_like(self.window)
        # [tokens, router aux loss sum, micro-batches]
        self.window_extra = torch.zeros(3, dtype=torch.float64)
        self.since_log_extra = torch.zeros(3, dtype=torch.float64)
        self.window_experts: Any = None
        self.since_log_experts: Any = None
        self.last_log_time = time.perf_counter()
        self.logged_step = 0
        self.teacher_seconds = 0.0  # spent in the online teacher's forward since the last log
        self.expert_history: list[list[float]] = []
        self.rollout_stats = RolloutStats()  # on-policy steps since the last log
        self.remove_callback(PrinterCallback)  # the bar and metrics.jsonl show the logs
        self.add_callback(StepCallback(self))
        self.add_callback(MetricsCallback(metrics, self, progress))

    # -------------------------------------------------------------- normaliser
    def token_weights(self, inputs: dict[str, Any], keep: Any) -> Any:
        batch = token_batch(inputs, keep)
        weights = self.setup.weighting.weights(batch, self.setup.state).to(torch.float32)
        if "gate" in inputs:  # on-policy rollouts: the step gate (on_policy.gate)
            weights = weights * inputs["gate"][:, 1:][keep].to(weights.device)
        return weights

    def get_batch_samples(self, epoch_iterator: Any, num_batches: int, device: Any) -> Any:
        """The offline batches of this optimizer step, or on an on-policy step fresh rollouts
        of the current student instead (the offline ones are still drawn, so the data order of
        the other steps does not depend on the schedule)."""
        samples, items = super().get_batch_samples(epoch_iterator, num_batches, device)
        rollouts = self.setup.rollouts
        step = self.state.global_step + 1
        if rollouts is None or not rollouts.due(step) or not samples:
            return samples, items
        fresh, stats = rollouts.batches(step, len(samples))
        self.rollout_stats.add(stats)
        if not fresh:  # no rollout gave a row (all empty): this step trains offline
            return samples, items
        return fresh, self._get_num_items_in_batch(fresh, device)

    def _get_num_items_in_batch(self, batch_samples: list, device: Any) -> Any:
        """The window's weighted token count, summed over processes."""
        total = torch.zeros((), dtype=torch.float32)
        for inputs in batch_samples:
            total += self.token_weights(inputs, positions(inputs)).sum().cpu()
        total = total.to(device)
        if self.args.world_size > 1:
            total = self.accelerator.gather(total.reshape(1)).sum()
        return total

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        # A curriculum fixes the order in Examples; keep it.
        if getattr(self.train_dataset, "ordered", False):
            return torch.utils.data.SequentialSampler(self.train_dataset)  # type: ignore[arg-type]  # Examples is Sized
        return super()._get_train_sampler(train_dataset)

    # -------------------------------------------------------------- loss
    def compute_loss(
        self,
        model: Any,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        setup = self.setup
        keep = positions(inputs)
        # FSDP and ZeRO-3 shard the LM head outside forward: let the model project there.
        sharded = self.is_fsdp_enabled or self.is_deepspeed_enabled
        outputs = model(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            output_hidden_states=not sharded,
            use_cache=False,
            # Otherwise the engine projects the hidden states itself, chunk by chunk.
            logits_to_keep=0 if sharded else 1,
        )
        if sharded:
            student = outputs.logits[:, :-1][keep][:, : setup.width]
            vocab = student.shape[-1]
        else:
            hidden = outputs.hidden_states[-1][:, :-1][keep]
            student = (hidden, lm_head_weight(model, setup.width))
            vocab = student[1].shape[0]
        weights = self.token_weights(inputs, keep).to(inputs["input_ids"].device)
        normalizer = num_items_in_batch
        if normalizer is None:
            normalizer = weights.sum()
        span_type = inputs["span_type"][:, 1:][keep]
        labels = inputs["input_ids"][:, 1:][keep]
        on_policy = "on_policy" in inputs
        loss, metrics = engine_loss(
            setup,
            student=student,
            teacher=self.teacher_signal(inputs, keep, labels, weights, vocab),
            span_type=span_type,
            weights=weights,
            normalizer=normalizer,
            loss_fn=setup.on_policy_loss if on_policy else None,
        )
        # cross-entropy on the student's own samples would reinforce them: offline rows only
        if setup.ce_fn is not None and setup.config.loss.ce_weight > 0 and not on_policy:
            ce, _ = engine_loss(
                setup,
                student=student,
                teacher={"labels": labels},
                span_type=span_type,
                weights=weights,
                normalizer=normalizer,
                loss_fn=setup.ce_fn,
            )
            loss = loss + setup.config.loss.ce_weight * ce
        self.record(metrics, keep)
        if setup.moe and getattr(outputs, "aux_loss", None) is not None:
            coef = setup.config.student.router_aux_loss_coef
            share = self.current_gradient_accumulation_steps * max(1, self.args.world_size)
            loss = loss + coef * outputs.aux_loss / share
            self.window_extra[1] += float(outputs.aux_loss.detach())
            self.record_experts(outputs.router_logits, inputs["attention_mask"])
        # DDP averages gradients over processes; the window normaliser already spans them all.
        loss = loss * max(1, self.args.world_size)
        return (loss, outputs) if return_outputs else loss

    def teacher_signal(
        self, inputs: dict[str, Any], keep: Any, labels: Any, weights: Any, vocab: int
    ) -> dict[str, Any]:
        setup = self.setup
        on_policy = "on_policy" in inputs  # rollouts carry the teacher's scores of them
        if setup.signal == "labels" and not on_policy:
            return {"labels": labels}
        if setup.signal == "topk" or on_policy:
            missing = (weights > 0) & ~inputs["topk_stored"][keep].to(weights.device)
            if bool(missing.any()):
                span = int(inputs["span_type"][:, 1:][keep][missing.cpu()][0])
                if setup.cache is None or on_policy:
                    raise CacheError(
                        f"on-policy rollouts: {int(missing.sum())} position(s) of span type "
                        f"{SPAN_NAMES[span]} have weight > 0 but were not scored by the teacher"
                    )
                raise CacheError(
                    f"{setup.cache.path / 'manifest.json'}: {int(missing.sum())} position(s) "
                    f"of span type {SPAN_NAMES[span]} have weight > 0 but the cache stores "
                    f"{', '.join(setup.cache.manifest['spans'])} only; rebuild it with "
                    "teacher_logits.spans including that span type"
                )
            topk = topk_for_student(
                inputs["topk_indices"][keep],
                inputs["topk_logprobs"][keep],
                inputs["topk_tail"][keep],
                setup.width,
                vocab=vocab,
            )
            # sampled rows were drawn at loss.temperature already: the engine must not re-temper
            sampled = setup.cache is not None and setup.cache.format == "sampled" and not on_policy
            return {"topk": topk, "tempered": sampled}
        started = time.perf_counter()
        teacher = setup.teacher
        assert teacher is not None, "a hidden-state signal comes with its teacher"
        if setup.signal == "aligned":
            hidden = teacher.hidden_states(
                inputs["teacher_input_ids"], inputs["teacher_attention_mask"]
            )
            rows = torch.arange(keep.shape[0], device=keep.device)[:, None].expand_as(keep)
            hidden = hidden[rows[keep], inputs["teacher_pos"][keep]]
            weight = teacher.model.get_output_embeddings().weight
        else:
            hidden = teacher.hidden_states(inputs["input_ids"], inputs["attention_mask"])
            hidden = hidden[:, :-1][keep.to(hidden.device)]
            weight = teacher.model.get_output_embeddings().weight[: setup.width]
        device = inputs["input_ids"].device
        signal = {"hidden": (hidden.to(device), weight.to(device))}
        # The engine projects the teacher's hidden states lazily; that time counts as the student's.
        self.teacher_seconds += time.perf_counter() - started
        return signal

    # -------------------------------------------------------------- metrics
    def record(self, metrics: dict[str, Any], keep: Any) -> None:
        """Add one micro-batch's engine metrics to this optimizer step's window."""
        self.window += torch.tensor(span_totals(metrics["spans"]), dtype=torch.float64)
        self.window_extra[0] += float(keep.sum())
        self.window_extra[2] += 1

    def record_experts(self, router_logits: Any, mask: Any) -> None:
        config: Any = getattr(self.model, "config", None)
        experts = getattr(config, "num_experts", None) or config.num_local_experts
        load = expert_load(router_logits, mask, config.num_experts_per_tok, experts)
        load = load.double()
        self.window_experts = load if self.window_experts is None else self.window_experts + load

    def end_window(self) -> None:
        """Reduce this optimizer step's metrics over processes; update the running state."""
        window, extra = self.window, self.window_extra
        experts = self.window_experts
        if self.args.world_size > 1:
            packed = [window.reshape(-1), extra]
            if experts is not None:
                packed.append(experts)
            flat = torch.cat(packed).to(self.args.device)
            flat = self.accelerator.reduce(flat, reduction="sum").cpu()
            window = flat[: window.numel()].reshape(window.shape)
            extra = flat[window.numel() : window.numel() + 3]
            if experts is not None:
                experts = flat[window.numel() + 3 :]
        state = self.setup.state
        spans = span_means(window.tolist())
        for name, values in spans.items():
            span, mean = SPAN_NUMBERS[name], values["divergence"]
            old = state.span_divergence_ema.get(span)
            ema = mean if old is None else EMA_DECAY * old + (1 - EMA_DECAY) * mean
            state.span_divergence_ema[span] = ema
        observe = getattr(self.setup.weighting, "observe", None)
        if observe is not None:
            observe({"spans": spans}, state)
        state.step = self.state.global_step
        self.since_log += window
        self.since_log_extra += extra
        if experts is not None:
            self.since_log_experts = (
                experts if self.since_log_experts is None else self.since_log_experts + experts
            )
        self.window.zero_()
        self.window_extra.zero_()
        self.window_experts = None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            now = time.perf_counter()
            elapsed = max(now - self.last_log_time, 1e-9)
            self.last_log_time = now
            for name, values in span_means(self.since_log.tolist()).items():
                logs[span_key("divergence", name)] = round(values["divergence"], 6)
                logs[span_key("top1_agreement", name)] = round(values["top1_agreement"], 4)
                logs[span_key("tokens", name)] = values["tokens"]
            logs["tokens_per_second"] = round(float(self.since_log_extra[0]) / elapsed, 1)
            if self.setup.teacher is not None:
                logs["teacher_share"] = round(self.teacher_seconds / elapsed, 4)
                self.teacher_seconds = 0.0
            logs["step_seconds"] = round(
                elapsed / max(1, self.state.global_step - self.logged_step), 4
            )
            rollout = self.rollout_stats.logs()
            if rollout:
                spent = rollout["time/rollout"] + rollout["time/scoring"]
                rollout["time/update"] = round(max(0.0, elapsed - spent), 3)
                logs.update(rollout)
                self.rollout_stats = RolloutStats()
            if self.since_log_extra[1] > 0:
                logs["moe/aux_loss"] = round(
                    float(self.since_log_extra[1] / self.since_log_extra[2]), 6
                )
            if self.since_log_experts is not None:
                load = self.since_log_experts / self.since_log_experts.sum()
                experts = load.numel()
                logs["moe/expert_load_max"] = round(float(load.max()) * experts, 4)
                logs["moe/expert_load_min"] = round(float(load.min()) * experts, 4)
                self.expert_history.append([round(float(x), 5) for x in load])
            self.since_log.zero_()
            self.since_log_extra.zero_()
            self.since_log_experts = None
            self.logged_step = self.state.global_step
        super().log(logs, start_time)


class StepCallback(TrainerCallback):
    """Closes each optimizer step's metric window; keeps the running state in checkpoints."""

    def __init__(self, trainer: DistillTrainer) -> None:
        self.trainer = trainer

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.trainer.end_window()

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            setup = self.trainer.setup
            folder = Path(args.output_dir) / f"{PREFIX}{state.global_step}"
            save_state(folder, setup.state, setup.weighting, setup.loss_fn)


class MetricsCallback(ProgressCallback):
    """Progress bar with loss, per-span divergences and tokens/s; one JSONL line per logged step."""

    def __init__(self, path: Path, trainer: DistillTrainer, progress: bool) -> None:
        super().__init__()
        self.path = path
        self.trainer = trainer
        self.progress = progress

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.progress:
            super().on_train_begin(args, state, control, **kwargs)
            if self.training_bar is not None:
                self.training_bar.set_description("train")
                self.training_bar.update(state.global_step)
        self.current_step = state.global_step

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.training_bar is not None:
            super().on_step_end(args, state, control, **kwargs)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.training_bar is not None:
            super().on_train_end(args, state, control, **kwargs)

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
        if not state.is_world_process_zero or not logs or "loss" not in logs:
            return
        record = {"step": state.global_step, **logs}
        if self.trainer.expert_history and "moe/expert_load_max" in logs:
            record["expert_load"] = self.trainer.expert_history[-1]
        with JsonlWriter(self.path) as writer:
            writer.write(record)
        if self.training_bar is not None:
            postfix = {"loss": f"{logs['loss']:.4g}"}
            for span in SPAN_NAMES.values():
                key = span_key("divergence", span)
                if key in logs:
                    postfix[span[:6]] = f"{logs[key]:.3g}"
            postfix["tok/s"] = f"{logs['tokens_per_second']:.0f}"
            self.training_bar.set_postfix(postfix, refresh=False)
