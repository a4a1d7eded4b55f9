"""Sandbox latency and throughput, side by side with a naive fresh interpreter per call.

Prints JSON:
- ``latency_ms``: median (and p90) wall time of a trivial call (``1 + 1``) on a warm
  ``SandboxPool`` (fork server), on the ``python`` tool (RestrictedPython compile included),
  and the naive baseline: ``subprocess.run([python, "-c", ...])`` per call, and the same with
  ``-I -S`` (the fastest honest interpreter start). Target (issue 3): pool under 20 ms.
- ``throughput_calls_per_s``: trivial calls per second from 1, 2 and 8 client threads.
- ``check_bundled``: time to check every bundled problem's canonical solution, serially and
  from as many threads as the pool has workers.
- ``layers``: what each isolation layer costs. The same trivial call at the ``rlimits``
  level (fork, rlimits, uid drop, empty environment) and the ``namespaces`` level (plus
  bubblewrap's namespaces and file-system view, and the seccomp filter); a system-call-heavy
  call (20,000 ``stat``) at both, for the filter's per-call price; pool start per level;
  a check in two children (judge + a fresh partner interpreter) against the same solution
  and asserts run in one child, as checking did before the judge; and the naive ways to get
  the same namespaces per call (``bwrap`` / ``unshare`` around a fresh interpreter).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from deepcoder_core.sandbox import SandboxPool, isolation

TRIVIAL = "1 + 1"


def _stats_ms(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "median": round(statistics.median(ordered) * 1000, 2),
        "p90": round(ordered[int(0.9 * (len(ordered) - 1))] * 1000, 2),
        "n": len(ordered),
    }


def _time_calls(call, n: int) -> list[float]:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return samples


def _throughput(pool: SandboxPool, concurrency: int, calls: int) -> float:
    def one(_):
        result = pool.run(TRIVIAL, timeout=10)
        assert result.ok, result.error

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as executor:
        list(executor.map(one, range(calls)))
    return round(calls / (time.perf_counter() - start), 1)


def _check_bundled(pool: SandboxPool) -> dict:
    try:
        from deepcoder_core.checking import check_solution
        from deepcoder_core.problems import bundled_problems
    except ImportError as exc:
        return {"skipped": f"bundled problems unavailable: {exc}"}
    problems = [p for p in bundled_problems() if p.canonical_solution]

    def check(p):
        return check_solution(p, p.canonical_solution, pool=pool)

    start = time.perf_counter()
    serial = [check(p) for p in problems]
    serial_s = time.perf_counter() - start
    start = time.perf_counter()
    with ThreadPoolExecutor(pool.size) as executor:
        parallel = list(executor.map(check, problems))
    parallel_s = time.perf_counter() - start
    return {
        "problems": len(problems),
        "all_passed": all(r.success for r in serial + parallel),
        "serial_seconds": round(serial_s, 3),
        "parallel_seconds": round(parallel_s, 3),
        "parallel_threads": pool.size,
        "per_problem_ms": round(serial_s / max(1, len(problems)) * 1000, 2),
    }


SYSCALLS = "import os\nfor _ in range(20000):\n    os.stat('.')"


def _layers(size: int) -> dict:
    out: dict = {}
    for level in ("rlimits", "namespaces"):
        started = time.perf_counter()
        with SandboxPool(size=size, isolation=level) as pool:
            start_s = time.perf_counter() - started
            for _ in range(20):
                pool.run(TRIVIAL, timeout=10)
            trivial = _stats_ms(_time_calls(lambda: pool.run(TRIVIAL, timeout=10), 200))
            syscalls = _stats_ms(_time_calls(lambda: pool.run(SYSCALLS, timeout=10), 20))
        out[level] = {
            "pool_start_seconds": round(start_s, 3),
            "trivial_ms": trivial,
            "stat_x20000_ms": syscalls,
        }
    out["namespaces_and_filter_cost_ms"] = round(
        out["namespaces"]["trivial_ms"]["median"] - out["rlimits"]["trivial_ms"]["median"], 2
    )
    out["filter_cost_per_syscall_us"] = round(
        (out["namespaces"]["stat_x20000_ms"]["median"] - out["rlimits"]["stat_x20000_ms"]["median"])
        / 20000
        * 1000,
        3,
    )
    from types import SimpleNamespace

    from deepcoder_core.checking import check_solution

    problem = SimpleNamespace(
        id="bench",
        entry_point="f",
        tests="def check(c):\n    assert c(1) == 2\n    assert c(2) == 4\n",
    )
    solution = "def f(x):\n    return 2 * x\n"
    one_child = solution + problem.tests + "check(f)\n"
    with SandboxPool(size=size) as pool:
        for _ in range(5):
            check_solution(problem, solution, pool=pool)
        judged = _stats_ms(_time_calls(lambda: check_solution(problem, solution, pool=pool), 30))
        single = _stats_ms(_time_calls(lambda: pool.run(one_child, timeout=10), 30))
    out["check"] = {
        "judge_and_partner_ms": judged,
        "one_child_ms": single,
        "judge_cost_ms": round(judged["median"] - single["median"], 2),
    }
    naive: dict = {}
    python = [sys.executable, "-I", "-S", "-c", f"print({TRIVIAL})"]
    bwrap = isolation.bwrap_path()
    if bwrap:
        command = isolation.bwrap_command(python, preload=[], scratch_mb=64)
        naive["bwrap_per_call_ms"] = _stats_ms(
            _time_calls(lambda: subprocess.run(command, capture_output=True, env={}), 20)
        )
    if os.geteuid() == 0:
        command = [
            "unshare",
            "--net",
            "--pid",
            "--ipc",
            "--uts",
            "--mount",
            "--fork",
            "--mount-proc",
            *python,
        ]
        naive["unshare_per_call_ms"] = _stats_ms(
            _time_calls(lambda: subprocess.run(command, capture_output=True, env={}), 20)
        )
    out["naive_namespaces_per_call"] = naive
    return out


def main() -> None:
    size = max(2, min(8, os.cpu_count() or 2))
    started = time.perf_counter()
    with SandboxPool(size=size) as pool:
        start_s = time.perf_counter() - started
        for _ in range(20):  # warm: runner imports, page cache
            pool.run(TRIVIAL, timeout=10)
        pool_ms = _stats_ms(_time_calls(lambda: pool.run(TRIVIAL, timeout=10), 300))

        from deepcoder_python_executor import PythonTool

        tool = PythonTool(pool=pool)
        for _ in range(10):
            tool.run(TRIVIAL)
        tool_ms = _stats_ms(_time_calls(lambda: tool.run(TRIVIAL), 100))

        naive = [sys.executable, "-c", f"print({TRIVIAL})"]
        naive_ms = _stats_ms(
            _time_calls(lambda: subprocess.run(naive, capture_output=True, env={}), 20)
        )
        naive_fast = [sys.executable, "-I", "-S", "-c", f"print({TRIVIAL})"]
        naive_fast_ms = _stats_ms(
            _time_calls(lambda: subprocess.run(naive_fast, capture_output=True, env={}), 20)
        )
        throughput = {str(c): _throughput(pool, c, 400) for c in (1, 2, 8)}
        checking = _check_bundled(pool)
        stats = pool.stats()
    result = {
        "machine_cpus": os.cpu_count(),
        "pool_size": size,
        "pool_start_seconds": round(start_s, 3),
        "latency_ms": {
            "sandbox_pool": pool_ms,
            "python_tool": tool_ms,
            "naive_subprocess_per_call": naive_ms,
            "naive_subprocess_isolated_no_site": naive_fast_ms,
        },
        "speedup_vs_naive": round(naive_ms["median"] / pool_ms["median"], 1),
        "target_ms": 20,
        "meets_target": pool_ms["median"] < 20,
        "throughput_calls_per_s": throughput,
        "check_bundled": checking,
        "workers_replaced": stats["replaced"],
        "isolation": stats["isolation"],
        "layers": _layers(size),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
