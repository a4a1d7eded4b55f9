"""Student servers: start, watch, stop and inspect SGLang, vLLM or ``transformers serve``.

A server runs detached in its own session (so one signal reaches its whole process group),
its output goes to ``<cache>/servers/<port>.log`` and its state (pid, process group, backend,
model, command, start time, restarts) to ``<cache>/servers/<port>.json``. ``start`` returns
once ``/health`` (or ``/v1/models`` for backends without it) answers and a one-token chat
completion succeeds. ``stop`` sends SIGTERM to the process group and every descendant, then
SIGKILL after a grace period, and waits until none is left. With ``--watch`` a small
supervisor process (``python -m deepcoder_core.serve --supervise STATE``) restarts a server
whose process exited, with exponential backoff (base, 2*base, 4*base, ... capped).

Every server speaks the OpenAI chat API at ``http://HOST:PORT/v1``: the ``openai`` teacher
plugin is the client (``deepcoder eval --server URL``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click

from .errors import DeepcoderError
from .io import atomic_write_json

SCHEMA = 1
BACKENDS = ("sglang", "vllm", "transformers", "custom")
# Python package that must be importable for each backend, and how to install it.
BACKEND_PACKAGES = {
    "sglang": (("sglang",), "pip install 'sglang[all]'"),
    "vllm": (("vllm",), "pip install vllm"),
    "transformers": (("transformers", "fastapi", "uvicorn"), "pip install 'transformers[serving]'"),
}
LOG_TAIL_LINES = 20


class ServerError(DeepcoderError):
    """A server could not be started, found or stopped; the message says what to do."""


@dataclass
class ServerSpec:
    """What to launch. ``command`` (backend ``custom``) is a template: ``{python}``, ``{model}``,
    ``{host}`` and ``{port}`` are filled in, e.g. ``llama-server -m {model} --port {port}``."""

    backend: str
    model: str
    host: str = "127.0.0.1"
    port: int = 30000
    reasoning_parser: str | None = None
    tp: int = 1
    ep_size: int = 1
    extra_args: list[str] = field(default_factory=list)
    command: str | None = None


# ---------------------------------------------------------------------------- commands


def _script(name: str) -> str:
    """The console script ``name`` of this Python environment, else the one on PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise ServerError(f"the '{name}' command was not found next to {sys.executable} or on PATH")
    return found


