"""Configuration: YAML, then ``DEEPCODER_<SECTION>__<KEY>`` environment variables, then CLI.

Each section is a dataclass; its fields and defaults are the schema. Unknown keys are
rejected with a suggestion and every error names the file and the key path. Numbers are
checked when the config loads (finite, and in the range their ``Annotated`` type gives), so
a bad value stops a command before its first stage, not hours into a run. Component
``options`` mappings are free-form: they go to the plugin's factory, which checks them.
YAML (files, ``--set`` values, variables) is read by :func:`load_yaml`, which refuses alias
bombs, recursive aliases and very deep nesting.
Secrets (API keys) are never config: plugins read them from the environment, and
:func:`snapshot` redacts any secret-looking key before a config is written to disk.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import os
import re
import reprlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import yaml

from .errors import DeepcoderError


class ConfigError(DeepcoderError, ValueError):
    """A configuration problem, with the source (file or variable) and the key path."""


# ---------------------------------------------------------------------------- value checks


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


@dataclass(frozen=True)
class Range:
    """The interval a number field must lie in (``None``: unbounded on that side)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    note: str = ""  # why, when the bound is not obvious

    def describe(self) -> str:
        low = self.gt if self.gt is not None else self.ge
        high = self.lt if self.lt is not None else self.le
        if low is not None and high is not None:
            left, right = "(" if self.gt is not None else "[", ")" if self.lt is not None else "]"
            return f"in {left}{_number(low)}, {_number(high)}{right}"
        if low is not None:
            return f"{'>' if self.gt is not None else '>='} {_number(low)}"
        assert high is not None, "a Range has at least one bound"
        return f"{'<' if self.lt is not None else '<='} {_number(high)}"

    def check(self, value: float, where: str, kind: str) -> None:
        inside = (
            (self.ge is None or value >= self.ge)
            and (self.gt is None or value > self.gt)
            and (self.le is None or value <= self.le)
            and (self.lt is None or value < self.lt)
        )
        if not inside:
            note = f" ({self.note})" if self.note else ""
            raise ConfigError(f"{where}: must be {kind} {self.describe()}, got {value!r}{note}")


@dataclass(frozen=True)
class OneOf:
    """The values a string field may take."""

    choices: tuple[str, ...]

    def check(self, value: str, where: str, kind: str) -> None:
        if value not in self.choices:
            close = difflib.get_close_matches(value, self.choices, n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(self.choices)}{hint}")


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
class AgentConfig:
    max_steps: Count = 6
    max_new_tokens: Count = 512  # per teacher call
    token_budget: Count = 4096  # completion tokens per trajectory
    system_prompt: str | None = None  # None: the built-in ReAct prompt
    tool_timeout: Positive = 10.0  # seconds per tool call


@dataclass
class ToolsConfig:
    enabled: list[str] = field(default_factory=lambda: ["python", "retrieve"])
    options: dict[str, dict[str, Any]] = field(default_factory=dict)  # tool name -> options


@dataclass
class GenerationConfig:
    problems: str | None = None  # None: the bundled problems
    split: str | None = None  # train | eval | None (all)
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


@dataclass
class TeacherLogitsConfig:
    enabled: bool = True  # cache top-k before training when the loss needs a distribution; false: online teacher
    top_k: Count = 64
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


@dataclass
class EvalConfig:
    problems: str | None = None  # None: the bundled held-out split
    split: str | None = "eval"
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


# ---------------------------------------------------------------------------- building

ENV_PREFIX = "DEEPCODER_"
SECRET_KEY = re.compile(r"(api[_-]?key|secret|password|token$|authorization)", re.IGNORECASE)

_short = reprlib.Repr()
_short.maxstring = _short.maxother = 80  # a value quoted in an error stays on one short line


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against a field's type, converting the obvious cases (int -> float)."""
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if value is None:  # a section whose keys are all commented out
            return hint()
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return _build(hint, value, where)
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Annotated:
        base, *checks = args
        value = _coerce(value, base, where)
        for check in checks:
            check.check(value, where, "an integer" if base is int else "a number")
        return value
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
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {_short.repr(value)}")
    if hint is Any:
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {_short.repr(value)}")
        return (
            [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)] if args else value
        )
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {_short.repr(value)}")
        return {k: _coerce(v, args[1], f"{where}.{k}") for k, v in value.items()} if args else value
    if hint is float and isinstance(value, int | str) and not isinstance(value, bool):
        try:
            value = float(value)
        except OverflowError:  # an int past 1e308
            raise ConfigError(
                f"{where}: must be a finite number, got {_short.repr(value)}"
            ) from None
        except ValueError:
            pass
    if hint is float and isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: must be a finite number, got {value!r}")
    if (
        isinstance(hint, type)
        and isinstance(value, hint)
        and not (hint is int and isinstance(value, bool))
    ):
        return value
    expected = getattr(hint, "__name__", str(hint))
    raise ConfigError(f"{where}: expected {expected}, got {_short.repr(value)}")


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


def _conflict(config: Config) -> tuple[tuple[str, ...], str] | None:
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
    return None


def _sets(layer: dict[str, Any], dotted: str) -> bool:
    """Whether a layer (file, environment, command line) gives the key ``dotted``."""
    node: Any = layer
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return True


