"""``deepcoder train``: span-aware distillation on top of ``transformers.Trainer``.

The Trainer owns everything that is not ours -- gradient accumulation, bf16, clipping, LR
schedules, checkpoints and resume, TensorBoard, ``accelerate launch`` (DDP / FSDP /
DeepSpeed). Ours is one method, :meth:`DistillTrainer.compute_loss`: the student's final
hidden states go to the loss engine together with the teacher signal (online teacher,
top-k cache or the teacher's tokens) and per-token span weights.

Normalisation: for a gradient-accumulation window W over all processes, the loss is

    L = sum_{t in W} w_t * d_t / sum_{t in W} w_t

(``w_t`` span weight, ``d_t`` per-token divergence), so the gradient does not depend on how
W is split into micro-batches or processes (the gradient-accumulation fix of transformers
4.46, applied to weighted token counts). Each micro-batch passes the window's weighted
token count as the engine's ``normalizer``.

What a run leaves in ``out/``: ``config.yaml`` (snapshot), ``metrics.jsonl`` (one line per
logged step: loss, per-span losses and top-1 agreement, tokens/s, learning rate, grad
norm, MoE expert load), ``plots/*.png``, ``tensorboard/``, ``checkpoints/``, ``student/``
(the model, or only the LoRA adapters) and ``summary.json``.

Each checkpoint also holds ``deepcoder_state.json``: the running per-span losses and the
state of the loss and the weighting (:func:`component_state`), as JSON, so resuming never
runs code from a checkpoint.
"""

from __future__ import annotations

import functools
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from ..config import Config
from ..io import atomic_write_json, atomic_write_text
from ..protocols import SpanType, TrainingState
from .teacher_logits import (
    CacheError,
    ScoringTeacher,
    TeacherLogitsCache,
    WhiteBoxTeacher,
    load_processed,
    load_teacher,
    vocab_hash,
)

SPAN_NAMES = {int(t): t.name.lower() for t in SpanType}
DIFFICULTY = {"easy": 0, "medium": 1, "hard": 2}
STATE_FILE = "deepcoder_state.json"  # running span losses; the loss's and weighting's state
EMA_DECAY = 0.9  # running per-span loss: ema = 0.9 * ema + 0.1 * this step's mean


class TrainError(ValueError):
    """A training setup problem the user can fix (signal, vocabulary, paths)."""


# ---------------------------------------------------------------------------- checkpoint state


class _NotData(Exception):
    """A value a checkpoint cannot hold as data (a function, a model, an open file)."""


def encode_state(value: Any) -> Any:
    """Plain data and tensors as JSON, keeping what JSON would lose (int keys, tuples, dtypes)."""
    import torch

    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list):
        return [encode_state(v) for v in value]
    if isinstance(value, tuple):
        return {"tuple": [encode_state(v) for v in value]}
    if isinstance(value, dict):
        return {"dict": [[encode_state(k), encode_state(v)] for k, v in value.items()]}
    if isinstance(value, torch.Tensor):
        return {
            "tensor": value.detach().cpu().tolist(),
            "dtype": str(value.dtype).removeprefix("torch."),
            "shape": list(value.shape),
        }
    raise _NotData(type(value).__name__)


def decode_state(data: Any) -> Any:
    """The inverse of :func:`encode_state`; builds data and tensors only."""
    import torch

    if isinstance(data, list):
        return [decode_state(v) for v in data]
    if not isinstance(data, dict):
        return data
    if "tuple" in data:
        return tuple(decode_state(v) for v in data["tuple"])
    if "dict" in data:
        return {decode_state(k): decode_state(v) for k, v in data["dict"]}
    dtype = getattr(torch, str(data.get("dtype")), None)
    if not isinstance(dtype, torch.dtype):
        raise TrainError(f"checkpoint state: {data.get('dtype')!r} is not a torch dtype")
    return torch.tensor(data["tensor"], dtype=dtype).reshape(data["shape"])


