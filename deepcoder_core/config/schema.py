"""The schema: one dataclass per config section; its fields and defaults are the keys.

A field's type says what a value may be (``Count``: an int >= 1, checked by :mod:`.checks`);
a trailing comment says what it means. :func:`first_conflict` holds the rules that span
several keys (``eval.k`` against ``eval.samples``), checked once every layer is in.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Annotated, Any

from .checks import OneOf, Range

# Every float is also checked to be finite (no NaN, no infinity).
Positive = Annotated[float, Range(gt=0)]
NonNegative = Annotated[float, Range(ge=0)]
Ratio = Annotated[float, Range(ge=0, le=1)]
Count = Annotated[int, Range(ge=1)]
NonNegativeInt = Annotated[int, Range(ge=0)]
Seed = Annotated[int, Range(ge=0, le=2**32 - 1)]  # numpy's seed range
Fraction = Annotated[float, Range(ge=0, lt=1)]
Probability = Annotated[float, Range(gt=0, le=1)]
Port = Annotated[int, Range(ge=1, le=65535)]
# The Trainer reads max_steps 0 or -1 as "train by epochs"; deepcoder's schedules and curriculum
# need the number of steps up front, so it is always given.
Steps = Annotated[int, Range(ge=1, note="deepcoder trains for a number of steps, not epochs")]

NONFINITE_MODES = ("raise", "skip")
ISOLATION_LEVELS = ("namespaces", "rlimits")
NonFinite = Annotated[str, OneOf(NONFINITE_MODES)]
Isolation = Annotated[str, OneOf(ISOLATION_LEVELS)]
Split = Annotated[str, OneOf(("train", "eval"))]  # problems.SPLITS
GATES = ("none", "tool_error", "divergence")
Gate = Annotated[str, OneOf(GATES)]


@dataclass
class TeacherConfig:
    name: str = "hf"  # teacher plugin: hf, groq, openai, replay, ...
    options: dict[str, Any] = field(default_factory=dict)  # passed to the plugin's factory


@dataclass
class StudentInitConfig:
    from_teacher: dict[str, Any] | None = None  # {layers: [0, 5, 10, ...]} prunes a teacher copy
    config: dict[str, Any] | None = None  # a transformers config dict: a small random model


@dataclass
class LoraConfig:
    enabled: bool = False
    r: Count = 16
    alpha: Count = 32
    dropout: Fraction = 0.05
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"]
    )


@dataclass
class StudentConfig:
    path: str | None = None  # a causal-LM folder or hub id; None: built by `init`
    tokenizer: str | None = None  # None: the student folder's, else the teacher's; "qwen3": bundled
    init: StudentInitConfig = field(default_factory=StudentInitConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    router_aux_loss_coef: NonNegative = 0.001  # MoE students: weight of the load-balancing loss


@dataclass
class ScaffoldConfig:
    """What makes a small local model act as an agent (see ``deepcoder_core.agent.scaffold``)."""

    exemplars: NonNegativeInt = (
        0  # worked ReAct trajectories of bundled train problems in the prompt
    )
    skeleton: bool = (
        False  # decode the step skeleton (Thought -> Action + fenced input | Final Answer)
    )
    act_first: bool = True  # with skeleton: the first step runs code before any answer
    answer_after_run: bool = True  # with skeleton: the step after code that ran is the answer
    action_samples: Count = 1  # candidate actions per step; the majority execution result wins
    privileged: bool = (
        True  # the exemplars are the teacher's only: trajectories keep the plain prompt
    )
    students: bool = False  # eval: students get the scaffold too (False: they act on their own)


@dataclass
class AgentConfig:
    max_steps: Count = 6
    max_new_tokens: Count = 512  # per teacher call
    token_budget: Count = 4096  # completion tokens per trajectory
    system_prompt: str | None = None  # None: the built-in ReAct prompt
    tool_timeout: Positive = 10.0  # seconds per tool call
    max_format_errors: NonNegativeInt = (
        2  # consecutive invalid replies that end a run (0: no limit)
    )
    scaffold: ScaffoldConfig = field(default_factory=ScaffoldConfig)


@dataclass
class ToolsConfig:
    enabled: list[str] = field(default_factory=lambda: ["python", "retrieve"])
    options: dict[str, dict[str, Any]] = field(default_factory=dict)  # tool name -> options


@dataclass
class GenerationConfig:
    problems: str | None = None  # None: the bundled problems
    split: Split | None = None  # train | eval | None (all)
    limit: Count | None = None  # the first N problems of the split (None: all)
    samples_per_problem: Count = 1
    concurrency: Count = 8
    temperature: NonNegative = 0.7  # 0: greedy
    top_p: Probability = 0.95
    seed: Seed = 0


@dataclass
class ProcessingConfig:
    tokenizer: str | None = None  # None: the student's tokenizer; "qwen3": the bundled files
    detector: str = "structured"  # span detector plugin
    detector_options: dict[str, Any] = field(default_factory=dict)  # e.g. regex {patterns: f.yaml}
    format: str = "auto"  # auto | deepcoder | openai | fireact | sharegpt | text
    max_length: Annotated[int, Range(ge=8)] = 2048  # tokens (8: room for the chat markup)
    overflow: str = "truncate"  # truncate (whole steps) | drop | split
    min_tokens: NonNegativeInt = 16
    min_reasoning_ratio: Ratio = 0.0  # of the labeled (non-0) tokens
    min_action_ratio: Ratio = 0.0
    successful_only: bool = True
    dedup: bool = True
    num_proc: NonNegativeInt = 0  # worker processes; 0: one per core
    batch_size: Count = 64  # records per tokenizer batch
    max_record_bytes: Count = 4_000_000  # longer JSONL lines are dropped unread (bad input)
    agreement_sample: NonNegativeInt = (
        200  # records, spread over the file, on which structured and regex are compared (0: off)
    )


TEACHER_LOGIT_FORMATS = ("topk", "sampled")
TeacherLogitFormat = Annotated[str, OneOf(TEACHER_LOGIT_FORMATS)]
SPAN_TYPE_NAMES = ("other", "reasoning", "action", "observation", "answer")  # protocols.SPAN_NAMES
SpanName = Annotated[str, OneOf(SPAN_TYPE_NAMES)]


@dataclass
class TeacherLogitsConfig:
    enabled: bool = True  # cache the teacher's distribution before training when the loss needs one; false: online teacher
    format: TeacherLogitFormat = (
        "topk"  # topk (k most likely ids + tail) | sampled (K draws: unbiased)
    )
    top_k: Count = 64  # topk: ids kept per position
    samples: Count = 64  # sampled: ids drawn per position, with replacement, at loss.temperature
    spans: list[SpanName] | None = (
        None  # span types whose positions are stored; null: those the weighting weights
    )
    shard_size: Count = 256
    batch_size: Count = 4


@dataclass
class LossConfig:
    name: str = "kl"
    temperature: Positive = 1.0  # softmax temperature of both distributions (1: as they are)
    chunk_size: Count = 1024  # tokens per chunk of the fused engine
    ce_weight: NonNegative = 0.0  # extra cross-entropy on the teacher's tokens
    nonfinite: NonFinite = "raise"  # raise | skip
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class WeightingConfig:
    name: str = "uniform"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class OnPolicyConfig:
    fraction: Ratio = 0.0  # share of optimizer steps trained on fresh student rollouts (GKD's lambda); 0: off-policy only
    loss: str | None = "reverse_kl"  # loss plugin on rollout batches (null: loss.name)
    rollouts: Count | None = (
        None  # agents per on-policy step (null: batch_size x gradient_accumulation_steps)
    )
    temperature: NonNegative = 1.0  # the student samples its rollouts at this temperature
    problems: str | None = None  # rollout problems (null: generation.problems), their train split
    horizon: list[Count] | None = (
        None  # [first, last] agent.max_steps over training (TCOD-style); null: agent.max_steps
    )
    gate: Gate = "none"  # none | tool_error (no loss after the first failed tool call) | divergence (steps weighted by their divergence, SOD-style)
    top_k: Count = 64  # teacher log-probabilities kept per student token (plus the tail)


@dataclass
class TrainingConfig:
    max_steps: Steps = 40  # optimizer steps, >= 1 (0, -1 and null are refused: no epoch mode)
    learning_rate: Positive = 5e-5
    batch_size: Count = 1
    gradient_accumulation_steps: Count = 4
    warmup_ratio: Fraction = 0.1  # share of max_steps
    lr_scheduler: str = "cosine"
    weight_decay: NonNegative = 0.0
    max_grad_norm: NonNegative = 1.0  # 0: no clipping
    bf16: bool = False
    seed: Seed = 0
    save_steps: Count = 20
    save_total_limit: Count = 2  # checkpoints kept under out/checkpoints
    logging_steps: Count = 1
    teacher_device: str = "cpu"  # where an online teacher runs (it may differ from the student's)
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])  # Trainer loggers
    on_policy: OnPolicyConfig = field(default_factory=OnPolicyConfig)


@dataclass
class EvalConfig:
    problems: str | None = None  # None: the bundled held-out split
    split: Split | None = "eval"
    limit: Count | None = None  # the first N problems of the split (None: all)
    samples: Count = 1
    k: list[Count] = field(default_factory=lambda: [1])  # pass@k for each; every k <= samples
    temperature: NonNegative = 0.2
    models: list[str] = field(default_factory=lambda: ["teacher", "baseline", "student"])


@dataclass
class ServerConfig:
    backend: str = "transformers"  # sglang | vllm | transformers | custom
    model: str | None = None  # None: student.path
    host: str = "127.0.0.1"
    port: Port = 30000
    reasoning_parser: str | None = None
    tp: Count = 1
    ep_size: Count = 1
    startup_timeout: Positive = 600.0
    extra_args: list[str] = field(default_factory=list)
    command: str | None = (
        None  # backend custom: launch template with {python} {model} {host} {port}
    )
    watch: bool = False  # restart a crashed server
    restart_backoff: Positive = 1.0  # seconds before the first restart, doubled per failed restart
    restart_backoff_max: Positive = 60.0
    stop_grace: NonNegative = 15.0  # seconds between SIGTERM and SIGKILL


@dataclass
class SandboxConfig:
    # namespaces (bubblewrap + seccomp, the default) | rlimits (weaker: rlimits and uid drop
    # only; warns on every run)
    isolation: Isolation = "namespaces"
    scratch_mb: Count = 64  # size cap of each call's private /tmp


@dataclass
class PathsConfig:
    out: str = "runs/default"
    cache: str = "~/.cache/deepcoder"


@dataclass
class Config:
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    tools: ToolsConfig = field(default_factory=ToolsConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    processing: ProcessingConfig = field(default_factory=ProcessingConfig)
    teacher_logits: TeacherLogitsConfig = field(default_factory=TeacherLogitsConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    weighting: WeightingConfig = field(default_factory=WeightingConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def section_fingerprint(self, *sections: str) -> str:
        """A stable hash of some sections: a stage re-runs when its sections change."""
        data = {s: dataclasses.asdict(getattr(self, s)) for s in sections}
        blob = json.dumps(data, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def first_conflict(config: Config) -> tuple[tuple[str, ...], str] | None:
    """The first settings that contradict each other: their keys, and what is wrong."""
    ev, pr, sv = config.eval, config.processing, config.server
    if not ev.k:
        return ("eval.k",), "eval.k: empty; give at least one k, e.g. [1]"
    if max(ev.k) > ev.samples:
        return ("eval.k", "eval.samples"), (
            f"eval.k: pass@{max(ev.k)} needs eval.samples >= {max(ev.k)} (it is {ev.samples}); "
            "raise eval.samples or lower eval.k"
        )
    if pr.min_tokens > pr.max_length:
        return ("processing.min_tokens", "processing.max_length"), (
            f"processing.min_tokens ({pr.min_tokens}) > processing.max_length ({pr.max_length}): "
            "every example would be dropped; lower min_tokens or raise max_length"
        )
    if pr.min_reasoning_ratio + pr.min_action_ratio > 1:
        return ("processing.min_reasoning_ratio", "processing.min_action_ratio"), (
            "processing.min_reasoning_ratio + processing.min_action_ratio > 1 "
            f"({pr.min_reasoning_ratio} + {pr.min_action_ratio}): no example can meet both"
        )
    if sv.restart_backoff > sv.restart_backoff_max:
        return ("server.restart_backoff", "server.restart_backoff_max"), (
            f"server.restart_backoff ({sv.restart_backoff}) > server.restart_backoff_max "
            f"({sv.restart_backoff_max}); the first wait cannot exceed the longest"
        )
    horizon = config.training.on_policy.horizon
    if horizon is not None and len(horizon) != 2:
        return ("training.on_policy.horizon",), (
            f"training.on_policy.horizon: {horizon} is not [first, last] agent steps, e.g. [2, 6]"
        )
    return None