def build_command(spec: ServerSpec) -> list[str]:
    """The argument list that launches ``spec`` (checked without running anything)."""
    if spec.tp < 1 or spec.ep_size < 1:
        raise ServerError(f"--tp {spec.tp} / --ep-size {spec.ep_size}: both must be >= 1")
    host, port = spec.host, str(spec.port)
    if spec.backend == "sglang":
        cmd = [sys.executable, "-m", "sglang.launch_server", "--model-path", spec.model]
        cmd += ["--host", host, "--port", port]
        if spec.reasoning_parser:
            cmd += ["--reasoning-parser", spec.reasoning_parser]
        if spec.tp > 1:
            cmd += ["--tp", str(spec.tp)]
        if spec.ep_size > 1:
            cmd += ["--ep-size", str(spec.ep_size)]
    elif spec.backend == "vllm":
        cmd = [_script("vllm"), "serve", spec.model, "--host", host, "--port", port]
        if spec.reasoning_parser:
            cmd += ["--reasoning-parser", spec.reasoning_parser]
        if spec.tp > 1:
            cmd += ["--tensor-parallel-size", str(spec.tp)]
        if spec.ep_size > 1:
            # vLLM shards experts over all tp x dp ranks: ep_size = tp * data_parallel_size.
            if spec.ep_size % spec.tp:
                raise ServerError(
                    f"vllm: --ep-size {spec.ep_size} must be a multiple of --tp {spec.tp} "
                    "(vLLM's expert-parallel size is tensor-parallel x data-parallel)"
                )
            cmd += ["--enable-expert-parallel"]
            if spec.ep_size > spec.tp:
                cmd += ["--data-parallel-size", str(spec.ep_size // spec.tp)]
    elif spec.backend == "transformers":
        if spec.tp > 1 or spec.ep_size > 1:
            raise ServerError(
                "transformers serve has no tensor or expert parallelism; "
                "use --backend sglang or vllm for --tp/--ep-size"
            )
        # Reasoning is split by transformers itself from the chat template (Qwen3 included).
        cmd = [_script("transformers"), "serve", spec.model, "--host", host, "--port", port]
    elif spec.backend == "custom":
        if not spec.command:
            raise ServerError("backend 'custom' needs --command 'PROGRAM ARGS' ({model}, {port})")
        values = {"python": sys.executable, "model": spec.model, "host": host, "port": port}
        try:
            cmd = [part.format(**values) for part in shlex.split(spec.command)]
        except (KeyError, IndexError, ValueError) as exc:
            raise ServerError(
                f"--command {spec.command!r}: bad template ({exc}); "
                "use {python}, {model}, {host} and {port}"
            ) from None
    else:
        raise ServerError(f"unknown backend '{spec.backend}'; choose one of {', '.join(BACKENDS)}")
    return cmd + list(spec.extra_args)


def check_backend(spec: ServerSpec) -> None:
    """Raise a clear error when the backend's packages (or the custom program) are missing."""
    if spec.backend == "custom":
        program = shlex.split(spec.command or "")[:1]
        if program and program[0] != "{python}" and shutil.which(program[0]) is None:
            raise ServerError(f"--command: program '{program[0]}' not found on PATH")
        return
    packages, install = BACKEND_PACKAGES.get(spec.backend, ((), ""))
    missing = [p for p in packages if importlib.util.find_spec(p) is None]
    if missing:
        raise ServerError(
            f"backend '{spec.backend}' is not installed (missing {', '.join(missing)}): {install}"
        )


def check_model(model: str) -> None:
    """A local model folder must exist; ``org/name`` that is not a local path is a hub id."""
    path = Path(model).expanduser()
    if path.exists():
        return
    parts = model.split("/")
    looks_like_hub_id = (
        len(parts) == 2
        and all(parts)
        and not model.startswith((".", "~", "/"))
        and not Path(parts[0]).exists()
    )
    if not looks_like_hub_id:
        raise ServerError(f"model path {model} does not exist; pass a model folder with --model")


def check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Servers set SO_REUSEADDR too: a port in TIME_WAIT is free for them.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ServerError(
                f"port {port} on {host} is in use by another process ({exc.strerror}); "
                "choose another with --port"
            ) from None


# ---------------------------------------------------------------------------- processes


def reap(pid: int) -> int | None:
    """The exit code of our own child ``pid`` if it has exited (reaping it), else None."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    if done == 0:
        return None
    return os.waitstatus_to_exitcode(status)


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgrp) from /proc, or None when the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[2])


def pid_alive(pid: int) -> bool:
    """True when ``pid`` runs (a zombie, exited but not yet reaped, counts as dead)."""
    reap(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = _proc_stat(pid)
    if stat is None:
        return not os.path.isdir("/proc")  # without /proc, kill(pid, 0) is all we know
    return stat[0] != "Z"


def family(pid: int, pgid: int) -> set[int]:
    """Live processes of the group ``pgid`` plus every descendant of ``pid`` (they may setsid)."""
    if not os.path.isdir("/proc"):
        try:
            os.killpg(pgid, 0)
        except OSError:
            return set()
        return {pgid}
    children: dict[int, list[int]] = {}
    members: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _proc_stat(int(entry))
        if stat is None or stat[0] == "Z":
            continue
        children.setdefault(stat[1], []).append(int(entry))
        if stat[2] == pgid:
            members.add(int(entry))
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in members:
                members.add(child)
                stack.append(child)
    if pid_alive(pid):
        members.add(pid)
    return members


def _signal_family(pid: int, pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except OSError:
        pass
    for member in family(pid, pgid):
        try:
            os.kill(member, sig)
        except OSError:
            pass


def terminate(pid: int, pgid: int, grace: float = 15.0) -> str:
    """SIGTERM the process group and descendants, SIGKILL what is left after ``grace`` seconds.

    Returns the last signal needed ("none" when nothing was running). Our own exited
    children are reaped, so no zombie is left either.
    """
    if not family(pid, pgid):
        reap(pid)
        return "none"
    _signal_family(pid, pgid, signal.SIGTERM)
    if _wait_gone(pid, pgid, grace):
        return "SIGTERM"
    _signal_family(pid, pgid, signal.SIGKILL)
    if _wait_gone(pid, pgid, 10.0):
        return "SIGKILL"
    left = sorted(family(pid, pgid))
    raise ServerError(f"processes {left} survived SIGKILL; check them with `ps -o pid,stat,cmd`")


def _wait_gone(pid: int, pgid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        reap(pid)
        if not family(pid, pgid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def launch(command: list[str], log_path: Path, *, append: bool = False) -> subprocess.Popen:
    """Start ``command`` detached (own session and process group), output to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a" if append else "w", encoding="utf-8") as log:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        log.write(f"[deepcoder] {stamp} starting: {shlex.join(command)}\n")
        log.flush()
        try:
            return subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        except OSError as exc:
            raise ServerError(f"cannot run {command[0]}: {exc.strerror}") from None


def log_tail(path: str | Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - 64 * 1024))
            data = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:]) if lines > 0 else ""


