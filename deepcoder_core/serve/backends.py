"""What to launch: :class:`ServerSpec`, each backend's command line, and the checks before launch.

:func:`build_command` turns a spec into the argument list of SGLang, vLLM, ``transformers
serve`` or a ``custom`` template without running anything; :func:`check_backend`,
:func:`check_model` and :func:`check_port_free` catch a missing package, model folder or busy
port before a process is started. :class:`ServerError` is the error every step of ``deepcoder
server`` raises.
"""

from __future__ import annotations

import importlib.util
import shlex
import shutil
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DeepcoderError

BACKENDS = ("sglang", "vllm", "transformers", "custom")
# Python package that must be importable for each backend, and how to install it.
BACKEND_PACKAGES = {
    "sglang": (("sglang",), "pip install 'sglang[all]'"),
    "vllm": (("vllm",), "pip install vllm"),
    "transformers": (("transformers", "fastapi", "uvicorn"), "pip install 'transformers[serving]'"),
}


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
    """Raise when ``host:port`` cannot be bound, so the error names the port, not the backend."""
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