def component_state(component: Any) -> dict[str, Any]:
    """What a loss or a weighting carries from step to step, encoded for a checkpoint.

    A component with ``state_dict()`` and ``load_state_dict(state)`` gives its own (numbers,
    strings, lists, dicts, tensors). Otherwise its attributes that are such data are kept;
    the others (functions, nested components) come from its options again on resume.
    """
    if callable(getattr(component, "state_dict", None)) and callable(
        getattr(component, "load_state_dict", None)
    ):
        try:
            return {"state_dict": encode_state(component.state_dict())}
        except _NotData as exc:
            raise TrainError(
                f"{type(component).__name__}.state_dict() holds a {exc}, which a checkpoint "
                "cannot store; return numbers, strings, lists, dicts and tensors only"
            ) from None
    attributes = {}
    for name, value in getattr(component, "__dict__", {}).items():
        try:
            attributes[name] = encode_state(value)
        except _NotData:
            continue  # rebuilt from the options
    return {"attributes": attributes}


def restore_component(component: Any, saved: dict[str, Any]) -> None:
    """Put a state from :func:`component_state` back into a freshly built component."""
    if "state_dict" in saved:
        component.load_state_dict(decode_state(saved["state_dict"]))
        return
    for name, value in saved.get("attributes", {}).items():
        setattr(component, name, decode_state(value))


# ---------------------------------------------------------------------------- data


class Examples:
    """Map-style dataset over the processed rows, in training order, with each row's index."""

    FIELDS = ("input_ids", "attention_mask", "span_type", "span_confidence")

    def __init__(self, dataset: Any, order: list[int] | None = None) -> None:
        self.dataset = dataset
        self.order = list(range(len(dataset))) if order is None else list(order)
        self.ordered = order is not None  # a weighting's curriculum: no shuffling

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int) -> dict[str, Any]:
        index = self.order[i]
        row = self.dataset[index]
        out = {key: row[key] for key in self.FIELDS}
        out["index"] = index
        out["difficulty"] = DIFFICULTY.get(str(row.get("difficulty", "medium")).lower(), 1)
        out["success"] = int(bool(row.get("success", True)))
        return out


@dataclass
class Collator:
    """Right-pads rows into tensors; attaches the cached teacher top-k of each row when given."""

    pad_id: int
    cache: TeacherLogitsCache | None = None
    aligner: TokenAligner | None = None

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        length = max(len(r["input_ids"]) for r in rows)
        batch = len(rows)
        out = {
            "input_ids": torch.full((batch, length), self.pad_id, dtype=torch.long),
            "attention_mask": torch.zeros(batch, length, dtype=torch.long),
            "span_type": torch.zeros(batch, length, dtype=torch.long),
            "span_confidence": torch.zeros(batch, length, dtype=torch.float32),
            "difficulty": torch.tensor([r["difficulty"] for r in rows]),
            "success": torch.tensor([r["success"] for r in rows]),
            "index": torch.tensor([r["index"] for r in rows]),
        }
        for i, row in enumerate(rows):
            n = len(row["input_ids"])
            out["input_ids"][i, :n] = torch.tensor(row["input_ids"])
            out["attention_mask"][i, :n] = torch.tensor(row["attention_mask"])
            out["span_type"][i, :n] = torch.tensor(row["span_type"])
            out["span_confidence"][i, :n] = torch.tensor(row["span_confidence"])
        if self.cache is not None:
            k = self.cache.top_k
            out["topk_indices"] = torch.zeros(batch, length - 1, k, dtype=torch.long)
            out["topk_logprobs"] = torch.zeros(batch, length - 1, k)
            out["topk_tail"] = torch.zeros(batch, length - 1)
            for i, row in enumerate(rows):
                indices, logprobs, tail = self.cache.example(row["index"])
                n = indices.shape[0]
                if n != len(row["input_ids"]) - 1:
                    raise CacheError(
                        f"{self.cache.path}: example {row['index']} has {n} cached positions, "
                        f"the dataset row {len(row['input_ids'])} tokens; the cache is stale"
                    )
                out["topk_indices"][i, :n] = indices.long()
                out["topk_logprobs"][i, :n] = logprobs
                out["topk_tail"][i, :n] = tail
        if self.aligner is not None:
            out.update(self.aligner(rows, length))
        return out


