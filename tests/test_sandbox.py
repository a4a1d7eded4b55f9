"""The sandbox pool: isolation, limits, replacement of dead workers, no leaked processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from deepcoder_core.sandbox import (
    Limits,
    SandboxError,
    SandboxPool,
    SandboxRequest,
    close_pool,
    get_pool,
    short_traceback,
)

IS_ROOT = os.geteuid() == 0


@pytest.fixture(scope="module")
def pool():
    os.environ["DEEPCODER_TEST_SECRET"] = "sandbox-secret-value"
    try:
        with SandboxPool(size=2) as pool:
            yield pool
    finally:
        os.environ.pop("DEEPCODER_TEST_SECRET", None)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _group_members(pgids: set[int]) -> list[int]:
    """Live processes whose process group is one of ``pgids``."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().split(")")[-1].split()
            except OSError:
                continue
            if fields[0] != "Z" and int(fields[2]) in pgids:
                members.append(int(entry))
    return members


def test_runs_code_and_reports_stdout_and_value(pool):
    result = pool.run("print('hi')\nx = 20\nx + 1", timeout=5)
    assert result.ok and result.stdout == "hi\n" and result.data["value"] == "21"
    assert result.error is None and 0 < result.duration < 5


def test_error_is_a_short_traceback(pool):
    result = pool.run("def f():\n    raise ValueError('bad')\nf()", timeout=5)
    assert result.status == "error"
    assert 'File "<sandbox>", line 2, in f' in result.error
    assert result.error.endswith("ValueError: bad")
    assert "sandbox.py" not in result.error  # the runner's own frames are hidden


def test_environment_is_empty_and_workdir_fresh(pool):
    result = pool.run("import os\n(dict(os.environ), os.getcwd(), os.listdir('.'))", timeout=5)
    env, cwd, listing = eval(result.data["value"])
    assert env == {} and listing == [] and "deepcoder-sandbox-" in cwd
    assert pool.run("open('left.txt', 'w').write('x')", timeout=5).ok
    again = pool.run("import os\n(os.getcwd(), os.listdir('.'))", timeout=5)
    cwd2, listing2 = eval(again.data["value"])
    assert listing2 == [] and not os.path.exists(cwd) and not os.path.exists(cwd2)


def test_state_never_survives_a_call(pool):
    assert pool.run("import math\nmath.pi = 3", timeout=5).ok
    assert pool.run("import math\nmath.pi", timeout=5).data["value"] == repr(3.141592653589793)


