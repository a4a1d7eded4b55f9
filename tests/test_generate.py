"""The generator: both schedules, faults, resume (also after SIGKILL), shards, summary, CLI."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import ThreadingHTTPServer

import pytest
from click.testing import CliRunner

from deepcoder_core.cli import cli
from deepcoder_core.config import load_config
from deepcoder_core.generate import GenerationError, error_kind, generate, parse_shard
from deepcoder_core.io import read_jsonl
from deepcoder_core.problems import bundled_problems
from deepcoder_core.protocols import Completion, Usage
from deepcoder_core.teachers import TeacherError, TeacherStats

from .helpers import ChatHandler

PROBLEMS = bundled_problems()[:4]


def answer_for(messages):
    """Step 0 calls a tool; step 1 gives the problem's canonical solution as the Final Answer."""
    prompt = next(m["content"] for m in messages if m["role"] == "user")
    problem = next(p for p in PROBLEMS if p.prompt.strip() in prompt)
    step = sum(m["role"] == "assistant" for m in messages)
    if step == 0:
        return "Thought: let me try\nAction: python\nAction Input: print(1 + 1)", problem
    return (
        f"Thought: I know the solution\nFinal Answer:\n```python\n{problem.canonical_solution}\n```",
        problem,
    )


class Scripted:
    """A remote-style teacher (no complete_batch) that tracks how many calls overlap."""

    model = "scripted-1"

    def __init__(self, delay=0.0, fail=(), fatal=False):
        self.delay, self.fail, self.fatal = delay, set(fail), fatal
        self.stats = TeacherStats()
        self.calls = []
        self.inflight = self.max_inflight = 0
        self._lock = threading.Lock()

    def complete(self, messages, **params):
        text, problem = answer_for(messages)
        with self._lock:
            self.calls.append((problem.id, params))
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            time.sleep(self.delay)
            if problem.id in self.fail:
                raise TeacherError(
                    "fake: rate limited (HTTP 429)", kind="rate_limit", fatal=self.fatal
                )
            return Completion(text=text, usage=Usage(prompt_tokens=10, completion_tokens=5))
        finally:
            with self._lock:
                self.inflight -= 1


class Batched(Scripted):
    """A local-style teacher: generation goes through complete_batch."""

    def __init__(self):
        super().__init__()
        self.batches = []

    def complete_batch(self, batch, **params):
        self.batches.append(len(batch))
        return [super(Batched, self).complete(m, **params) for m in batch]


def config(**generation):
    cfg = load_config(overrides=["tools.enabled=[]", "agent.max_steps=3"])
    for key, value in generation.items():
        setattr(cfg.generation, key, value)
    return cfg


def lines(path):
    return [r for _, r in read_jsonl(path)]