class TokenAligner:
    """Pairs student and teacher positions when the two tokenizers differ.

    A student position ``i`` (predicting token ``i+1``) is paired with the teacher position
    ``j`` whose next token starts at the same character of the decoded text; positions
    without such a boundary are left out. Used with vocabulary-agnostic losses, which
    compare the two next-token distributions without a shared vocabulary (the Universal
    Logit Distillation setting, Boizard et al. 2024, "Towards Cross-Tokenizer Distillation").
    """

    def __init__(self, student_tokenizer: Any, teacher_tokenizer: Any) -> None:
        self.student = student_tokenizer
        self.teacher = teacher_tokenizer
        self.teacher_pad = 0

    def starts(self, ids: list[int]) -> list[int] | None:
        """Character offset where each student token starts, or None if it does not round-trip."""
        text = self.student.decode(ids, skip_special_tokens=False)
        encoded = self.student(text, add_special_tokens=False, return_offsets_mapping=True)
        if encoded["input_ids"] != list(ids):
            return None
        return [start for start, _ in encoded["offset_mapping"]]

    def __call__(self, rows: list[dict[str, Any]], length: int) -> dict[str, Any]:
        import torch

        texts, student_starts = [], []
        for row in rows:
            ids = list(row["input_ids"])
            student_starts.append(self.starts(ids))
            texts.append(self.student.decode(ids, skip_special_tokens=False))
        encoded = [
            self.teacher(t, add_special_tokens=False, return_offsets_mapping=True) for t in texts
        ]
        teacher_length = max(1, *(len(e["input_ids"]) for e in encoded))
        batch = len(rows)
        teacher_ids = torch.full((batch, teacher_length), self.teacher_pad, dtype=torch.long)
        teacher_mask = torch.zeros(batch, teacher_length, dtype=torch.long)
        aligned = torch.zeros(batch, length - 1, dtype=torch.bool)
        teacher_pos = torch.zeros(batch, length - 1, dtype=torch.long)
        for b, (enc, starts) in enumerate(zip(encoded, student_starts, strict=True)):
            n = len(enc["input_ids"])
            teacher_ids[b, :n] = torch.tensor(enc["input_ids"], dtype=torch.long)
            teacher_mask[b, :n] = 1
            if starts is None:
                continue  # the row does not decode back to its own tokens: no trusted offsets
            token_at = {start: u for u, (start, _) in enumerate(enc["offset_mapping"]) if u > 0}
            for i in range(len(starts) - 1):
                u = token_at.get(starts[i + 1])
                if u is not None:
                    aligned[b, i] = True
                    teacher_pos[b, i] = u - 1
        return {
            "teacher_input_ids": teacher_ids,
            "teacher_attention_mask": teacher_mask,
            "aligned": aligned,
            "teacher_pos": teacher_pos,
        }


def positions(inputs: dict[str, Any]) -> Any:
    """``[B, L-1]`` bool: position ``i`` predicts a real token ``i+1`` (and has a teacher twin)."""
    mask = inputs["attention_mask"].bool()
    keep = mask[:, 1:] & mask[:, :-1]
    return keep & inputs["aligned"] if "aligned" in inputs else keep


def token_batch(inputs: dict[str, Any], keep: Any) -> dict[str, Any]:
    """Per-token tensors of the predicted tokens (what a weighting strategy sees), flattened."""
    length = keep.shape[1]
    per_example = {
        name: inputs[name][:, None].expand(-1, length)[keep] for name in ("difficulty", "success")
    }
    return {
        "span_type": inputs["span_type"][:, 1:][keep],
        "span_confidence": inputs["span_confidence"][:, 1:][keep],
        **per_example,
    }


# ---------------------------------------------------------------------------- signal


@dataclass
class Setup:
    """Everything compute_loss needs besides the model and the batch."""

    config: Config
    loss_fn: Any
    weighting: Any
    signal: str  # "online" | "aligned" (online, other tokenizer) | "topk" | "labels"
    teacher: WhiteBoxTeacher | None = None
    width: int | None = None  # logits columns both sides share (vocabulary padding differs)
    ce_fn: Any = None  # cross-entropy on the teacher's tokens when loss.ce_weight > 0
    moe: bool = False
    state: TrainingState = field(default_factory=TrainingState)


