"""Layering: defaults < YAML file < ``DEEPCODER_<SECTION>__<KEY>`` environment < ``--set`` < flags.

:func:`load_config` validates each layer as it goes in, so an error names the layer that
brought the bad value, then checks the settings that contradict each other and blames the
last layer that set one of them. :func:`snapshot` writes a config to disk with every
secret-looking key redacted (:func:`redact`); :func:`apply_sandbox` hands the ``sandbox``
section to the process-wide sandbox.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any

import yaml

from .checks import ConfigError, build
from .schema import Config, first_conflict
from .yaml_safe import load_yaml, read_yaml

ENV_PREFIX = "DEEPCODER_"
SECRET_KEY = re.compile(r"(api[_-]?key|secret|password|token$|authorization)", re.IGNORECASE)


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
        return build(Config, data, "")
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
    conflict = first_conflict(config)
    if conflict is not None:
        keys, message = conflict
        layers = [("command line", cli), (f"environment ({ENV_PREFIX}*)", env), (source, data)]
        culprit = next((n for n, layer in layers if any(_sets(layer, k) for k in keys)), source)
        raise ConfigError(f"{culprit}: {message}")
    return config


def apply_sandbox(config: Config) -> None:
    """Give the process-wide sandbox the config's ``sandbox`` section (commands that run code)."""
    from ..sandbox import configure

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
    from ..io import atomic_write_text

    text = yaml.safe_dump(redact(config.to_dict()), sort_keys=False)
    return atomic_write_text(path, text)


def config_options(command: Any) -> Any:
    """The two options every stage command takes: ``--config FILE`` and repeatable
    ``--set KEY=VALUE`` (the layers ``load_config`` merges, in that order)."""
    import click

    command = click.option(
        "--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a key."
    )(command)
    return click.option(
        "--config", "config_path", type=click.Path(dir_okay=False), help="YAML config."
    )(command)
