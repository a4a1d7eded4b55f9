"""The ``deepcoder`` command line: one subcommand per pipeline stage, plus plugin commands.

Stage commands are imported only when invoked (or when ``--help`` lists them), and their
modules keep torch/transformers imports inside functions, so start-up stays fast.
"""

from __future__ import annotations

import importlib
import json
import sys
from typing import Any, NoReturn

import click

from . import __version__
from .protocols import KINDS

# name -> "module:attribute" of a click command; imported lazily.
COMMANDS: dict[str, str] = {
    "plugins": "deepcoder_core.cli:plugins_command",
    "config": "deepcoder_core.cli:config_command",
    "generate": "deepcoder_core.generate:generate_command",
    "problems": "deepcoder_core.problems_cli:problems_group",
    "tools": "deepcoder_core.tools_cli:tools_group",
    "show": "deepcoder_core.show:show_group",
    "process": "deepcoder_core.process:process_command",
    "server": "deepcoder_core.serve:server_group",
    "eval": "deepcoder_core.evaluate:eval_command",
    "teacher-logits": "deepcoder_core.distill.teacher_logits:teacher_logits_command",
    "train": "deepcoder_core.distill.train:train_command",
    "merge-lora": "deepcoder_core.distill.student:merge_lora_command",
    "run": "deepcoder_core.pipeline:run_command",
    "compare": "deepcoder_core.compare:compare_command",
}


class LazyGroup(click.Group):
    """A group whose built-in subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*COMMANDS, *super().list_commands(ctx)})

    def invoke(self, ctx: click.Context) -> object:
        from .errors import DeepcoderError

        try:
            return super().invoke(ctx)
        except DeepcoderError as exc:  # a stage's typed error: one line and its exit code
            fail(str(exc), exc.exit_code)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in COMMANDS:
            module_name, attr = COMMANDS[name].split(":")
            return getattr(importlib.import_module(module_name), attr)
        return super().get_command(ctx, name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="deepcoder")
def cli() -> None:
    """deepcoder: distil a ReAct coding agent into a smaller student, span by span.

    Stages: generate -> process -> teacher-logits -> train -> eval, or all of them with `run`.
    """


def fail(message: str, code: int = 2) -> NoReturn:
    """Print a one-line error (no traceback) and exit."""
    click.secho(f"Error: {message}", fg="red", err=True)
    sys.exit(code)


# ---------------------------------------------------------------------------- plugins


@click.command("plugins")
@click.option("--all", "show_all", is_flag=True, help="Include built-in plugins.")
@click.option("--kind", type=click.Choice(KINDS), help="Only plugins giving this kind.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def plugins_command(show_all: bool, kind: str | None, as_json: bool) -> None:
    """List installed plugins, their components and load errors."""
    from .plugins import HOOK_OF_KIND, PluginError, get_plugin_manager

    manager = get_plugin_manager()
    components: dict[str, dict[str, list[str]]] = {name: {} for name in manager.plugins}
    registry_errors: dict[str, str] = {}
    for k in HOOK_OF_KIND:
        try:
            registry = manager.registry(k)
        except PluginError as exc:
            registry_errors[k] = str(exc)
            continue
        for entry in registry.values():
            components.setdefault(entry.plugin, {}).setdefault(k, []).append(entry.name)

    rows: list[dict[str, Any]] = []
    for name, info in sorted(manager.plugins.items()):
        if info.builtin and not show_all:
            continue
        comps = components.get(name, {})
        if kind and kind not in comps:
            continue
        rows.append(
            {
                "name": name,
                "version": info.version,
                "hooks": info.hooks,
                "components": comps,
                "builtin": info.builtin,
                "error": info.error,
                "traceback": info.traceback,
            }
        )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        if not rows:
            click.echo("No plugins to show" + ("" if show_all else " (built-ins need --all)") + ".")
        for row in rows:
            status = click.style("error", fg="red") if row["error"] else "ok"
            click.echo(f"{row['name']} {row['version']}  [{status}]")
            if row["error"]:
                click.echo(f"    {row['error']}")
            for k, names in row["components"].items():
                click.echo(f"    {k}: {', '.join(names)}")
    for message in registry_errors.values():
        click.secho(f"Error: {message}", fg="red", err=True)


# ---------------------------------------------------------------------------- config


@click.command("config")
@click.option("--config", "path", type=click.Path(dir_okay=False), help="YAML config file.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a key.")
def config_command(path: str | None, overrides: tuple[str, ...]) -> None:
    """Validate a config and print it resolved (defaults, file, environment, --set)."""
    import yaml

    from .config import ConfigError, load_config, redact

    try:
        config = load_config(path, overrides)
    except ConfigError as exc:
        fail(str(exc))
    click.echo(yaml.safe_dump(redact(config.to_dict()), sort_keys=False), nl=False)


# ---------------------------------------------------------------------------- entry


def _add_plugin_commands() -> None:
    from .plugins import get_plugin_manager

    manager = get_plugin_manager()
    for impl in manager.pm.hook.register_commands.get_hookimpls():
        try:
            impl.function(cli=cli)
        except Exception as exc:  # a broken plugin command must not break the CLI
            info = manager.plugins.get(impl.plugin_name)
            if info is not None and info.error is None:
                info.error = f"register_commands failed: {type(exc).__name__}: {exc}"


def main(argv: list[str] | None = None) -> Any:
    _add_plugin_commands()
    return cli.main(args=argv, prog_name="deepcoder")
