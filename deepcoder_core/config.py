"""Configuration: YAML, then ``DEEPCODER_<SECTION>__<KEY>`` environment variables, then CLI.

Each section is a dataclass; its fields and defaults are the schema. Unknown keys are
rejected with a suggestion and every error names the file and the key path. Component
``options`` mappings are free-form: they go to the plugin's factory, which checks them.
Secrets (API keys) are never config: plugins read them from the environment, and
:func:`snapshot` redacts any secret-looking key before a config is written to disk.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration problem, with the source (file or variable) and the key path."""


# ---------------------------------------------------------------------------- sections


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
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"]
    )


@dataclass
class StudentConfig:
    path: str | None = None  # a causal-LM folder or hub id; None: built by `init`
    tokenizer: str | None = None  # None: the student folder's, else the teacher's; "qwen3": bundled
    init: StudentInitConfig = field(default_factory=StudentInitConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    router_aux_loss_coef: float = 0.001  # MoE students: weight of the load-balancing loss


@dataclass
class AgentConfig:
    max_steps: int = 6
    max_new_tokens: int = 512  # per teacher call
    token_budget: int = 4096  # completion tokens per trajectory
    system_prompt: str | None = None  # None: the built-in ReAct prompt
    tool_timeout: float = 10.0


@dataclass
class ToolsConfig:
    enabled: list[str] = field(default_factory=lambda: ["python", "retrieve"])
    options: dict[str, dict[str, Any]] = field(default_factory=dict)  # tool name -> options


@dataclass
class GenerationConfig:
    problems: str | None = None  # None: the bundled problems
    split: str | None = None  # train | eval | None (all)
    limit: int | None = None  # the first N problems of the split (None: all)
    samples_per_problem: int = 1
    concurrency: int = 8
    temperature: float = 0.7
    top_p: float = 0.95
    seed: int = 0


@dataclass
class ProcessingConfig:
    tokenizer: str | None = None  # None: the student's tokenizer; "qwen3": the bundled files
    detector: str = "structured"  # span detector plugin
    detector_options: dict[str, Any] = field(default_factory=dict)  # e.g. regex {patterns: f.yaml}
    format: str = "auto"  # auto | deepcoder | openai | fireact | sharegpt | text
    max_length: int = 2048
    overflow: str = "truncate"  # truncate (whole steps) | drop | split
    min_tokens: int = 16
    min_reasoning_ratio: float = 0.0  # of the labeled (non-0) tokens
    min_action_ratio: float = 0.0
    successful_only: bool = True
    dedup: bool = True
    num_proc: int = 0  # worker processes; 0: one per core
    batch_size: int = 64  # records per tokenizer batch
    max_record_bytes: int = 16_000_000  # longer JSONL lines are reported as bad input
    agreement_sample: int = (
        200  # records, spread over the file, on which structured and regex are compared (0: off)
    )


@dataclass
class TeacherLogitsConfig:
    enabled: bool = True  # cache top-k before training when the loss needs a distribution; false: online teacher
    top_k: int = 64
    shard_size: int = 256
    batch_size: int = 4


@dataclass
class LossConfig:
    name: str = "kl"
    temperature: float = 1.0
    chunk_size: int = 1024  # tokens per chunk of the fused engine
    ce_weight: float = 0.0  # extra cross-entropy on the teacher's tokens
    nonfinite: str = "raise"  # raise | skip
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class WeightingConfig:
    name: str = "uniform"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainingConfig:
    max_steps: int = 40
    learning_rate: float = 5e-5
    batch_size: int = 1
    gradient_accumulation_steps: int = 4
    warmup_ratio: float = 0.1
    lr_scheduler: str = "cosine"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    bf16: bool = False
    seed: int = 0
    save_steps: int = 20
    save_total_limit: int = 2  # checkpoints kept under out/checkpoints
    logging_steps: int = 1
    teacher_device: str = "cpu"  # where an online teacher runs (it may differ from the student's)
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])  # Trainer loggers


@dataclass
class EvalConfig:
    problems: str | None = None  # None: the bundled held-out split
    split: str | None = "eval"
    limit: int | None = None  # the first N problems of the split (None: all)
    samples: int = 1
    k: list[int] = field(default_factory=lambda: [1])
    temperature: float = 0.2
    models: list[str] = field(default_factory=lambda: ["teacher", "baseline", "student"])


