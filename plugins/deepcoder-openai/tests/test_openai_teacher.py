"""The openai teacher against a real `transformers serve` on loopback, and SGLang's /generate wire format."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import deepcoder_openai
import httpx
import pytest
from werkzeug import Response

from deepcoder_core.plugins import PluginManager
from deepcoder_core.teachers import TeacherError

torch = pytest.importorskip("torch")
MESSAGES = [{"role": "user", "content": "Say hi."}]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A 2-layer random Qwen3 with the real Qwen3 tokenizer, saved once per test session."""
    from deepcoder_core.models import (
        load_tokenizer,
        qwen3_tokenizer_path,
        random_causal_lm,
        tiny_qwen3_config,
    )

    path = tmp_path_factory.getbasetemp() / "tiny-qwen3"
    if not (path / "config.json").exists():
        random_causal_lm(tiny_qwen3_config(), seed=0).save_pretrained(path)
        load_tokenizer(qwen3_tokenizer_path()).save_pretrained(path)
    return str(path)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tiny_model, tmp_path_factory):
    """`transformers serve` preloading the tiny model on 127.0.0.1; yields the /v1 base URL."""
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    cli = Path(sys.executable).parent / "transformers"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with open(log, "w") as handle:
        proc = subprocess.Popen(
            [
                str(cli),
                "serve",
                tiny_model,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--device",
                "cpu",
            ],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"transformers serve did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/v1", tiny_model
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_completes_against_transformers_serve(served):
    base_url, model = served
    manager = PluginManager()
    manager.add(deepcoder_openai, name="deepcoder-openai")
    teacher = manager.build("teacher", "openai", base_url=base_url, model=model, max_retries=0)
    done = teacher.complete(
        MESSAGES, temperature=0.5, top_p=0.9, max_new_tokens=5, stop=["Observation:"]
    )
    assert isinstance(done.text, str)
    assert done.usage.prompt_tokens > 0 and 0 < done.usage.completion_tokens <= 5
    assert done.finish_reason in ("stop", "length")
    assert teacher.stats.requests == 1 and teacher.stats.retries == 0


def test_chat_template_kwargs_reach_the_template(served):
    base_url, model = served
    plain = deepcoder_openai.OpenAITeacher(base_url=base_url, model=model)
    no_think = deepcoder_openai.OpenAITeacher(
        base_url=base_url, model=model, chat_template_kwargs={"enable_thinking": False}
    )
    a = plain.complete(MESSAGES, max_new_tokens=1, temperature=0)
    b = no_think.complete(MESSAGES, max_new_tokens=1, temperature=0)
    # Qwen3's template writes an empty <think></think> block when thinking is off.
    assert b.usage.prompt_tokens > a.usage.prompt_tokens


def test_score_on_a_server_without_input_logprobs_is_a_clear_error(served):
    base_url, model = served
    teacher = deepcoder_openai.OpenAITeacher(base_url=base_url, model=model, max_retries=0)
    with pytest.raises(TeacherError, match="gives no input-token logprobs") as info:
        teacher.score([1, 2, 3], top_k=4)
    assert info.value.fatal and "/generate" in str(info.value)


# ---------------------------------------------------------------------------- SGLang wire format


def sglang_generate(request):
    """SGLang's /generate: input_top_logprobs[j] is the distribution of token j (None at j=0)."""
    body = json.loads(request.data)
    ids, k = body["input_ids"], body["top_logprobs_num"]
    assert body["return_logprob"] and body["logprob_start_len"] == 0

    def row(pos):
        return [[-0.1 * (j + 1) - pos, 100 * pos + j, "t"] for j in range(k)]

    meta = {
        "input_token_logprobs": [[None, ids[0], "t"]] + [[-1.0, t, "t"] for t in ids[1:]],
        "input_top_logprobs": [None] + [row(p) for p in range(1, len(ids))],
        "output_top_logprobs": [row(len(ids))],
    }
    return Response(json.dumps({"text": "x", "meta_info": meta}), content_type="application/json")


def test_score_reads_sglang_input_logprobs(httpserver):
    httpserver.expect_request("/generate", method="POST").respond_with_handler(sglang_generate)
    teacher = deepcoder_openai.OpenAITeacher(base_url=httpserver.url_for("/v1"), model="m")
    top = teacher.score(torch.tensor([5, 6, 7]), top_k=2)
    assert top.indices.tolist() == [[100, 101], [200, 201], [300, 301]]  # row i predicts token i+1
    assert top.logprobs[0].tolist() == pytest.approx([-1.1, -1.2])
    assert top.tail_mass.tolist() == pytest.approx((1 - top.logprobs.exp().sum(-1)).tolist())
    with pytest.raises(TeacherError, match="top_k"):
        teacher.score([5, 6], top_k=None)


def test_reasoning_content_and_retry_on_the_openai_wire(httpserver):
    answers = [
        Response(
            json.dumps({"error": {"message": "busy"}}), status=503, headers={"retry-after": "0"}
        ),
        Response(
            json.dumps(
                {
                    "id": "c",
                    "object": "chat.completion",
                    "created": 0,
                    "model": "m",
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {
                                "role": "assistant",
                                "content": "Final Answer: 1",
                                "reasoning_content": "think",
                            },
                        }
                    ],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
                }
            ),
            content_type="application/json",
        ),
    ]
    seen = []

    def handler(request):
        seen.append(json.loads(request.data))
        return answers[len(seen) - 1]

    httpserver.expect_request("/v1/chat/completions").respond_with_handler(handler)
    teacher = deepcoder_openai.OpenAITeacher(
        base_url=httpserver.url_for("/v1"),
        model="m",
        chat_template_kwargs={"enable_thinking": True},
    )
    done = teacher.complete(MESSAGES)
    assert (done.text, done.reasoning) == ("Final Answer: 1", "think")
    assert teacher.stats.retries == 1
    assert seen[0]["chat_template_kwargs"] == {"enable_thinking": True}