@pytest.mark.skipif(not IS_ROOT, reason="the switch to 'nobody' happens only as root")
def test_runs_as_nobody_when_root(pool, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("root-only")
    secret.chmod(0o600)
    code = f"import os\n(os.getuid(), open({str(secret)!r}).read())"
    hidden = pool.run(code, timeout=5)  # namespaces: the host's /tmp is not in the view at all
    assert "FileNotFoundError" in hidden.error and "root-only" not in hidden.error
    with SandboxPool(size=1, isolation="rlimits") as weak:  # uid drop alone: the mode bits hold
        denied = weak.run(code, timeout=5)
    assert "PermissionError" in denied.error and "root-only" not in denied.error
    assert pool.run("import os\nos.getuid()", timeout=5).data["value"] == "65534"


def test_wall_clock_timeout(pool):
    started = time.monotonic()
    result = pool.run("while True:\n    pass", timeout=0.5)
    assert result.status == "timeout" and "timed out after 0.5 s" in result.error
    assert time.monotonic() - started < 1.5


def test_cpu_limit_kills(pool):
    request = SandboxRequest(
        payload={"code": "while True:\n    pass"}, limits=Limits(cpu_seconds=1)
    )
    result = pool.run(request, timeout=10)
    assert result.status == "killed" and "CPU time limit exceeded" in result.error
    assert result.duration < 4


def test_memory_file_size_process_and_thread_limits(pool):
    assert "MemoryError" in pool.run("b = bytearray(2 * 1024 ** 3)", timeout=5).error
    small = SandboxRequest(
        payload={"code": "open('big', 'wb').write(b'x' * (2 * 1024 * 1024))"},
        limits=Limits(file_size_mb=1),
    )
    assert "File too large" in pool.run(small, timeout=5).error
    assert "BlockingIOError" in pool.run("import os\nos.fork()", timeout=5).error
    spawn = pool.run("import subprocess\nsubprocess.run(['true'])", timeout=5)
    assert spawn.status == "error" and "BlockingIOError" in spawn.error
    thread = pool.run("import threading\nthreading.Thread(target=int).start()", timeout=5)
    assert "can't start new thread" in thread.error


def test_output_is_capped(pool):
    request = SandboxRequest(
        payload={"code": "for i in range(100000):\n    print(i)"},
        limits=Limits(max_output_chars=100),
    )
    result = pool.run(request, timeout=5)
    assert result.ok and result.truncated
    assert result.stdout.startswith("0\n1\n2\n") and "output truncated" in result.stdout
    assert len(result.stdout) < 200


def test_crashes_are_reported(pool):
    exited = pool.run("import os\nos._exit(3)", timeout=5)
    assert exited.status == "crashed" and "exited with code 3" in exited.error
    segv = pool.run("import ctypes\nctypes.string_at(0)", timeout=5)
    assert segv.status == "killed" and "SIGSEGV" in segv.error
    assert pool.run("1", timeout=5).ok


def test_dead_worker_is_replaced(pool):
    before = pool.worker_pids
    for pid in before:
        os.killpg(pid, signal.SIGKILL)
    results = [pool.run("1 + 1", timeout=5) for _ in range(4)]
    assert any(r.status == "crashed" and "replaced" in r.error for r in results)
    assert all(r.ok for r in results[2:])
    after = pool.worker_pids
    assert len(after) == 2 and not set(after) & set(before)
    assert not any(_alive(pid) for pid in before)
    assert pool.stats()["replaced"] >= 2


def test_hung_worker_is_killed_with_its_group_and_replaced(pool):
    pool.grace = 0.3
    try:
        stopped = pool.worker_pids
        for pid in stopped:
            os.killpg(pid, signal.SIGSTOP)  # a worker that never answers
        results = [pool.run("1", timeout=0.2) for _ in range(2)]
    finally:
        pool.grace = 5.0
    assert all(r.status == "crashed" and "stopped answering" in r.error for r in results)
    assert _group_members(set(stopped)) == []
    assert len(pool.worker_pids) == 2 and pool.run("2", timeout=5).data["value"] == "2"


def test_thread_safe_under_concurrency(pool):
    results = {}

    def work(i):
        results[i] = pool.run(f"{i} * {i}", timeout=10).data.get("value")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: str(i * i) for i in range(16)}
    assert len(pool.worker_pids) == 2


def test_close_stops_every_process_and_refuses_work():
    pool = SandboxPool(size=2)
    pids = pool.worker_pids
    errors = []

    def busy():
        try:
            pool.run("import time\ntime.sleep(30)", timeout=30)
        except SandboxError as exc:
            errors.append(str(exc))

    blocker = threading.Thread(target=busy, daemon=True)
    blocker.start()
    time.sleep(0.3)
    pool.close()
    blocker.join(5)
    assert errors and "closed during the call" in errors[0]
    deadline = time.monotonic() + 3
    while _group_members(set(pids)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _group_members(set(pids)) == []
    with pytest.raises(SandboxError, match="closed"):
        pool.run("1", timeout=1)


def test_shared_pool_is_reused_and_can_be_closed():
    first = get_pool()
    assert get_pool() is first and first.run("1", timeout=5).ok
    close_pool()
    assert first.closed and get_pool() is not first
    close_pool()


PARENT = textwrap.dedent(
    """
    import sys, threading
    from deepcoder_core.sandbox import SandboxPool
    pool = SandboxPool(size=2)
    for _ in range(2):  # a child busy in each worker
        threading.Thread(target=pool.run, args=("import time; time.sleep(60)",), kwargs={"timeout": 60}, daemon=True).start()
    print(*pool.worker_pids, flush=True)
    threading.Event().wait(60)
    """
)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_no_process_survives_an_interrupted_parent(sig):
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        pids = {int(p) for p in parent.stdout.readline().split()}
        assert len(pids) == 2
        # Per worker: bwrap, the namespace's init, the worker, and its busy child.
        deadline = time.monotonic() + 3
        while len(_group_members(pids)) < 8 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(_group_members(pids)) == 8
        parent.send_signal(sig)
        parent.wait(10)
        deadline = time.monotonic() + 5
        while _group_members(pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _group_members(pids) == []
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_short_traceback_keeps_only_user_frames():
    namespace = {}
    code = compile("def f(n):\n    return f(n + 1)\n", "<user>", "exec")
    exec(code, namespace)
    try:
        namespace["f"](0)
    except RecursionError as exc:
        text = short_traceback(exc, ["<user>"], max_frames=4)
    assert "earlier frames omitted" in text and text.endswith("maximum recursion depth exceeded")
    assert text.count('File "<user>"') <= 4 and __file__ not in text