# ---------------------------------------------------------------------------- HTTP


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


def base_url(host: str, port: int) -> str:
    """The OpenAI-compatible root of a server: ``http://HOST:PORT/v1``."""
    return f"http://{_client_host(host)}:{port}/v1"


def _http(url: str, payload: Any = None, timeout: float = 5.0) -> tuple[int, Any]:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    try:
        return status, json.loads(body.decode("utf-8") or "null")
    except (UnicodeDecodeError, json.JSONDecodeError):
        return status, body.decode("utf-8", errors="replace")


def health(host: str, port: int, timeout: float = 2.0) -> str:
    """``healthy`` | ``unhealthy`` (answers with an error) | ``unreachable`` (no answer)."""
    root = f"http://{_client_host(host)}:{port}"
    try:
        status, _ = _http(f"{root}/health", timeout=timeout)
        if status == 404:  # no /health route: the model list tells the same
            status, _ = _http(f"{root}/v1/models", timeout=timeout)
    except (OSError, ValueError):
        return "unreachable"
    return "healthy" if 200 <= status < 300 else "unhealthy"


def served_model(host: str, port: int, fallback: str, timeout: float = 5.0) -> str:
    """The model id the server answers to (its first ``/v1/models`` entry)."""
    try:
        status, body = _http(f"{base_url(host, port)}/models", timeout=timeout)
        if status == 200 and isinstance(body, dict) and body.get("data"):
            return str(body["data"][0]["id"])
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        pass
    return fallback


def generate_one_token(host: str, port: int, model: str, timeout: float = 60.0) -> str | None:
    """Ask for one token; None when it worked, else the reason it did not."""
    payload = {
        "model": model,
        "messages": [{"role": "user", "content": "Say OK."}],
        "max_tokens": 1,
        "temperature": 0.0,
    }
    try:
        status, body = _http(f"{base_url(host, port)}/chat/completions", payload, timeout=timeout)
    except (OSError, ValueError) as exc:
        return f"no answer ({exc})"
    if status == 200 and isinstance(body, dict) and body.get("choices"):
        return None
    return f"HTTP {status}: {str(body)[:200]}"


# ---------------------------------------------------------------------------- state


def state_dir(cache: str | os.PathLike) -> Path:
    return Path(cache).expanduser() / "servers"


def state_path(directory: Path, port: int) -> Path:
    return directory / f"{port}.json"


