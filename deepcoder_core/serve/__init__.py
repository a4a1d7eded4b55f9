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

One job a module:

- :mod:`.backends`: :class:`ServerSpec`, each backend's command line, the pre-launch checks,
  and :class:`ServerError`;
- :mod:`.processes`: launching detached, liveness, a server's process family and its signals;
- :mod:`.client`: the HTTP probes (health, served model, one-token generation);
- :mod:`.state`: the ``<port>.json`` record (:class:`ServerState`) and the ``<port>.log`` tail;
- :mod:`.manager`: start (until ready), stop and describe a server;
- :mod:`.supervisor`: ``--watch``, restarting a crashed server with backoff (``__main__``);
- :mod:`.command`: ``deepcoder server start|stop|status|logs``.
"""

from .backends import (
    BACKEND_PACKAGES,
    BACKENDS,
    ServerError,
    ServerSpec,
    build_command,
    check_backend,
    check_model,
    check_port_free,
)
from .client import base_url, generate_one_token, health, served_model
from .command import logs_command, server_group, start_command, status_command, stop_command
from .manager import StatusRow, StopResult, describe, start_server, stop_server, wait_ready
from .processes import family, launch, pid_alive, reap, terminate
from .state import (
    LOG_TAIL_LINES,
    SCHEMA,
    ServerState,
    list_states,
    log_path,
    log_tail,
    read_state,
    state_dir,
    state_path,
)
from .supervisor import supervise

__all__ = [
    "BACKENDS",
    "BACKEND_PACKAGES",
    "LOG_TAIL_LINES",
    "SCHEMA",
    "ServerError",
    "ServerSpec",
    "ServerState",
    "StatusRow",
    "StopResult",
    "base_url",
    "build_command",
    "check_backend",
    "check_model",
    "check_port_free",
    "describe",
    "family",
    "generate_one_token",
    "health",
    "launch",
    "list_states",
    "log_path",
    "log_tail",
    "logs_command",
    "pid_alive",
    "read_state",
    "reap",
    "served_model",
    "server_group",
    "start_command",
    "start_server",
    "state_dir",
    "state_path",
    "status_command",
    "stop_command",
    "stop_server",
    "supervise",
    "terminate",
    "wait_ready",
]