def _validated(data: dict[str, Any], source: str) -> Config:
    """The config ``data`` describes, with every error prefixed by ``source``."""
    try:
        return _build(Config, data, "")
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


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


# ---------------------------------------------------------------------------- YAML

MAX_CONFIG_BYTES = 1 << 20  # a config is a few kilobytes; the cap also stops at /dev/zero
MAX_YAML_VALUES = 100_000  # counted with every alias written out
MAX_YAML_DEPTH = 64


class _Refused(Exception):
    """A YAML document that would explode once built; the message says how."""


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _measure(root: yaml.Node) -> None:
    """Refuse a document that, with each alias written out, is too large, too deep or endless.

    Aliases share nodes, so a "billion laughs" composes (and builds) cheaply, but every later
    copy of the config (``asdict``, snapshots, fingerprints) writes the aliases out. Each
    distinct node is measured once, so this is linear in the file, whatever it expands to.
    """
    measured: dict[int, tuple[int, int]] = {}  # id(node) -> (values, depth), aliases expanded
    walking: set[int] = set()  # nodes on the current path: meeting one again is a cycle
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        if finished:
            walking.discard(id(node))
            below = [measured[id(child)] for child in _children(node)]
            values = 1 + sum(v for v, _ in below)
            depth = 1 + max((d for _, d in below), default=0)
            if values > MAX_YAML_VALUES:
                raise _Refused(
                    f"more than {MAX_YAML_VALUES:,} values with its anchors and aliases "
                    "expanded (an alias bomb?); a config needs far fewer"
                )
            if depth > MAX_YAML_DEPTH:
                raise _Refused(f"nested too deeply (more than {MAX_YAML_DEPTH} levels)")
            measured[id(node)] = (values, depth)
        elif id(node) in walking:
            raise _Refused("an alias refers to itself (a recursive structure), which no key takes")
        elif id(node) not in measured:
            walking.add(id(node))
            stack.append((node, True))
            stack.extend((child, False) for child in _children(node))


class _MeasuringLoader(yaml.SafeLoader):
    """``SafeLoader`` that measures the composed document before building Python objects."""

    def construct_document(self, node: yaml.Node) -> Any:
        _measure(node)
        return super().construct_document(node)


def load_yaml(text: str, source: str) -> Any:
    """``yaml.safe_load``, refusing alias bombs, recursive aliases and deep nesting.

    A refusal is a :class:`ConfigError` naming ``source``; bad syntax stays a ``yaml.YAMLError``.
    """
    try:
        # A SafeLoader subclass: plain data only, never arbitrary Python objects.
        return yaml.load(text, Loader=_MeasuringLoader)
    except _Refused as exc:
        raise ConfigError(f"{source}: refused: {exc}") from None
    except RecursionError:  # the composer recurses per level, before _measure sees the depth
        raise ConfigError(
            f"{source}: refused: nested too deeply (more than {MAX_YAML_DEPTH} levels)"
        ) from None


def parse_assignment(text: str) -> tuple[str, Any]:
    """``training.lr=1e-5`` -> ("training.lr", 1e-5); the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key.path=value")
    key, raw = text.split("=", 1)
    try:
        value = load_yaml(raw, f"--set {key.strip()}") if raw.strip() else ""
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
            value = load_yaml(raw, f"environment {name}")
        except yaml.YAMLError:
            value = raw
        _set_path(out, dotted, value)
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror or exc}") from exc
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"{path}: larger than {MAX_CONFIG_BYTES >> 20} MiB; a config is a few kilobytes "
            "(is this the right file?)"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"{path}:{line}: invalid UTF-8 at byte {exc.start} (0x{raw[exc.start]:02x}, "
            f"{exc.reason}); save the file as UTF-8"
        ) from None
    try:
        data = load_yaml(text, str(path)) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{at}: invalid YAML: {getattr(exc, 'problem', exc)}") from exc
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
    config = _validated(data, source)

    layered = dataclasses.asdict(config)
    env = env_overrides(environ)
    if env:
        layered = _merge(layered, env)
        _validated(layered, f"environment ({ENV_PREFIX}*)")
    cli: dict[str, Any] = {}
    for item in overrides:
        key, value = parse_assignment(item)
        _set_path(cli, key, value)
    for key, value in (flags or {}).items():
        if value is not None:
            _set_path(cli, key, value)
    config = _validated(_merge(layered, cli), "command line")
    # Checked once all layers are in (a flag may resolve what the file alone contradicts),
    # and blamed on the last layer that set one of the keys.
    conflict = _conflict(config)
    if conflict is not None:
        keys, message = conflict
        layers = [("command line", cli), (f"environment ({ENV_PREFIX}*)", env), (source, data)]
        culprit = next((n for n, layer in layers if any(_sets(layer, k) for k in keys)), source)
        raise ConfigError(f"{culprit}: {message}")
    return config


def apply_sandbox(config: Config) -> None:
    """Give the process-wide sandbox the config's ``sandbox`` section (commands that run code)."""
    from .sandbox import configure

    configure(isolation=config.sandbox.isolation, scratch_mb=config.sandbox.scratch_mb)


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