def resolve_signal(
    config: Config,
    loss_fn: Any,
    *,
    teacher: Any,
    teacher_logits: str | Path | None,
    dataset: Any,
    tokenizer: Any,
    student_width: int,
) -> tuple[str, WhiteBoxTeacher | None, TeacherLogitsCache | None, int]:
    """Pick the teacher signal and check it fits the loss and the student's vocabulary.

    Cache given: top-k. Else, a loss that needs a distribution (or an explicit teacher):
    the online white-box teacher. Else the teacher's tokens, which the dataset already holds.
    """
    from .engine import check_signal

    wants = set(getattr(loss_fn, "signals", ()))
    name = getattr(loss_fn, "name", config.loss.name)
    if teacher_logits is not None:
        cache = TeacherLogitsCache(teacher_logits)
        cache.check(dataset)
        cache.check_vocab(tokenizer, student_width)
        check_signal(loss_fn, {"distribution", "labels"})
        if "distribution" not in wants:
            return "labels", None, None, student_width
        return "topk", None, cache, student_width
    if teacher is None and "distribution" not in wants:
        check_signal(loss_fn, {"labels"})
        return "labels", None, None, student_width
    resolved = load_teacher(config, teacher)
    if isinstance(resolved, ScoringTeacher):
        raise TrainError(
            f"teacher '{resolved.identity['name']}' only scores remotely; write a top-k cache "
            "first with `deepcoder teacher-logits` and train with --teacher-logits DIR"
        )
    check_signal(loss_fn, {"distribution", "labels"})
    if "distribution" not in wants:
        return "labels", None, None, student_width
    if vocab_hash(resolved.tokenizer) != vocab_hash(tokenizer):
        if not getattr(loss_fn, "vocab_agnostic", False):
            raise TrainError(
                f"the teacher's tokenizer ({resolved.identity['model']}) differs from the "
                f"student's, and loss '{name}' needs one vocabulary; use a vocabulary-agnostic "
                "loss or a student with the teacher's tokenizer"
            )
        warnings.warn(
            f"the teacher's tokenizer differs from the student's: loss '{name}' compares the "
            "two vocabularies' distributions at positions where both tokenizations share a "
            "token boundary; other positions get no loss",
            stacklevel=2,
        )
        return "aligned", resolved, None, student_width
    width = min(resolved.vocab_size, student_width)
    if resolved.vocab_size != student_width:
        warnings.warn(
            f"teacher logits have {resolved.vocab_size} columns, the student's {student_width} "
            f"(vocabulary padding, same tokenizer): both are cut to {width}",
            stacklevel=2,
        )
    return "online", resolved, None, width


# ---------------------------------------------------------------------------- trainer


def lm_head_weight(model: Any, width: int | None = None) -> Any:
    """The output projection ``[V, H]`` of a (possibly PEFT- or DDP-wrapped) causal LM."""
    inner = getattr(model, "module", model)
    weight = inner.get_output_embeddings().weight
    return weight if width is None else weight[:width]


def expert_load(router_logits: Any, mask: Any, top_k: int, num_experts: int) -> Any:
    """Share of routed (token, slot) pairs per expert over real tokens, summed over layers ``[E]``.

    A balanced router gives 1/E each (Switch Transformer load, Fedus et al. 2021).
    """
    import torch

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


