"""``deepcoder server start|stop|status|logs``: the click commands over :mod:`.manager`.

Flags become ``server.*`` config keys (``--config`` / ``--set`` as everywhere), so a config
file can hold a server's settings; the state files live under ``paths.cache``.
"""

from __future__ import annotations

import json
import os
import shlex
import time
from pathlib import Path
from typing import Any

import click

from ..config import config_options
from .backends import BACKENDS, ServerError, ServerSpec
from .manager import describe, start_server, stop_server
from .state import ServerState, list_states, log_path, log_tail, read_state, state_dir, state_path


def _load(config_path: str | None, overrides: tuple[str, ...], flags: dict[str, Any]) -> Any:
    from ..config import load_config

    return load_config(config_path, overrides, flags=flags)


def _state_dir(config: Any) -> Path:
    return state_dir(config.paths.cache)


@click.group("server")
def server_group() -> None:
    """Start, stop and inspect a model server (SGLang, vLLM or transformers serve).

    \b
    deepcoder server start --backend sglang --model runs/x/student --reasoning-parser qwen3
    deepcoder server status --json
    deepcoder server logs -n 50 -f
    deepcoder server stop
    """


@server_group.command("start")
@click.option("--backend", type=click.Choice(BACKENDS), help="Server software (server.backend).")
@click.option("--model", help="Model folder or hub id (server.model, else student.path).")
@click.option("--host", help="Listen address (server.host).")
@click.option("--port", type=int, help="Listen port (server.port).")
@click.option("--reasoning-parser", help="e.g. qwen3: thinking returned apart (sglang, vllm).")
@click.option("--tp", type=int, help="Tensor-parallel GPUs (sglang, vllm).")
@click.option("--ep-size", type=int, help="Expert-parallel size for MoE models (sglang, vllm).")
@click.option("--extra-args", multiple=True, help="More backend arguments, shell-quoted.")
@click.option("--command", "command", help="backend custom: the launch command template.")
@click.option(
    "--timeout", type=float, help="Seconds to wait for readiness (server.startup_timeout)."
)
@click.option("--watch/--no-watch", default=None, help="Restart the server if it crashes.")
@config_options
def start_command(
    backend: str | None,
    model: str | None,
    host: str | None,
    port: int | None,
    reasoning_parser: str | None,
    tp: int | None,
    ep_size: int | None,
    extra_args: tuple[str, ...],
    command: str | None,
    timeout: float | None,
    watch: bool | None,
    config_path: str | None,
    overrides: tuple[str, ...],
) -> None:
    """Start a server detached and wait until it answers a one-token generation."""
    flags = {
        "server.backend": backend,
        "server.model": model,
        "server.host": host,
        "server.port": port,
        "server.reasoning_parser": reasoning_parser,
        "server.tp": tp,
        "server.ep_size": ep_size,
        "server.command": command,
        "server.startup_timeout": timeout,
        "server.watch": watch,
    }
    config = _load(config_path, overrides, flags)
    section = config.server
    model_path = section.model or config.student.path
    if not model_path:
        raise ServerError(
            "no model to serve: pass --model PATH (or set server.model / student.path)"
        )
    extra = list(section.extra_args)
    for item in extra_args:
        extra += shlex.split(item)
    same = ("backend", "host", "port", "reasoning_parser", "tp", "ep_size", "command")
    spec = ServerSpec(
        model=model_path, extra_args=extra, **{key: getattr(section, key) for key in same}
    )
    click.echo(
        f"Starting {spec.backend} on port {spec.port} (log: "
        f"{log_path(_state_dir(config), spec.port)}) ...",
        err=True,
    )
    state = start_server(
        spec,
        _state_dir(config),
        timeout=section.startup_timeout,
        watch=section.watch,
        backoff=section.restart_backoff,
        backoff_max=section.restart_backoff_max,
    )
    watching = " (watched)" if state["watch_pid"] else ""
    click.echo(f"Ready: {state['url']}  pid {state['pid']}{watching}  model {state['model']}")


def _port_path(config: Any, port: int | None) -> Path:
    """The state file of ``port``; without one, the only recorded server, else server.port."""
    directory = _state_dir(config)
    if port is None:
        recorded = sorted(directory.glob("*.json"))
        if len(recorded) == 1:
            return recorded[0]
        port = config.server.port
    return state_path(directory, port)


@server_group.command("stop")
@click.option("--port", type=int, help="The server's port (server.port).")
@click.option("--all", "stop_all", is_flag=True, help="Stop every recorded server.")
@click.option(
    "--grace", type=float, help="Seconds between SIGTERM and SIGKILL (server.stop_grace)."
)
@config_options
def stop_command(
    port: int | None,
    stop_all: bool,
    grace: float | None,
    config_path: str | None,
    overrides: tuple[str, ...],
) -> None:
    """Stop a server: SIGTERM to its process group, SIGKILL after the grace period."""
    config = _load(config_path, overrides, {"server.stop_grace": grace})
    directory = _state_dir(config)
    if stop_all:
        paths = sorted(directory.glob("*.json"))
    else:
        paths = [_port_path(config, port)]
        if not paths[0].exists():
            raise ServerError(
                f"no server recorded on port {paths[0].stem} (see `deepcoder server status`)"
            )
    for path in paths:
        result = stop_server(path, grace=config.server.stop_grace)
        how = "was not running" if result["signal"] == "none" else f"stopped ({result['signal']})"
        click.echo(f"port {result['port']}: pid {result['pid']} {how}")


@server_group.command("status")
@click.option("--port", type=int, help="Only this port.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@config_options
def status_command(
    port: int | None, as_json: bool, config_path: str | None, overrides: tuple[str, ...]
) -> None:
    """Show recorded servers: pid, backend, model, port, uptime, health, restarts."""
    config = _load(config_path, overrides, {})
    states: list[ServerState]
    if port is not None:
        state = read_state(_port_path(config, port))
        states = [state] if state else []
    else:
        states = list_states(_state_dir(config))
    rows = [describe(state) for state in states]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("No servers recorded.")
    for row in rows:
        uptime = f"{row['uptime_s']:.0f}s" if row["uptime_s"] is not None else "-"
        watch = " watched" if row["watch"] else ""
        click.echo(
            f"port {row['port']}  pid {row['pid']}  {row['backend']}  {row['health']}  "
            f"up {uptime}  restarts {row['restarts']}{watch}  {row['model']}"
        )


@server_group.command("logs")
@click.option("--port", type=int, help="The server's port (server.port).")
@click.option("-n", "--lines", default=50, show_default=True, help="Lines from the end.")
@click.option(
    "-f", "--follow", is_flag=True, help="Keep printing new lines until the server stops."
)
@config_options
def logs_command(
    port: int | None,
    lines: int,
    follow: bool,
    config_path: str | None,
    overrides: tuple[str, ...],
) -> None:
    """Print the end of a server's log (and follow it with -f)."""
    config = _load(config_path, overrides, {})
    path = _port_path(config, port)
    log = path.with_suffix(".log")
    if not log.exists():
        raise ServerError(f"no log for port {path.stem} at {log} (see `deepcoder server status`)")
    tail = log_tail(log, lines)
    if tail:
        click.echo(tail)
    if not follow:
        return
    with open(log, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        try:
            while True:
                chunk = handle.read()
                if chunk:
                    click.echo(chunk.decode("utf-8", errors="replace"), nl=False)
                elif not path.exists():
                    return  # the server was stopped
                else:
                    time.sleep(0.2)
        except KeyboardInterrupt:
            return
