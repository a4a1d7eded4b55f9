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

The modules: :mod:`.schema` (the sections, and the range or choices of each value),
:mod:`.checks` (how values are checked and coerced), :mod:`.yaml_safe` (the loader) and
:mod:`.loading` (layering, :func:`load_config`, :func:`snapshot`, :func:`redact`). Import
from this package, not from them.
"""

from .checks import ConfigError, OneOf, Range
from .loading import (
    ENV_PREFIX,
    SECRET_KEY,
    apply_sandbox,
    config_options,
    env_overrides,
    load_config,
    parse_assignment,
    redact,
    snapshot,
)
from .schema import (
    ISOLATION_LEVELS,
    NONFINITE_MODES,
    AgentConfig,
    Config,
    Count,
    EvalConfig,
    Fraction,
    GenerationConfig,
    Isolation,
    LoraConfig,
    LossConfig,
    NonFinite,
    NonNegative,
    NonNegativeInt,
    PathsConfig,
    Port,
    Positive,
    Probability,
    ProcessingConfig,
    Ratio,
    SandboxConfig,
    ScaffoldConfig,
    Seed,
    ServerConfig,
    Steps,
    StudentConfig,
    StudentInitConfig,
    TeacherConfig,
    TeacherLogitsConfig,
    ToolsConfig,
    TrainingConfig,
    WeightingConfig,
)
from .yaml_safe import MAX_CONFIG_BYTES, MAX_YAML_DEPTH, MAX_YAML_VALUES, load_yaml, read_yaml

__all__ = [
    "ENV_PREFIX",
    "ISOLATION_LEVELS",
    "MAX_CONFIG_BYTES",
    "MAX_YAML_DEPTH",
    "MAX_YAML_VALUES",
    "NONFINITE_MODES",
    "SECRET_KEY",
    "AgentConfig",
    "Config",
    "ConfigError",
    "Count",
    "EvalConfig",
    "Fraction",
    "GenerationConfig",
    "Isolation",
    "LoraConfig",
    "LossConfig",
    "NonFinite",
    "NonNegative",
    "NonNegativeInt",
    "OneOf",
    "PathsConfig",
    "Port",
    "Positive",
    "Probability",
    "ProcessingConfig",
    "Range",
    "Ratio",
    "SandboxConfig",
    "Seed",
    "ServerConfig",
    "Steps",
    "StudentConfig",
    "ScaffoldConfig",
    "StudentInitConfig",
    "TeacherConfig",
    "TeacherLogitsConfig",
    "ToolsConfig",
    "TrainingConfig",
    "WeightingConfig",
    "apply_sandbox",
    "config_options",
    "env_overrides",
    "load_config",
    "load_yaml",
    "parse_assignment",
    "read_yaml",
    "redact",
    "snapshot",
]