def read_state(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as exc:
        raise ServerError(f"{path}: unreadable server state ({exc}); delete the file") from None


def list_states(directory: Path) -> list[dict[str, Any]]:
    states = []
    for path in sorted(directory.glob("*.json"), key=lambda p: (len(p.stem), p.stem)):
        state = read_state(path)
        if state is not None:
            states.append(state)
    return states


def wait_ready(
    state: dict[str, Any],
    timeout: float,
    exit_code: Callable[[], int | None],
) -> None:
    """Block until the server answers health checks and one generation, or raise ServerError."""
    host, port, log = state["host"], state["port"], state["log"]
    deadline = time.monotonic() + timeout
    delay = 0.05
    reason = "no answer yet"
    while True:
        code = exit_code()
        if code is not None:
            raise ServerError(
                f"the {state['backend']} server exited during start-up (exit code {code}); "
                f"last lines of {log}:\n{log_tail(log)}"
            )
        if health(host, port) == "healthy":
            model = served_model(host, port, state["model"])
            left = max(1.0, deadline - time.monotonic())
            failure = generate_one_token(host, port, model, timeout=min(120.0, left))
            if failure is None:
                return
            reason = f"health answers but a one-token generation failed: {failure}"
        if time.monotonic() >= deadline:
            raise ServerError(
                f"the {state['backend']} server on port {port} was not ready after {timeout:g}s "
                f"({reason}); last lines of {log}:\n{log_tail(log)}"
            )
        time.sleep(delay)
        delay = min(1.0, delay * 1.5)


def start_server(
    spec: ServerSpec,
    directory: Path,
    *,
    timeout: float = 600.0,
    watch: bool = False,
    backoff: float = 1.0,
    backoff_max: float = 60.0,
) -> dict[str, Any]:
    """Launch ``spec`` detached, wait until it is ready, record its state; returns the state.

    On any start-up failure the process group is stopped and no state is left behind.
    """
    check_model(spec.model)
    check_backend(spec)
    command = build_command(spec)
    path = state_path(directory, spec.port)
    old = read_state(path)
    if old is not None:
        if pid_alive(old["pid"]) or (old.get("watch_pid") and pid_alive(old["watch_pid"])):
            raise ServerError(
                f"a {old['backend']} server already runs on port {spec.port} (pid {old['pid']}); "
                f"stop it with `deepcoder server stop --port {spec.port}`"
            )
        path.unlink(missing_ok=True)  # a dead server's leftover state
    check_port_free(spec.host, spec.port)
    log = directory / f"{spec.port}.log"
    process = launch(command, log)
    now = time.time()
    state = {
        "schema": SCHEMA,
        "backend": spec.backend,
        "model": spec.model,
        "host": spec.host,
        "port": spec.port,
        "url": base_url(spec.host, spec.port),
        "pid": process.pid,
        "pgid": process.pid,  # start_new_session: the server leads its own group
        "command": command,
        "log": str(log),
        "started_at": now,
        "first_started_at": now,
        "restarts": 0,
        "watch": watch,
        "watch_pid": None,
        "backoff": [backoff, backoff_max],
        "startup_timeout": timeout,
        "spec": asdict(spec),
    }
    atomic_write_json(path, state)
    try:
        wait_ready(state, timeout, process.poll)
    except BaseException:
        terminate(process.pid, process.pid, grace=5.0)
        path.unlink(missing_ok=True)
        raise
    if watch:
        with open(log, "a", encoding="utf-8") as output:  # a supervisor failure shows in `logs`
            supervisor = subprocess.Popen(
                [sys.executable, "-m", "deepcoder_core.serve", "--supervise", str(path)],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        state["watch_pid"] = supervisor.pid
        atomic_write_json(path, state)
    return state


def stop_server(path: Path, grace: float = 15.0) -> dict[str, Any]:
    """Stop the supervisor (if any), then the server's whole process family; drop the state."""
    state = read_state(path)
    if state is None:
        raise ServerError(f"no server recorded in {path}")
    if state.get("watch_pid"):
        terminate(state["watch_pid"], state["watch_pid"], grace=5.0)
        state = read_state(path) or state  # the supervisor may have restarted the server
    how = terminate(state["pid"], state["pgid"], grace=grace)
    path.unlink(missing_ok=True)
    return {"port": state["port"], "pid": state["pid"], "signal": how}


def describe(state: dict[str, Any]) -> dict[str, Any]:
    """The status row of one server: pid, backend, model, port, uptime, health, restarts."""
    alive = pid_alive(state["pid"])
    row = {
        "port": state["port"],
        "pid": state["pid"],
        "backend": state["backend"],
        "model": state["model"],
        "url": state["url"],
        "alive": alive,
        "health": health(state["host"], state["port"]) if alive else "dead",
        "uptime_s": round(time.time() - state["started_at"], 1) if alive else None,
        "restarts": state.get("restarts", 0),
        "watch": bool(state.get("watch_pid")) and pid_alive(state["watch_pid"]),
        "log": state["log"],
    }
    return row


# ---------------------------------------------------------------------------- supervisor


class _Stop(Exception):
    pass


def supervise(path: Path, interval: float = 0.5) -> None:
    """Restart the server of ``path`` whenever its process exits, with exponential backoff.

    The n-th consecutive failed restart waits ``min(backoff_max, backoff * 2**n)`` seconds;
    a restart that becomes ready resets n. SIGTERM ends the supervisor (``stop`` then
    stops the server); one arriving while a restart is launched and recorded is held until
    the new pid is in the state file, so a stop never misses a freshly started process.
    (The signal is deferred by a flag, not masked: a mask would be inherited by the server.)
    """
    flags = {"critical": False, "pending": False}

    def on_term(signum: int, frame: Any) -> None:
        if flags["critical"]:
            flags["pending"] = True
        else:
            raise _Stop

    signal.signal(signal.SIGTERM, on_term)
    failures = 0
    try:
        while True:
            state = read_state(path)
            if state is None:
                return
            code = reap(state["pid"])
            if code is None and pid_alive(state["pid"]):
                time.sleep(interval)
                continue
            base, cap = state.get("backoff", [1.0, 60.0])
            delay = min(cap, base * 2**failures)
            _log_line(
                state["log"],
                f"server pid {state['pid']} exited (code {code}); "
                f"restart {state['restarts'] + 1} in {delay:g}s",
            )
            time.sleep(delay)
            flags["critical"] = True
            process = launch(state["command"], Path(state["log"]), append=True)
            state.update(pid=process.pid, pgid=process.pid, started_at=time.time())
            state["restarts"] += 1
            atomic_write_json(path, state)
            flags["critical"] = False
            if flags["pending"]:
                raise _Stop
            try:
                wait_ready(state, state.get("startup_timeout", 600.0), process.poll)
                failures = 0
                _log_line(state["log"], f"server pid {process.pid} is ready again")
            except ServerError as exc:
                failures += 1
                _log_line(state["log"], str(exc).splitlines()[0])
    except _Stop:
        return


def _log_line(log: str, message: str) -> None:
    with open(log, "a", encoding="utf-8") as handle:
        handle.write(f"[deepcoder watch] {time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")


# ---------------------------------------------------------------------------- CLI

_config_options = [
    click.option("--config", "config_path", type=click.Path(dir_okay=False), help="YAML config."),
    click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a key."),
]


def _with_config(func: Callable) -> Callable:
    for option in reversed(_config_options):
        func = option(func)
    return func


def _load(config_path: str | None, overrides: tuple[str, ...], flags: dict[str, Any]) -> Any:
    from .config import load_config

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
@_with_config
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
    spec = ServerSpec(
        backend=section.backend,
        model=model_path,
        host=section.host,
        port=section.port,
        reasoning_parser=section.reasoning_parser,
        tp=section.tp,
        ep_size=section.ep_size,
        extra_args=extra,
        command=section.command,
    )
    click.echo(
        f"Starting {spec.backend} on port {spec.port} (log: "
        f"{_state_dir(config) / f'{spec.port}.log'}) ...",
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
@_with_config
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
@_with_config
def status_command(
    port: int | None, as_json: bool, config_path: str | None, overrides: tuple[str, ...]
) -> None:
    """Show recorded servers: pid, backend, model, port, uptime, health, restarts."""
    config = _load(config_path, overrides, {})
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
@_with_config
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


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--supervise":
        supervise(Path(sys.argv[2]))
    else:
        sys.exit("usage: python -m deepcoder_core.serve --supervise STATE_FILE")