@dataclass
class ServerConfig:
    backend: str = "transformers"  # sglang | vllm | transformers | custom
    model: str | None = None  # None: student.path
    host: str = "127.0.0.1"
    port: int = 30000
    reasoning_parser: str | None = None
    tp: int = 1
    ep_size: int = 1
    startup_timeout: float = 600.0
    extra_args: list[str] = field(default_factory=list)
    command: str | None = (
        None  # backend custom: launch template with {python} {model} {host} {port}
    )
    watch: bool = False  # restart a crashed server
    restart_backoff: float = 1.0  # seconds before the first restart, doubled per failed restart
    restart_backoff_max: float = 60.0
    stop_grace: float = 15.0  # seconds between SIGTERM and SIGKILL


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
    paths: PathsConfig = field(default_factory=PathsConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def section_fingerprint(self, *sections: str) -> str:
        """A stable hash of some sections: a stage re-runs when its sections change."""
        data = {s: dataclasses.asdict(getattr(self, s)) for s in sections}
        blob = json.dumps(data, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# ---------------------------------------------------------------------------- building

ENV_PREFIX = "DEEPCODER_"
SECRET_KEY = re.compile(r"(api[_-]?key|secret|password|token$|authorization)", re.IGNORECASE)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against a field's type, converting the obvious cases (int -> float)."""
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return _build(hint, value, where)
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if hint is Any:
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return (
            [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)] if args else value
        )
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {k: _coerce(v, args[1], f"{where}.{k}") for k, v in value.items()} if args else value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if (
        isinstance(hint, type)
        and isinstance(value, hint)
        and not (hint is int and isinstance(value, bool))
    ):
        return value
    expected = getattr(hint, "__name__", str(hint))
    raise ConfigError(f"{where}: expected {expected}, got {value!r}")


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"{path}: unknown key{hint} (known: {', '.join(names)})")
        kwargs[key] = _coerce(value, hints[key], path)
    return cls(**kwargs)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "options":
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: '{key}' is not a section")
    node[keys[-1]] = value


def parse_assignment(text: str) -> tuple[str, Any]:
    """``training.lr=1e-5`` -> ("training.lr", 1e-5); the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key.path=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: value is not valid YAML: {exc}") from exc
    return key.strip(), value


def env_overrides(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """``DEEPCODER_TRAINING__LEARNING_RATE=1e-5`` -> {"training": {"learning_rate": 1e-5}}.

    Only variables with a ``__`` are config; ``DEEPCODER_LOAD_PLUGINS`` and friends are not.
    """
    environ = dict(os.environ) if environ is None else environ
    out: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        dotted = name[len(ENV_PREFIX) :].lower().replace("__", ".")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        _set_path(out, dotted, value)
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{line}: invalid YAML: {getattr(exc, 'problem', exc)}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    flags: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> Config:
    """Build a validated :class:`Config`: defaults < YAML file < environment < ``--set`` < flags.

    ``flags`` maps dotted keys to values from named CLI options (``--loss`` -> ``loss.name``);
    ``None`` values are ignored.
    """
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        data = read_yaml(path)
        source = str(path)
    try:
        config = _build(Config, data, "")
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None

    layered = dataclasses.asdict(config)
    env = env_overrides(environ)
    if env:
        try:
            _build(Config, _merge(layered, env), "")
        except ConfigError as exc:
            raise ConfigError(f"environment ({ENV_PREFIX}*): {exc}") from None
        layered = _merge(layered, env)
    cli: dict[str, Any] = {}
    for item in overrides:
        key, value = parse_assignment(item)
        _set_path(cli, key, value)
    for key, value in (flags or {}).items():
        if value is not None:
            _set_path(cli, key, value)
    try:
        return _build(Config, _merge(layered, cli), "")
    except ConfigError as exc:
        raise ConfigError(f"command line: {exc}") from None


def redact(data: Any) -> Any:
    """Copy of ``data`` with every secret-looking key's value replaced."""
    if isinstance(data, dict):
        return {
            k: ("<redacted>" if SECRET_KEY.search(str(k)) and v else redact(v))
            for k, v in data.items()
        }
    if isinstance(data, list):
        return [redact(v) for v in data]
    return data


def snapshot(config: Config, path: str | Path) -> Path:
    """Write the config as YAML (secrets redacted), atomically."""
    from .io import atomic_write_text

    text = yaml.safe_dump(redact(config.to_dict()), sort_keys=False)
    return atomic_write_text(path, text)
