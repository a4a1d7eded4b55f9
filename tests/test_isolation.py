"""The OS boundary on its own: ordinary, unrestricted Python inside the isolated child.

Assume the language layer is gone (the ``exec`` runner has no guards at all) and check
that the namespaces, the file-system view, the uid, the rlimits and the seccomp filter
still hold; then that the level fails closed where it cannot be set up.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from deepcoder_core.sandbox import SandboxError, SandboxPool, isolation

from .helpers import loopback_listener, view_entries_in_tmp

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or isolation.bwrap_path() is None,
    reason="namespaces isolation needs Linux and bubblewrap",
)
IS_ROOT = os.geteuid() == 0


@pytest.fixture(scope="module")
def pool():
    os.environ["DEEPCODER_TEST_SECRET"] = "isolation-secret-value"
    try:
        with SandboxPool(size=2, isolation="namespaces") as pool:
            yield pool
    finally:
        os.environ.pop("DEEPCODER_TEST_SECRET", None)


def value(pool, code: str, timeout: float = 5.0):
    result = pool.run(textwrap.dedent(code), timeout=timeout)
    assert result.ok, result
    return json.loads(result.data["value"].strip("'")) if result.data.get("value") else None


# Raw system calls through libc, so a Python-level refusal cannot hide an open door.
SYSCALL = """
import ctypes, json
libc = ctypes.CDLL(None, use_errno=True)
def call(number, *args):
    result = libc.syscall(number, *[ctypes.c_long(a) for a in args])
    return [result, ctypes.get_errno()]
"""


def test_loopback_listener_on_the_host_is_unreachable(pool):
    with loopback_listener(timeout=1.0) as (listener, port):
        result = pool.run(
            f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)", timeout=5
        )
        assert result.status == "error" and "Operation not permitted" in result.error
        raw = value(pool, SYSCALL + "json.dumps(call(41, 2, 1, 0))")  # socket(AF_INET, STREAM)
        assert raw == [-1, 1]  # EPERM from the filter
        with pytest.raises(TimeoutError):
            listener.accept()


def test_network_namespace_has_only_a_loopback_and_its_own_host_name(pool):
    got = value(
        pool,
        """
        import json, socket
        names = [line.split(':')[0].strip() for line in open('/proc/net/dev').readlines()[2:]]
        json.dumps([names, socket.gethostname()])
        """,
    )
    assert got == [["lo"], "sandbox"]


def test_no_file_outside_scratch_can_be_written_or_survives(pool, tmp_path):
    got = value(
        pool,
        """
        import json, os
        outcome = {}
        for path in ['/tmp/x', '/var/tmp/x', '/dev/shm/x', '/run/x', '/usr/x', '/etc/x', '/x',
                     os.path.dirname(json.__file__) + '/x']:
            try:
                open(path, 'w').write('x')
                outcome[path] = 'written'
            except OSError as exc:
                outcome[path] = type(exc).__name__
        open('scratch-file', 'w').write('x')
        outcome['scratch'] = os.getcwd()
        json.dumps(outcome)
        """,
    )
    scratch = got.pop("scratch")
    assert all(v != "written" for v in got.values()), got
    assert scratch.startswith("/tmp/deepcoder-sandbox-")
    assert not os.path.exists(os.path.join(scratch, "scratch-file"))  # the host's /tmp is not it
    again = value(pool, "import json, os\njson.dumps(os.listdir('/tmp') + os.listdir('/dev/shm'))")
    left = [name for name in again if name not in view_entries_in_tmp()]
    assert len(left) == 1 and left[0].startswith("deepcoder-sandbox-")  # only this call's


def test_scratch_is_size_capped():
    with SandboxPool(size=1, isolation="namespaces", scratch_mb=2) as small:
        result = small.run(
            "open('big', 'wb').write(b'x' * (8 * 1024 * 1024))", timeout=5
        )  # under RLIMIT_FSIZE (16 MB): the tmpfs cap is what stops it
    assert result.status == "error" and "No space left on device" in result.error


def test_host_processes_are_invisible_and_cannot_be_signalled(pool):
    me = os.getpid()
    got = value(
        pool,
        f"""
        import json, os, signal
        pids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())
        try:
            os.kill({me}, signal.SIGKILL)
            killed = 'sent'
        except OSError as exc:
            killed = type(exc).__name__
        try:
            open('/proc/1/environ').read()
            environ = 'read'
        except OSError as exc:
            environ = type(exc).__name__
        json.dumps([pids, killed, environ, os.getuid()])
        """,
    )
    pids, killed, environ, uid = got
    assert len(pids) <= 4  # bubblewrap's init, the worker, this child (and /proc/self)
    assert killed in ("ProcessLookupError", "PermissionError")
    assert environ == "PermissionError"
    if IS_ROOT:
        assert uid == 65534


def test_a_call_cannot_signal_its_worker_or_another_calls_child(pool):
    outcome = {}

    def victim():
        outcome["victim"] = pool.run("import time\ntime.sleep(1.5)\n'survived'", timeout=10)

    thread = threading.Thread(target=victim)
    thread.start()
    time.sleep(0.3)
    attacker = pool.run(
        """
import os, signal
sent = []
for p in os.listdir('/proc'):
    if p.isdigit() and int(p) != os.getpid():
        try:
            os.kill(int(p), signal.SIGKILL)
            sent.append(p)
        except OSError:
            pass
