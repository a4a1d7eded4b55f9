"""Run untrusted code (model-written code, tests from problem files) behind an OS boundary.

The layers, outermost first; each is meant to hold on its own when the ones inside it fail:

1. **Namespaces** (``isolation``): every worker runs under bubblewrap in its own network,
   PID, IPC, UTS and mount namespaces, with a read-only view of what Python needs, private
   size-capped ``/tmp`` and ``/dev/shm``, its own ``/proc``, and a seccomp filter that
   refuses sockets, ptrace, mounts and new namespaces. Fails closed: where it cannot be set
   up, no untrusted code runs unless the config picks ``sandbox.isolation: rlimits``.
2. **The child** (``worker``): one fresh fork per request, in a scratch directory removed
   afterwards, under rlimits (CPU, address space, file size, open files, no new processes),
   with an empty environment, no descriptors but its pipes, an unprivileged uid (as root),
   and no dumpable memory.
3. **Judge and partner**: a request can run in two children under two uids, so that the
   code under test cannot produce the verdict about it (``deepcoder_core.checking``).
4. **The protocol** (``protocol``): length-prefixed JSON, never pickle, every message
   checked for fields, types and sizes on arrival, texts capped at the source.
5. **The language layer** lives with the tool that needs it (the ``python`` tool's
   RestrictedPython policy); nothing above relies on it.

``SandboxPool`` (``pool``) is the host's handle: pre-started workers, so a call costs a
fork, not an interpreter start; ``get_pool`` is the process-wide one, set by ``configure``.
Runners are trusted ``"module:function"`` code called inside the child (``runtime``).
Linux only.
"""

from .isolation import LEVELS as ISOLATION_LEVELS
from .pool import (
    EXEC_RUNNER,
    Limits,
    SandboxError,
    SandboxPool,
    SandboxRequest,
    SandboxResult,
    check_timeout,
    close_pool,
    configure,
    get_pool,
    isolation_level,
)
from .runtime import partner, register_source, report_progress, run_exec, short_traceback
from .worker import PRELOAD

# Standard-library modules with no I/O, process or interpreter access: the python tool's
# import allow-list, and the modules whose documentation the retriever indexes.
PURE_MODULES = (
    "math",
    "re",
    "itertools",
    "collections",
    "functools",
    "heapq",
    "bisect",
    "string",
    "json",
    "statistics",
    "fractions",
    "decimal",
    "operator",
    "typing",
    "dataclasses",
    "random",
)

__all__ = [
    "EXEC_RUNNER",
    "ISOLATION_LEVELS",
    "PRELOAD",
    "PURE_MODULES",
    "Limits",
    "SandboxError",
    "SandboxPool",
    "SandboxRequest",
    "SandboxResult",
    "check_timeout",
    "close_pool",
    "configure",
    "get_pool",
    "isolation_level",
    "partner",
    "register_source",
    "report_progress",
    "run_exec",
    "short_traceback",
]
