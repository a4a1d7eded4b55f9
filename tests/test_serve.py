"""Server manager: command lines per backend, the lifecycle against a small stdlib HTTP server
run as a ``custom`` backend (fast), the student client's thinking handling, and a real
``transformers serve`` with a tiny Qwen3 model (slow)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from deepcoder_core.cli import cli
from deepcoder_core.serve import (
    ServerError,
    ServerSpec,
    build_command,
    check_backend,
    describe,
    family,
    health,
    pid_alive,
    read_state,
    start_server,
    state_path,
    stop_server,
)

FAKE_SERVER = textwrap.dedent(
    '''
    """An OpenAI-compatible stand-in: /health, /v1/models, /v1/chat/completions."""
    import json, os, signal, subprocess, sys, time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    args = sys.argv[1:]
    port = int(args[args.index("--port") + 1])
    if "--die" in args:
        print("fake server failing on purpose", flush=True)
        sys.exit(3)
    if "--ignore-term" in args:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # a helper child in the same process group, as real servers have (workers, schedulers)
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    requests_log = os.environ.get("FAKE_REQUESTS")

    REPLIES = {
        "inline": {"content": "<think>plan A</think>Thought: go\\nFinal Answer: x"},
        "field": {"content": "Thought: go\\nFinal Answer: x", "reasoning_content": "plan B"},
        "close-only": {"content": "plan C</think>\\nThought: go\\nFinal Answer: x"},
    }

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            print("request", self.path, flush=True)

        def reply(self, code, body):
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/health":
                self.reply(503 if "--never-ready" in args else 200, {"status": "ok"})
            elif self.path == "/v1/models":
                self.reply(200, {"object": "list", "data": [{"id": "fake-model"}]})
            else:
                self.reply(404, {})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if requests_log:
                with open(requests_log, "a") as f:
                    f.write(json.dumps(body) + "\\n")
            mode = body["messages"][-1]["content"]
            message = {"role": "assistant", **REPLIES.get(mode, {"content": "OK"})}
            self.reply(200, {
                "id": "1", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
            })

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
    '''
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def fake(tmp_path):
    script = tmp_path / "fake_server.py"
    script.write_text(FAKE_SERVER)
    model = tmp_path / "model"
    model.mkdir()

    def spec(*flags: str, port: int | None = None) -> ServerSpec:
        command = " ".join(["{python}", str(script), "--port", "{port}", *flags])
        return ServerSpec(
            backend="custom", model=str(model), port=port or free_port(), command=command
        )

    return spec


@pytest.fixture
def states(tmp_path):
    directory = tmp_path / "servers"
    yield directory
    for path in directory.glob("*.json"):  # never leave a server behind, even on failure
        try:
            stop_server(path, grace=1.0)
        except ServerError:
            pass


def wait_for(predicate, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


# ---------------------------------------------------------------------------- command lines


def test_sglang_command_line():
    spec = ServerSpec(
        "sglang",
        "/m/qwen3-moe",
        port=30001,
        reasoning_parser="qwen3",
        tp=2,
        ep_size=2,
        extra_args=["--mem-fraction-static", "0.8"],
    )
    assert build_command(spec) == [
        sys.executable,
        "-m",
        "sglang.launch_server",
        "--model-path",
        "/m/qwen3-moe",
        "--host",
        "127.0.0.1",
        "--port",
        "30001",
        "--reasoning-parser",
        "qwen3",
        "--tp",
        "2",
        "--ep-size",
        "2",
        "--mem-fraction-static",
        "0.8",
    ]
    plain = build_command(ServerSpec("sglang", "/m", port=5))
    assert plain[3:] == ["--model-path", "/m", "--host", "127.0.0.1", "--port", "5"]


def test_vllm_command_line(monkeypatch, tmp_path):
    vllm = tmp_path / "vllm"
    vllm.write_text("#!/bin/sh\n")
    vllm.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin-without-vllm" / "python"))
    spec = ServerSpec("vllm", "/m", port=8001, reasoning_parser="qwen3", tp=2, ep_size=4)
    assert build_command(spec) == [
        str(vllm),
        "serve",
        "/m",
        "--host",
        "127.0.0.1",
        "--port",
        "8001",
        "--reasoning-parser",
        "qwen3",
        "--tensor-parallel-size",
        "2",
        "--enable-expert-parallel",
        "--data-parallel-size",
        "2",
    ]
    with pytest.raises(ServerError, match="multiple of --tp"):
        build_command(ServerSpec("vllm", "/m", tp=2, ep_size=3))


def test_transformers_and_custom_command_lines():
    cmd = build_command(ServerSpec("transformers", "/m", port=9, extra_args=["--device", "cpu"]))
    assert Path(cmd[0]).name == "transformers"
    assert cmd[1:] == ["serve", "/m", "--host", "127.0.0.1", "--port", "9", "--device", "cpu"]
    with pytest.raises(ServerError, match="no tensor or expert parallelism"):
        build_command(ServerSpec("transformers", "/m", tp=2))
    custom = ServerSpec("custom", "/m", port=7, command="llama-server -m {model} --port {port}")
    assert build_command(custom) == ["llama-server", "-m", "/m", "--port", "7"]
    with pytest.raises(ServerError, match="bad template"):
        build_command(ServerSpec("custom", "/m", command="x {nope}"))


def test_missing_backend_model_and_busy_port_are_clear(fake, states, tmp_path):
    if not any(Path(p, "sglang").exists() for p in sys.path):
        with pytest.raises(ServerError, match=r"backend 'sglang' is not installed.*pip install"):
            check_backend(ServerSpec("sglang", "/m"))
    with pytest.raises(ServerError, match="model path /no/such/model does not exist"):
        start_server(ServerSpec("transformers", "/no/such/model"), states)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        spec = fake(port=busy.getsockname()[1])
        with pytest.raises(ServerError, match=f"port {spec.port} on 127.0.0.1 is in use"):
            start_server(spec, states)
    assert not list(states.glob("*.json"))


# ---------------------------------------------------------------------------- lifecycle


def test_start_status_crash_and_stop_leave_no_process(fake, states):
    spec = fake()
    state = start_server(spec, states, timeout=20)
    pid = state["pid"]
    assert state["url"] == f"http://127.0.0.1:{spec.port}/v1"
    assert wait_for(lambda: len(family(pid, pid)) == 2)  # the server and its helper child
    row = describe(read_state(state_path(states, spec.port)))
    assert row["alive"] and row["health"] == "healthy" and row["uptime_s"] >= 0
    with pytest.raises(ServerError, match="already runs on port"):
        start_server(spec, states)

    os.kill(pid, signal.SIGKILL)  # a crash
    assert wait_for(lambda: not pid_alive(pid))
    row = describe(read_state(state_path(states, spec.port)))
    assert row["health"] == "dead" and row["alive"] is False
    result = stop_server(state_path(states, spec.port), grace=2.0)
    assert result["signal"] == "SIGTERM"  # the orphaned helper child was still there
    assert family(pid, pid) == set()
    assert not state_path(states, spec.port).exists()


def test_stop_escalates_to_sigkill(fake, states):
    spec = fake("--ignore-term")
    state = start_server(spec, states, timeout=20)
    started = time.monotonic()
    result = stop_server(state_path(states, spec.port), grace=0.5)
    assert result["signal"] == "SIGKILL"
    assert time.monotonic() - started < 5
    assert family(state["pid"], state["pgid"]) == set()


def test_death_during_startup_shows_log_tail(fake, states):
    with pytest.raises(ServerError) as info:
        start_server(fake("--die"), states, timeout=20)
    message = str(info.value)
    assert "exited during start-up (exit code 3)" in message
    assert "fake server failing on purpose" in message
    assert not list(states.glob("*.json"))


def test_not_ready_times_out_and_cleans_up(fake, states):
    spec = fake("--never-ready")
    with pytest.raises(ServerError, match=r"not ready after 1s \(no answer yet\)"):
        start_server(spec, states, timeout=1)
    assert health("127.0.0.1", spec.port) == "unreachable"
    assert not list(states.glob("*.json"))


def test_watch_restarts_a_crashed_server(fake, states):
    spec = fake()
    state = start_server(spec, states, timeout=20, watch=True, backoff=0.1)
    path = state_path(states, spec.port)
    supervisor = state["watch_pid"]
    assert supervisor and pid_alive(supervisor)
    os.kill(state["pid"], signal.SIGKILL)
    assert wait_for(lambda: read_state(path)["restarts"] == 1)
    new = read_state(path)
    assert new["pid"] != state["pid"]
    assert wait_for(lambda: describe(read_state(path))["health"] == "healthy")
    assert describe(new)["watch"] is True
    assert "restart 1 in 0.1s" in Path(new["log"]).read_text()
    stop_server(path, grace=2.0)
    assert wait_for(lambda: not pid_alive(supervisor), timeout=5)
    assert family(new["pid"], new["pgid"]) == set()


def test_student_client_thinking_through_openai_plugin(fake, states, tmp_path, monkeypatch):
    """The ``openai`` teacher is the student client: ``chat_template_kwargs`` reach the
    server, and thinking (a separate field, inline tags, or only a closing tag) is split."""
    from deepcoder_core.agent import parse_step
    from deepcoder_core.plugins import build

    log = tmp_path / "requests.jsonl"
    monkeypatch.setenv("FAKE_REQUESTS", str(log))
    spec = fake()
    state = start_server(spec, states, timeout=20)
    client = build(
        "teacher",
        "openai",
        base_url=state["url"],
        model="fake-model",
        chat_template_kwargs={"enable_thinking": True},
    )
    expected = {"inline": "plan A", "field": "plan B", "close-only": "plan C"}
    for mode, plan in expected.items():
        completion = client.complete([{"role": "user", "content": mode}], max_new_tokens=8)
        step = parse_step(completion.text, completion.reasoning)
        assert step.reasoning == plan, mode
        assert step.thought == "go" and step.final_answer == "x"
    sent = [json.loads(line) for line in log.read_text().splitlines()]
    assert sent[-1]["chat_template_kwargs"] == {"enable_thinking": True}
    assert sent[-1]["max_tokens"] == 8


def test_cli_start_status_logs_stop(fake, tmp_path):
    spec = fake()
    runner = CliRunner()
    common = ["--set", f"paths.cache={tmp_path / 'cache'}"]
    result = runner.invoke(
        cli,
        [
            "server",
            "start",
            "--backend",
            "custom",
            "--model",
            spec.model,
            "--port",
            str(spec.port),
            "--command",
            spec.command,
            *common,
        ],
    )
    try:
        assert result.exit_code == 0, result.output
        assert f"Ready: http://127.0.0.1:{spec.port}/v1" in result.output
        rows = json.loads(runner.invoke(cli, ["server", "status", "--json", *common]).output)
        assert [(r["port"], r["backend"], r["health"]) for r in rows] == [
            (spec.port, "custom", "healthy")
        ]
        logs = runner.invoke(cli, ["server", "logs", "-n", "3", *common]).output
        assert "request /v1/chat/completions" in logs or "request /health" in logs
    finally:
        stopped = runner.invoke(cli, ["server", "stop", "--port", str(spec.port), *common])
    assert "stopped (SIGTERM)" in stopped.output
    assert "No servers recorded." in runner.invoke(cli, ["server", "status", *common]).output
    missing = runner.invoke(cli, ["server", "stop", "--port", "1", *common])
    assert missing.exit_code == 2 and "no server recorded on port 1" in missing.output


def test_cli_errors_are_one_line(tmp_path):
    runner = CliRunner()
    common = ["--set", f"paths.cache={tmp_path / 'cache'}"]
    cases = {
        "no model to serve: pass --model PATH": ["server", "start", *common],
        "no log for port 1 at": ["server", "logs", "--port", "1", *common],
        "no server recorded on port 1": ["server", "stop", "--port", "1", *common],
        "server.port": ["server", "status", "--set", "server.port=nope"],
    }
    for message, args in cases.items():
        result = runner.invoke(cli, args, catch_exceptions=False)
        assert result.exit_code == 2, (args, result.output)
        assert result.output.startswith("Error: ") and message in result.output, result.output


# ---------------------------------------------------------------------------- real backend


@pytest.mark.slow
def test_real_transformers_serve_tiny_qwen3(tmp_path, states):
    """A real `transformers serve` on a random 2-layer Qwen3 with the real Qwen3 tokenizer."""
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    from deepcoder_core.models import (
        load_tokenizer,
        qwen3_tokenizer_path,
        random_causal_lm,
        tiny_qwen3_config,
    )
    from deepcoder_core.plugins import build

    folder = tmp_path / "tiny-qwen3"
    config = tiny_qwen3_config()
    config.update(
        hidden_size=32, intermediate_size=64, num_attention_heads=2, num_key_value_heads=1
    )
    random_causal_lm(config).save_pretrained(folder)
    load_tokenizer(qwen3_tokenizer_path()).save_pretrained(folder)

    spec = ServerSpec("transformers", str(folder), port=free_port(), extra_args=["--device", "cpu"])
    state = start_server(spec, states, timeout=180, watch=True, backoff=0.2)
    path = state_path(states, spec.port)
    assert describe(read_state(path))["health"] == "healthy"
    client = build(
        "teacher",
        "openai",
        base_url=state["url"],
        model=str(folder),
        chat_template_kwargs={"enable_thinking": False},
    )
    completion = client.complete([{"role": "user", "content": "Hi"}], max_new_tokens=4)
    assert completion.usage.completion_tokens >= 1

    os.kill(state["pid"], signal.SIGKILL)  # crash: dead at once, then restarted by --watch
    assert wait_for(lambda: not pid_alive(state["pid"]))
    assert wait_for(lambda: read_state(path)["restarts"] == 1, timeout=30)
    assert wait_for(lambda: describe(read_state(path))["health"] == "healthy", timeout=180)
    new = read_state(path)
    assert client.complete([{"role": "user", "content": "Hi"}], max_new_tokens=2).text is not None

    assert stop_server(path, grace=30)["signal"] == "SIGTERM"
    assert family(new["pid"], new["pgid"]) == set()
    listing = subprocess.run(["ps", "-eo", "pgid=,stat="], capture_output=True, text=True).stdout
    # a zombie waits for PID 1 to reap it; it holds no resources and runs nothing
    assert [
        line
        for line in listing.splitlines()
        if line.split()[0] == str(new["pgid"]) and not line.split()[1].startswith("Z")
    ] == []


def test_logs_follow_ends_when_the_server_stops(fake, tmp_path):
    import threading

    spec = fake()
    directory = tmp_path / "cache" / "servers"
    state = start_server(spec, directory, timeout=20)

    def later():
        time.sleep(0.5)
        health("127.0.0.1", spec.port)  # a new log line while following
        time.sleep(0.3)
        stop_server(state_path(directory, spec.port), grace=2.0)

    thread = threading.Thread(target=later)
    thread.start()
    result = CliRunner().invoke(
        cli, ["server", "logs", "-n", "1", "-f", "--set", f"paths.cache={tmp_path / 'cache'}"]
    )
    thread.join()
    assert result.exit_code == 0, result.output
    assert "request /health" in result.output.splitlines()[-1]
    assert not pid_alive(state["pid"])