sent
""",
        timeout=5,
    )
    thread.join()
    assert attacker.ok and attacker.data["value"] == "[]"
    assert outcome["victim"].ok and outcome["victim"].data["value"] == "'survived'"


def test_secrets_of_the_host_are_out_of_reach(pool, tmp_path):
    readable = tmp_path / "world-readable.txt"
    readable.write_text("isolation-secret-value")
    readable.chmod(0o644)
    got = value(
        pool,
        f"""
        import json, os
        found = []
        try:
            found.append(open({str(readable)!r}).read())
        except OSError as exc:
            found.append(type(exc).__name__)
        found.append(dict(os.environ))
        json.dumps(found)
        """,
    )
    assert got == ["FileNotFoundError", {}]


def test_processes_and_threads_are_bounded(pool):
    got = value(
        pool,
        """
        import json, os, subprocess, threading
        outcome = []
        for attempt in (os.fork, lambda: threading.Thread(target=print).start(),
                        lambda: subprocess.run(['true'])):
            try:
                attempt()
                outcome.append('started')
            except (OSError, RuntimeError) as exc:
                outcome.append(type(exc).__name__)
        json.dumps(outcome)
        """,
    )
    assert "started" not in got and got[0] == "BlockingIOError"


# x86_64 syscall numbers: each must fail with EPERM (1) from the filter (or ENOSYS for clone3).
REFUSED = {
    "ptrace": "call(101, 16, 1, 0, 0)",  # PTRACE_ATTACH to the namespace's init
    "mount": "call(165, 0, 0, 0, 0, 0)",
    "umount2": "call(166, 0, 0)",
    "chroot": "call(161, 0)",
    "pivot_root": "call(155, 0, 0)",
    "unshare-user": "call(272, 0x10000000)",
    "unshare-net": "call(272, 0x40000000)",
    "setns": "call(308, 0, 0)",
    "clone-newuser": "call(56, 0x10000000 | 17, 0, 0, 0, 0)",
    "bpf": "call(321, 0, 0, 0)",
    "keyctl": "call(250, 0, 0, 0, 0, 0)",
    "add_key": "call(248, 0, 0, 0, 0, 0)",
    "perf_event_open": "call(298, 0, 0, 0, 0, 0)",
    "userfaultfd": "call(323, 0)",
    "io_uring_setup": "call(425, 1, 0)",
    "process_vm_readv": "call(310, 1, 0, 0, 0, 0, 0)",
    "socketpair": "call(53, 1, 1, 0, 0)",
    "tiocsti": "call(16, 0, 0x5412, 0)",
}


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="x86_64 syscall numbers")
@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_system_calls(pool, name):
    assert value(pool, SYSCALL + f"json.dumps({REFUSED[name]})") == [-1, 1]


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="x86_64 syscall numbers")
def test_clone3_and_other_abis_do_not_bypass_the_filter(pool):
    assert value(pool, SYSCALL + "json.dumps(call(435, 0, 0))") == [-1, 38]  # ENOSYS
    x32 = pool.run(SYSCALL + "call(0x40000000 | 41, 2, 1, 0)", timeout=5)  # x32 socket
    assert not (x32.ok and x32.data.get("value", "").startswith("[3"))
    assert x32.status == "killed" or "-1" in x32.data.get("value", "")


def test_the_filter_is_in_force_and_inherited(pool):
    status = value(
        pool,
        "import json\njson.dumps(dict(line.split()[:2] for line in open('/proc/self/status') "
        "if line.startswith(('Seccomp:', 'NoNewPrivs:'))))",
    )
    assert status == {"Seccomp:": "2", "NoNewPrivs:": "1"}


def test_levels_are_reported_and_the_weak_one_warns(capfd):
    with SandboxPool(size=1, isolation="rlimits") as weak:
        assert weak.stats()["isolation"] == "rlimits"
    assert "sandbox isolation is 'rlimits'" in capfd.readouterr().err


def test_fails_closed_without_bubblewrap(monkeypatch):
    monkeypatch.setattr(isolation, "bwrap_path", lambda: None)
    with pytest.raises(SandboxError) as caught:
        SandboxPool(size=1, isolation="namespaces")
    message = str(caught.value)
    assert "bubblewrap" in message and "sandbox.isolation: rlimits" in message


def test_a_worker_that_shares_the_host_namespaces_refuses_to_serve():
    # In a throwaway interpreter: entering the worker loads the filter into that process.
    code = (
        "from deepcoder_core.sandbox import isolation\n"
        "try:\n"
        "    isolation.enter_worker('namespaces', isolation.host_namespaces())\n"
        "except isolation.IsolationUnavailable as exc:\n"
        "    print('refused:', exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert "refused: the worker shares the host's" in out.stdout, out


def test_a_killed_pool_owner_leaves_no_namespace_behind():
    code = (
        "from deepcoder_core.sandbox import SandboxPool\n"
        "pool = SandboxPool(size=1)\n"
        "print(pool.worker_pids[0], flush=True)\n"
        "import time; time.sleep(60)\n"
    )
    owner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        group = int(owner.stdout.readline())
        owner.send_signal(signal.SIGKILL)
        owner.wait(10)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                os.killpg(group, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        with pytest.raises(ProcessLookupError):
            os.killpg(group, 0)
    finally:
        if owner.poll() is None:
            owner.kill()
