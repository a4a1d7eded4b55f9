"""``deepcoder tools``: list the installed tools, or run one once on an input.

``deepcoder tools run python --input snippet.py`` (or ``echo 'print(1)' | deepcoder tools run
python -``) prints the observation as JSON, ``{"ok", "text", "meta"}``, so a person can try a
tool, and a script can probe one, without an agent.
"""

from __future__ import annotations

import json
import math
import sys

import click

from .cli import fail


@click.group("tools")
def tools_group() -> None:
    """List tools or run one on an input."""


@tools_group.command("list")
@click.option(
    "--json", "as_json", is_flag=True, help="Print JSON: the sandbox level and the tools."
)
@click.option("--config", "config_path", help="Take the sandbox section from this config.")
def list_command(as_json: bool, config_path: str | None) -> None:
    """Show the sandbox isolation in force and every registered tool: name, plugin, description."""
    from .plugins import PluginError, get_plugin_manager

    if config_path:
        from .config import ConfigError, apply_sandbox, load_config

        try:
            apply_sandbox(load_config(config_path))
        except ConfigError as exc:
            fail(str(exc))
    try:
        registry = get_plugin_manager().registry("tool")
    except PluginError as exc:
        fail(str(exc))
    rows = [
        {
            "name": entry.name,
            "plugin": entry.plugin,
            "description": getattr(entry.factory, "description", None) or entry.description,
        }
        for entry in registry.values()
    ]
    sandbox = _sandbox_level()
    if as_json:
        click.echo(json.dumps({"sandbox": sandbox, "tools": rows}, indent=2))
        return
    state = "ready" if sandbox["available"] else f"UNAVAILABLE: {sandbox['problem']}"
    click.echo(f"sandbox isolation: {sandbox['isolation']} ({sandbox['layers']}; {state})\n")
    if not rows:
        click.echo("No tools installed (see `deepcoder plugins --all`).")
    for row in rows:
        click.echo(f"{row['name']}  ({row['plugin']})\n    {row['description']}")


def _sandbox_level() -> dict:
    """The isolation level untrusted code would run under now, and whether it can start."""
    from .sandbox import isolation, isolation_level

    level = isolation_level()
    layers = {
        "namespaces": "bubblewrap namespaces, read-only view, seccomp, rlimits, uid drop",
        "rlimits": "rlimits, empty environment and uid drop only: weaker, no network isolation",
    }[level]
    problem = None
    if level == "namespaces":
        try:
            isolation.probe()
        except isolation.IsolationUnavailable as exc:
            problem = str(exc)
    return {"isolation": level, "layers": layers, "available": problem is None, "problem": problem}


def _parse_options(pairs: tuple[str, ...]) -> dict:
    import yaml

    from .config import ConfigError, load_yaml

    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            fail(f"--option {pair!r}: expected KEY=VALUE, e.g. --option memory_mb=256")
        try:
            options[key] = load_yaml(value, f"--option {key}")
        except yaml.YAMLError as exc:
            fail(f"--option {key}: value is not valid YAML: {getattr(exc, 'problem', exc)}")
        except ConfigError as exc:
            fail(str(exc))
    return options


def _read_input(path: str) -> str:
    """The tool input from a file or ('-') standard input, as text; bad input fails in one line."""
    name = "standard input" if path == "-" else path
    try:
        if path == "-":
            raw = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as handle:
                raw = handle.read()
    except OSError as exc:
        fail(f"cannot read tool input {name}: {exc.strerror or exc}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        fail(f"{name}: invalid UTF-8 at byte {exc.start} ({exc.reason}); give UTF-8 text")


@tools_group.command("run")
@click.argument("name")
@click.argument("source", required=False, metavar="[-]")
@click.option("--input", "-i", "input_file", help="File holding the tool input ('-': stdin).")
@click.option("--timeout", type=float, default=10.0, show_default=True, help="Seconds.")
@click.option("--option", "-o", "pairs", multiple=True, metavar="KEY=VALUE", help="Tool option.")
@click.option(
    "--config", "config_path", help="Take the tool's options from this config's tools.options."
)
def run_command(
    name: str,
    source: str | None,
    input_file: str | None,
    timeout: float,
    pairs: tuple[str, ...],
    config_path: str | None,
) -> None:
    """Run tool NAME once on an input (--input FILE, or - for stdin); print the observation as JSON."""
    from .plugins import PluginError, get_plugin_manager

    if source not in (None, "-"):
        fail(f"unexpected argument {source!r}: give the input with --input FILE, or - for stdin")
    if (source is None) == (input_file is None):
        fail("give exactly one input: --input FILE, or - to read standard input")
    # NaN, infinity or <= 0 cannot bound a call: say so before any tool is built.
    if not (math.isfinite(timeout) and timeout > 0):
        fail(f"--timeout {timeout:g}: must be a finite number of seconds > 0, e.g. --timeout 10")
    text = _read_input(input_file if input_file is not None else "-")
    options = {}
    if config_path:
        from .config import ConfigError, apply_sandbox, load_config

        try:
            config = load_config(config_path)
        except ConfigError as exc:
            fail(str(exc))
        apply_sandbox(config)
        options.update(config.tools.options.get(name, {}))
    options.update(_parse_options(pairs))
    try:
        tool = get_plugin_manager().build("tool", name, **options)
    except (PluginError, ValueError) as exc:
        fail(str(exc))
    observation = tool.run(text, timeout=timeout)
    click.echo(
        json.dumps(
            {"ok": observation.ok, "text": observation.text, "meta": observation.meta},
            indent=2,
            default=str,
        )
    )