@functools.cache
def _trainer_classes() -> tuple[type, type, type]:
    """The Trainer subclass and callbacks, built on first use (transformers is imported here)."""
    import torch
    from transformers import Trainer, TrainerCallback
    from transformers.trainer_callback import ProgressCallback

    class DistillTrainer(Trainer):
        """Trainer whose loss is the span-aware distillation engine (plus MoE router loss)."""

        # compute_loss divides by the window's weighted token count itself.
        loss_is_scaled_for_ga = True

        def __init__(self, *args: Any, setup: Setup, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.setup = setup
            # Per span type: [sum of divergence * tokens, tokens, sum of top-1 agreement * tokens].
            self.window = torch.zeros(len(SPAN_NAMES), 3, dtype=torch.float64)
            self.since_log = torch.zeros_like(self.window)
            # [tokens, router aux loss sum, micro-batches]
            self.window_extra = torch.zeros(3, dtype=torch.float64)
            self.since_log_extra = torch.zeros(3, dtype=torch.float64)
            self.window_experts: Any = None
            self.since_log_experts: Any = None
            self.last_log_time = time.perf_counter()
            self.teacher_seconds = 0.0  # spent in the online teacher's forward since the last log
            self.expert_history: list[list[float]] = []

        # -------------------------------------------------------------- normaliser
        def token_weights(self, inputs: dict[str, Any], keep: Any) -> Any:
            batch = token_batch(inputs, keep)
            weights = self.setup.weighting.weights(batch, self.setup.state)
            return weights.to(torch.float32)

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
                return torch.utils.data.SequentialSampler(self.train_dataset)
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
            else:
                hidden = outputs.hidden_states[-1][:, :-1][keep]
                student = (hidden, lm_head_weight(model, setup.width))
            weights = self.token_weights(inputs, keep).to(inputs["input_ids"].device)
            normalizer = num_items_in_batch
            if normalizer is None:
                normalizer = weights.sum()
            span_type = inputs["span_type"][:, 1:][keep]
            labels = inputs["input_ids"][:, 1:][keep]
            loss, metrics = engine_loss(
                setup,
                student=student,
                teacher=self.teacher_signal(inputs, keep, labels),
                span_type=span_type,
                weights=weights,
                normalizer=normalizer,
            )
            if setup.ce_fn is not None and setup.config.loss.ce_weight > 0:
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

        def teacher_signal(self, inputs: dict[str, Any], keep: Any, labels: Any) -> dict[str, Any]:
            setup = self.setup
            if setup.signal == "labels":
                return {"labels": labels}
            if setup.signal == "topk":
                return {
                    "topk": topk_for_student(
                        inputs["topk_indices"][keep],
                        inputs["topk_logprobs"][keep],
                        inputs["topk_tail"][keep],
                        setup.width,
                    )
                }
            started = time.perf_counter()
            teacher = setup.teacher
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
        def record(self, metrics: dict[int, dict[str, float]], keep: Any) -> None:
            for span, values in metrics.items():
                count = float(values.get("tokens", 0))
                self.window[span, 0] += float(values.get("loss", 0.0)) * count
                self.window[span, 1] += count
                self.window[span, 2] += float(values.get("top1", 0.0)) * count
            self.window_extra[0] += float(keep.sum())
            self.window_extra[2] += 1

        def record_experts(self, router_logits: Any, mask: Any) -> None:
            config = getattr(self.model, "config", None)
            experts = getattr(config, "num_experts", None) or config.num_local_experts
            load = expert_load(router_logits, mask, config.num_experts_per_tok, experts)
            load = load.double()
            self.window_experts = (
                load if self.window_experts is None else self.window_experts + load
            )

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
            for span in SPAN_NAMES:
                if window[span, 1] > 0:
                    mean = float(window[span, 0] / window[span, 1])
                    old = state.span_loss_ema.get(span)
                    state.span_loss_ema[span] = (
                        mean if old is None else EMA_DECAY * old + (1 - EMA_DECAY) * mean
                    )
            observe = getattr(self.setup.weighting, "observe", None)
            if observe is not None:
                observe(engine_metrics(self.metrics_of(window)), state)
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

        @staticmethod
        def metrics_of(window: Any) -> dict[int, dict[str, float]]:
            out = {}
            for span in SPAN_NAMES:
                count = float(window[span, 1])
                if count > 0:
                    out[span] = {
                        "loss": float(window[span, 0]) / count,
                        "tokens": count,
                        "top1": float(window[span, 2]) / count,
                    }
            return out

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            if "loss" in logs:
                now = time.perf_counter()
                elapsed = max(now - self.last_log_time, 1e-9)
                self.last_log_time = now
                for span, values in self.metrics_of(self.since_log).items():
                    name = SPAN_NAMES[span]
                    logs[f"loss/{name}"] = round(values["loss"], 6)
                    logs[f"top1/{name}"] = round(values["top1"], 4)
                    logs[f"tokens/{name}"] = int(values["tokens"])
                logs["tokens_per_second"] = round(float(self.since_log_extra[0]) / elapsed, 1)
                if self.setup.teacher is not None:
                    logs["teacher_share"] = round(self.teacher_seconds / elapsed, 4)
                    self.teacher_seconds = 0.0
                logs["step_seconds"] = round(
                    elapsed / max(1, self.state.global_step - self.logged_step), 4
                )
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

        logged_step = 0

    class StepCallback(TrainerCallback):
        """Closes each optimizer step's metric window; keeps the running state in checkpoints."""

        def __init__(self) -> None:
            self.trainer: Any = None

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.trainer.end_window()

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.is_world_process_zero:
                folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                setup = self.trainer.setup
                saved = {
                    "span_loss_ema": {str(k): v for k, v in setup.state.span_loss_ema.items()},
                    "weighting": component_state(setup.weighting),
                    "loss": component_state(setup.loss_fn),
                }
                atomic_write_json(folder / STATE_FILE, saved)

    class MetricsCallback(ProgressCallback):
        """Progress bar with loss, per-span losses and tokens/s; one JSONL line per logged step."""

        def __init__(self, path: Path, trainer_ref: list, progress: bool) -> None:
            super().__init__()
            self.path = path
            self.trainer_ref = trainer_ref
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
            from ..io import JsonlWriter

            record = {"step": state.global_step, **logs}
            trainer = self.trainer_ref[0]
            if trainer.expert_history and "moe/expert_load_max" in logs:
                record["expert_load"] = trainer.expert_history[-1]
            with JsonlWriter(self.path) as writer:
                writer.write(record)
            if self.training_bar is not None:
                postfix = {"loss": f"{logs['loss']:.4g}"}
                for span in SPAN_NAMES.values():
                    if f"loss/{span}" in logs:
                        postfix[span[:6]] = f"{logs[f'loss/{span}']:.3g}"
                postfix["tok/s"] = f"{logs['tokens_per_second']:.0f}"
                self.training_bar.set_postfix(postfix, refresh=False)

    return DistillTrainer, StepCallback, MetricsCallback


def topk_for_student(indices: Any, logprobs: Any, tail: Any, width: int | None) -> Any:
    """A :class:`TopK` whose ids fit the student: ids past its vocabulary (padding) join the tail."""
    from ..protocols import TopK

    if width is not None and bool((indices >= width).any()):
        outside = indices >= width
        tail = tail + (logprobs.exp() * outside).sum(-1)
        logprobs = logprobs.masked_fill(outside, -1e4)  # exp() == 0: no mass, no NaN
        indices = indices.masked_fill(outside, 0)
    return TopK(indices=indices, logprobs=logprobs, tail_mass=tail)


def engine_loss(
    setup: Setup,
    *,
    student: tuple[Any, Any],
    teacher: dict[str, Any],
    span_type: Any,
    weights: Any,
    normalizer: Any,
    loss_fn: Any = None,
) -> tuple[Any, dict[int, dict[str, float]]]:
    """The one call into the loss engine; returns ``(loss, {span: {loss, tokens, top1}})``."""
    from .engine import distill_loss

    section = setup.config.loss
    signal: dict[str, Any] = {}
    if "labels" in teacher:
        signal["labels"] = teacher["labels"]
    elif "topk" in teacher:
        signal["teacher_topk"] = teacher["topk"]
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
    return result.loss, span_metrics(result.metrics)


def engine_metrics(spans: dict[int, dict[str, float]]) -> dict[str, Any]:
    """Window metrics back in the engine's shape, for a weighting's ``observe``."""
    return {
        "spans": {
            SPAN_NAMES[span]: {
                "divergence": v["loss"],
                "tokens": int(v["tokens"]),
                "top1_agreement": v["top1"],
            }
            for span, v in spans.items()
        }
    }


def span_metrics(metrics: Any) -> dict[int, dict[str, float]]:
    """The engine's per-span metrics as ``{span number: {loss, tokens, top1}}``."""
    out: dict[int, dict[str, float]] = {}
    by_name = {name: number for number, name in SPAN_NAMES.items()}
    for key, values in (metrics or {}).get("spans", metrics or {}).items():
        span = by_name.get(key, key) if isinstance(key, str) else int(key)
        if span not in SPAN_NAMES or not isinstance(values, dict):
            continue
        out[span] = {
            "loss": float(values.get("loss", values.get("divergence", 0.0))),
            "tokens": float(values.get("tokens", values.get("count", 0))),
            "top1": float(values.get("top1", values.get("top1_agreement", 0.0))),
        }
    return out


# ---------------------------------------------------------------------------- train


def _training_args(config: Config, out: Path, report_to: list[str]) -> Any:
    import torch
    from transformers import TrainingArguments

    t = config.training
    return TrainingArguments(
        # Without a GPU, processes started by `accelerate launch` / torchrun must use gloo.
        use_cpu=not torch.accelerator.is_available(),
        output_dir=str(out / "checkpoints"),
        max_steps=t.max_steps,
        per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        warmup_steps=t.warmup_ratio,
        lr_scheduler_type=t.lr_scheduler,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        bf16=t.bf16,
        seed=t.seed,
        data_seed=t.seed,
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        logging_steps=t.logging_steps,
        report_to=report_to,
        remove_unused_columns=False,
        disable_tqdm=True,  # MetricsCallback draws the bar, with per-span losses
        dataloader_pin_memory=False,
        log_level="warning",
    )


def latest_checkpoint(out: Path) -> Path | None:
    # trainer_state.json is written last: a folder without it is a save cut short by a kill.
    folders = [
        p
        for p in (out / "checkpoints").glob("checkpoint-*")
        if p.name[11:].isdigit() and (p / "trainer_state.json").exists()
    ]
    return max(folders, key=lambda p: int(p.name[11:]), default=None)


def _trim_metrics(path: Path, step: int) -> None:
    """On resume, drop metric lines past the checkpoint: they are about to be recomputed."""
    from ..io import read_jsonl

    if not path.exists():
        return
    kept = [json.dumps(r) for _, r in read_jsonl(path, errors=[]) if r.get("step", 0) <= step]
    atomic_write_text(path, "".join(line + "\n" for line in kept))


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
    """Distil into the student; returns the summary (also ``out/summary.json``)."""
    import torch
    from accelerate import PartialState

    from ..config import snapshot
    from ..plugins import build
    from .plots import plot_metrics
    from .student import apply_lora, build_student, is_moe, save_lora_base

    out = Path(out)
    started = time.perf_counter()
    if student is not None:
        config.student.path = student
    main = PartialState().is_main_process
    dataset = load_processed(data)
    loss_fn = build("loss", config.loss.name, **config.loss.options)
    weighting = build("weighting", config.weighting.name, **config.weighting.options)
    model, tokenizer = build_student(config)
    width = lm_head_weight(model).shape[0]
    signal, white_box, cache, width = resolve_signal(
        config,
        loss_fn,
        teacher=teacher,
        teacher_logits=teacher_logits,
        dataset=dataset,
        tokenizer=tokenizer,
        student_width=width,
    )
    checkpoint = latest_checkpoint(out) if resume else None
    if main:
        if checkpoint is None and (out / "metrics.jsonl").exists():
            (out / "metrics.jsonl").unlink()  # a fresh run: old curves would mix in
        elif checkpoint is not None:
            _trim_metrics(out / "metrics.jsonl", int(checkpoint.name[11:]))
        snapshot(config, out / "config.yaml")
    lora = config.student.lora.enabled
    if lora:
        base = save_lora_base(model, tokenizer, config, out) if main else None
        model = apply_lora(model, config)
        if base is not None:
            model.peft_config["default"].base_model_name_or_path = base
    ce_fn = build("loss", "ce") if config.loss.ce_weight > 0 else None
    for component in (loss_fn, weighting):
        component_state(component)  # a state no checkpoint can hold fails now, not at a save
    state = TrainingState(total_steps=config.training.max_steps)
    if checkpoint is not None and (checkpoint / STATE_FILE).exists():
        saved = json.loads((checkpoint / STATE_FILE).read_text())
        state.span_loss_ema = {int(k): v for k, v in saved["span_loss_ema"].items()}
        # Checkpoints from before the loss and weighting were saved here have only the EMA.
        for key, component in (("weighting", weighting), ("loss", loss_fn)):
            if key in saved:
                restore_component(component, saved[key])
    setup = Setup(
        config=config,
        loss_fn=loss_fn,
        weighting=weighting,
        signal=signal,
        teacher=white_box,
        width=width if width != lm_head_weight(model).shape[0] else None,
        ce_fn=ce_fn,
        moe=is_moe(model),
        state=state,
    )
    aligner = TokenAligner(tokenizer, white_box.tokenizer) if signal == "aligned" else None
    order = None
    if hasattr(weighting, "order"):
        columns = ("span_type", "difficulty", "category", "success", "teacher_entropy")
        meta = dataset.select_columns([c for c in columns if c in dataset.column_names]).to_list()
        order = list(weighting.order(meta))
    examples = Examples(dataset, order)
    report_to = list(config.training.report_to)
    args = _training_args(config, out, [r for r in report_to if r != "tensorboard"])
    trainer_cls, step_cb, metrics_cb = _trainer_classes()
    trainer_ref: list[Any] = []
    callbacks: list[Any] = [step_cb(), metrics_cb(out / "metrics.jsonl", trainer_ref, progress)]
    if "tensorboard" in report_to and main:
        from torch.utils.tensorboard import SummaryWriter
        from transformers.integrations import TensorBoardCallback

        callbacks.append(TensorBoardCallback(SummaryWriter(str(out / "tensorboard"))))
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=examples,
        # Padding is masked out; id 0 exists in every vocabulary (the tokenizer's pad may not).
        data_collator=Collator(0, cache, aligner),
        processing_class=tokenizer,
        callbacks=callbacks,
        setup=setup,
    )
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # the bar and metrics.jsonl show the logs
    trainer_ref.append(trainer)
    callbacks[0].trainer = trainer
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    summary: dict[str, Any] = {}
    if main:
        final = out / "student"
        trainer.save_model(str(final))
        if lora:
            tokenizer.save_pretrained(final)
        plots = plot_metrics(out / "metrics.jsonl", out / "plots")
        summary = summarize(out, result, signal, setup, model, plots, time.perf_counter() - started)
        atomic_write_json(out / "summary.json", summary)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
    return summary