def test_concurrent_schedule_writes_each_pair_once_with_a_summary(tmp_path):
    out = tmp_path / "traj.jsonl"
    teacher = Scripted(delay=0.05)
    summary = generate(
        config(samples_per_problem=2, concurrency=3),
        problems=PROBLEMS,
        out=out,
        teacher=teacher,
        progress=False,
    )
    records = lines(out)
    assert sorted((r["problem_id"], r["sample"]) for r in records) == sorted(
        (p.id, s) for p in PROBLEMS for s in range(2)
    )
    assert teacher.max_inflight == 3  # agents really ran side by side
    assert all(r["success"] and len(r["steps"]) == 2 for r in records)
    assert {r["id"] for r in records} == {f"{p.id}#{s}" for p in PROBLEMS for s in range(2)}
    params = teacher.calls[0][1]
    assert params["stop"] == ["Observation:"] and params["temperature"] == 0.7
    assert records[0]["teacher"]["model"] == "scripted-1"
    on_disk = json.loads(out.with_suffix(".summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert summary["trajectories"] == 8 and summary["success_rate"] == 1.0
    assert summary["tokens"] == {"prompt": 160, "completion": 80, "total": 240}
    category = PROBLEMS[0].category
    assert summary["by_category"][category]["n"] == 2 * sum(
        p.category == category for p in PROBLEMS
    )
    assert sum(v["n"] for v in summary["by_difficulty"].values()) == 8
    assert summary["mean_seconds_per_trajectory"] > 0
    assert out.with_suffix(".config.yaml").exists()


def test_teacher_errors_are_recorded_and_generation_goes_on(tmp_path):
    out = tmp_path / "traj.jsonl"
    bad = PROBLEMS[1].id
    summary = generate(
        config(concurrency=2),
        problems=PROBLEMS,
        out=out,
        teacher=Scripted(fail=[bad]),
        progress=False,
    )
    by_id = {r["problem_id"]: r for r in lines(out)}
    assert len(by_id) == 4
    assert (
        by_id[bad]["error"].startswith("teacher error (rate_limit)") and not by_id[bad]["success"]
    )
    assert summary["errors_by_kind"] == {"teacher:rate_limit": 1}
    assert summary["teacher_failed_this_run"] == 1 and summary["success"] == 3


def test_a_fatal_teacher_error_stops_generation(tmp_path):
    out = tmp_path / "traj.jsonl"
    with pytest.raises(GenerationError, match="rate limited"):
        generate(
            config(concurrency=1),
            problems=PROBLEMS,
            out=out,
            teacher=Scripted(fail=[PROBLEMS[0].id], fatal=True),
            progress=False,
        )
    assert PROBLEMS[0].id not in {r["problem_id"] for r in lines(out)}


def test_local_teachers_step_all_active_agents_together(tmp_path):
    out = tmp_path / "traj.jsonl"
    teacher = Batched()
    generate(config(concurrency=3), problems=PROBLEMS, out=out, teacher=teacher, progress=False)
    # 4 agents of 2 steps, 3 at a time: [3, 3] then the 4th alone for its 2 steps.
    assert teacher.batches == [3, 3, 1, 1]
    assert len(lines(out)) == 4 and all(r["success"] for r in lines(out))


def test_resume_skips_written_pairs_and_drops_a_truncated_line(tmp_path):
    out = tmp_path / "traj.jsonl"
    generate(config(), problems=PROBLEMS[:2], out=out, teacher=Scripted(), progress=False)
    with open(out, "a") as handle:
        handle.write('{"problem_id": "' + PROBLEMS[2].id + '", "sam')  # a write cut by a kill
    teacher = Scripted()
    summary = generate(config(), problems=PROBLEMS, out=out, teacher=teacher, progress=False)
    assert {c[0] for c in teacher.calls} == {PROBLEMS[2].id, PROBLEMS[3].id}
    assert summary["skipped_existing"] == 2 and summary["written_this_run"] == 2
    pairs = [(r["problem_id"], r["sample"]) for r in lines(out)]
    assert sorted(pairs) == sorted((p.id, 0) for p in PROBLEMS)
    generate(
        config(), problems=PROBLEMS[:1], out=out, resume=False, teacher=Scripted(), progress=False
    )
    assert len(lines(out)) == 1  # --no-resume starts afresh


def test_resume_generates_again_a_line_that_is_not_a_trajectory(tmp_path):
    out = tmp_path / "traj.jsonl"
    generate(config(), problems=PROBLEMS[:2], out=out, teacher=Scripted(), progress=False)
    first, second = out.read_text().splitlines()
    broken = {**json.loads(second), "success": 1}
    out.write_text(first + "\n" + json.dumps(broken) + "\n")
    teacher = Scripted()
    summary = generate(config(), problems=PROBLEMS[:2], out=out, teacher=teacher, progress=False)
    assert {c[0] for c in teacher.calls} == {broken["problem_id"]}
    assert summary["trajectories"] == 2 and summary["success"] == 2
    assert summary["unreadable_lines"] == [f"{out}:2: field success has type int, expected bool"]


def test_shards_partition_the_problems(tmp_path):
    seen = []
    for i in range(2):
        out = tmp_path / f"shard{i}.jsonl"
        generate(
            config(), problems=PROBLEMS, out=out, shard=(i, 2), teacher=Scripted(), progress=False
        )
        seen.append({r["problem_id"] for r in lines(out)})
    assert seen[0] | seen[1] == {p.id for p in PROBLEMS} and not seen[0] & seen[1]
    assert parse_shard("1/4") == (1, 4)
    for bad in ("4/4", "x", "1/0"):
        with pytest.raises(ValueError, match="--shard"):
            parse_shard(bad)


def test_error_kinds():
    assert error_kind("teacher error (auth): groq: authentication failed") == "teacher:auth"
    assert error_kind("no Final Answer after max_steps=3 steps") == "max_steps"
    assert error_kind(None) is None


# ---------------------------------------------------------------------------- command line


class FakeOpenAI(ChatHandler):
    """An OpenAI-compatible chat endpoint answering after `delay` seconds with a Final Answer."""

    text = "Thought: simple\nFinal Answer:\n```python\ndef solve():\n    return 1\n```"
    delay = 0.1


@pytest.fixture
def openai_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_cli_bad_configuration_is_one_line_and_exit_2(tmp_path, monkeypatch):
    monkeypatch.delenv("GROQ_API_KEY", raising=False)
    runner = CliRunner()
    out = str(tmp_path / "t.jsonl")
    result = runner.invoke(cli, ["generate", "--teacher", "groq", "--out", out])
    assert result.exit_code == 2 and "GROQ_API_KEY is not set" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(cli, ["generate", "--teacher", "gorq", "--out", out])
    assert result.exit_code == 2 and "did you mean 'groq'" in result.output
    result = runner.invoke(cli, ["generate", "--teacher", "replay", "--out", out, "--shard", "3/2"])
    assert result.exit_code == 2 and "--shard" in result.output


def test_cli_exits_1_when_every_trajectory_failed(tmp_path):
    out = tmp_path / "t.jsonl"
    closed = "http://127.0.0.1:9/v1"  # the discard port: nothing listens
    args = [
        "generate",
        "--teacher",
        "openai",
        "--out",
        str(out),
        "--no-progress",
        "--set",
        f"teacher.options={{base_url: '{closed}', max_retries: 0}}",
        "--set",
        "tools.enabled=[]",
        "--set",
        "generation.split=eval",
        "--concurrency",
        "4",
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    assert (
        "every trajectory of this run failed" in result.output
        and "teacher:connection" in result.output
    )
    assert all(r["error"].startswith("teacher error (connection)") for r in lines(out))


def test_sigkill_mid_run_then_resume_gives_each_pair_exactly_once(tmp_path, openai_server):
    out = tmp_path / "t.jsonl"
    args = [
        "generate",
        "--teacher",
        "openai",
        "--out",
        str(out),
        "--no-progress",
        "--set",
        f"teacher.options.base_url={openai_server}",
        "--set",
        "tools.enabled=[]",
        "--set",
        "generation.split=null",
        "--samples-per-problem",
        "2",
        "--concurrency",
        "2",
    ]
    expected = {(p.id, s) for p in bundled_problems() for s in range(2)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "deepcoder_core", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + 60
        while not (out.exists() and out.read_bytes().count(b"\n") >= 3):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the generator wrote nothing in 60 s"
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    before = out.read_bytes().count(b"\n")
    assert 3 <= before < len(expected)
    result = CliRunner().invoke(cli, [*args, "--concurrency", "16"])
    assert result.exit_code == 0, result.output
    pairs = [(r["problem_id"], r["sample"]) for r in lines(out)]
    assert len(pairs) == len(set(pairs)) and set(pairs) == expected