def summarize(
    out: Path,
    result: Any,
    signal: str,
    setup: Setup,
    model: Any,
    plots: list[Path],
    seconds: float,
) -> dict[str, Any]:
    """Final numbers: losses per span at the first and last logged step, speed, where things are."""
    from ..io import read_jsonl

    records = [r for _, r in read_jsonl(out / "metrics.jsonl", errors=[])]
    spans: dict[str, dict[str, float]] = {}
    for name in SPAN_NAMES.values():
        values = [r[f"loss/{name}"] for r in records if f"loss/{name}" in r]
        if values:
            spans[name] = {"first": values[0], "last": values[-1]}
    speeds = [r["tokens_per_second"] for r in records if "tokens_per_second" in r]
    steps = [r["step_seconds"] for r in records if "step_seconds" in r]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "schema": 1,
        "steps": result.global_step,
        "loss": {
            "first": records[0]["loss"] if records else None,
            "last": records[-1]["loss"] if records else None,
        },
        "span_loss": spans,
        "signal": signal,
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
@click.option("--resume", is_flag=True, help="Continue from the last checkpoint in --out.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="YAML config.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a key.")
def train_command(
    data: str,
    out: str,
    student: str | None,
    teacher: str | None,
    teacher_logits: str | None,
    loss: str | None,
    weighting: str | None,
    max_steps: int | None,
    resume: bool,
    config_path: str | None,
    overrides: tuple[str, ...],
) -> None:
    """Distil the teacher into the student with span-aware losses and weightings."""
    from ..cli import fail
    from ..config import ConfigError, load_config
    from ..plugins import PluginError

    if teacher and teacher_logits:
        fail("give either --teacher (online) or --teacher-logits (cache), not both")
    flags = {"loss.name": loss, "weighting.name": weighting, "training.max_steps": max_steps}
    try:
        config = load_config(config_path, overrides, flags)
        summary = train(
            config,
            data=data,
            out=out,
            student=student,
            teacher=teacher,
            teacher_logits=teacher_logits,
            resume=resume,
        )
    except (ConfigError, PluginError, FileNotFoundError, ValueError) as exc:
        # TrainError, CacheError and the engine's DistillError are ValueErrors too.
        fail(str(exc))
    if summary:
        print_summary(summary)


def print_summary(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"trained {summary['steps']} steps ({summary['signal']} signal)")
    table.add_column("span")
    table.add_column("first loss", justify="right")
    table.add_column("last loss", justify="right")
    for name, values in summary["span_loss"].items():
        table.add_row(name, f"{values['first']:.4f}", f"{values['last']:.4f}")
    console = Console()
    console.print(table)
    console.print(
        f"{summary['tokens_per_second']} tokens/s, {summary['step_seconds']} s/step; "
        f"student: {summary['student']}; metrics: {summary['metrics']}; "
        f"plots: {', '.join(summary['plots'])}"
    )
