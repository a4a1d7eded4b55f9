"""The fast paths of processing: chat-template rendering and prompt-once encoding must give
exactly what ``apply_chat_template`` and whole-text encoding give, and keep the sandbox."""

import copy
from types import SimpleNamespace

import jinja2
import numpy as np
import pytest

from deepcoder_core.chat_template import ChatRenderer
from deepcoder_core.encoding import PromptEncoder, arrays
from deepcoder_core.models import qwen3_tokenizer_path
from deepcoder_core.process import fast_tokenizer
from deepcoder_core.spans import build_messages, parse_record, prompt_end, render

from .trajectory_factory import trajectory


@pytest.fixture(scope="module")
def tok():
    return fast_tokenizer(str(qwen3_tokenizer_path()))


def openai_chat(i):
    """A chat with tool calls, tool results, thinking and non-ASCII text."""
    return [
        {"role": "system", "content": "You are a careful coder."},
        {"role": "user", "content": f"Problem {i}: reverse «{'é' * (i % 3)}» 🙂"},
        {
            "role": "assistant",
            "content": "<think>\nTry it first.\n</think>\n\nLet me run it.",
            "tool_calls": [
                {"type": "function", "function": {"name": "python", "arguments": '{"code": "1"}'}}
            ],
        },
        {"role": "tool", "content": f"{i}\n"},
        {"role": "assistant", "content": "Final Answer: done"},
    ]


def test_renderer_equals_apply_chat_template(tok):
    chats = [
        build_messages(parse_record(trajectory(i, seed=5)).segments, tools=True) for i in range(60)
    ]
    chats += [openai_chat(i) for i in range(10)]
    renderer = ChatRenderer(tok)
    assert renderer.render(chats) == tok.apply_chat_template(chats, tokenize=False)
    assert renderer.template is not None  # the fast path was used, not the fallback


def test_renderer_without_a_template_uses_chatml(tok):
    bare = copy.copy(tok)
    bare.chat_template = None
    chats = [openai_chat(1)[:2]]
    text = ChatRenderer(bare).render(chats)[0]
    assert text == "<|im_start|>system\nYou are a careful coder.<|im_end|>\n" + (
        "<|im_start|>user\nProblem 1: reverse «é» 🙂<|im_end|>\n"
    )


def test_renderer_falls_back_for_good_when_it_disagrees(tok):
    renderer = ChatRenderer(tok)

    class Wrong:
        def render(self, **_):
            return "not what the tokenizer renders"

    renderer.template = Wrong()
    chats = [openai_chat(2)]
    assert renderer.render(chats) == tok.apply_chat_template(chats, tokenize=False)
    assert renderer.template is None


@pytest.mark.parametrize(
    "template",
    [
        "{{ messages[0].content.__class__.__mro__[1].__subclasses__() }}",
        "{{ messages.append(1) }}",
        "{% set _ = messages[0].update({'role': 'x'}) %}{{ messages[0].role }}",
        "{{ '{0.__class__.__mro__}'.format(messages[0].content) }}",
    ],
)
def test_renderer_keeps_the_sandbox(tok, template):
    evil = copy.copy(tok)
    evil.chat_template = template
    renderer = ChatRenderer(evil)
    assert renderer.template is not None
    with pytest.raises(jinja2.exceptions.SecurityError):
        renderer._one([{"role": "user", "content": "hi {role}"}])


def test_prompt_encoder_equals_whole_encoding(tok):
    records = [trajectory(i, seed=3) for i in range(80)]
    parsed = [parse_record(r) for r in records]
    texts = [render(p.segments, tok) for p in parsed]
    ends = [prompt_end(t, p.segments) for t, p in zip(texts, parsed, strict=True)]
    assert all(ends)
    encoder = PromptEncoder(tok)
    got = encoder.encode(texts[:40], ends[:40]) + encoder.encode(texts[40:], ends[40:])
    for text, (ids, offsets) in zip(texts, got, strict=True):
        whole_ids, whole_offsets = arrays(
            tok.backend_tokenizer.encode(text, add_special_tokens=False)
        )
        assert np.array_equal(ids, whole_ids) and np.array_equal(offsets, whole_offsets)
    assert encoder.enabled
    # four distinct prompts in 80 chats: most prompt tokens came from the cache
    assert 0.2 < encoder.reused_tokens / encoder.tokens < 0.6


def test_prompt_encoder_without_a_prompt_end_encodes_whole(tok):
    encoder = PromptEncoder(tok)
    text = "<|im_start|>user\nhi<|im_end|>\n"
    ((ids, offsets),) = encoder.encode([text], [0])
    assert ids.tolist() == tok.backend_tokenizer.encode(text, add_special_tokens=False).ids
    assert encoder.reused_tokens == 0 and not encoder.cache


def test_prompt_encoder_switches_off_when_a_cut_changes_tokens(tok, caplog):
    encoder = PromptEncoder(tok)
    prompt = "<|im_start|>user\nhi<|im_end|>\n"
    text = prompt + "<|im_start|>assistant\nok<|im_end|>\n"
    encoder.cache[prompt] = (np.array([1, 2], np.int32), np.array([[0, 1], [1, 2]], np.int64))
    ((ids, _),) = encoder.encode([text], [len(prompt)])
    assert ids.tolist() == tok.backend_tokenizer.encode(text, add_special_tokens=False).ids
    assert not encoder.enabled and "encoding chats whole" in caplog.text


def test_prompt_encoder_needs_special_tokens_that_strip_nothing(tok):
    class Added:
        def __init__(self, content, lstrip):
            self.content, self.lstrip, self.special, self.normalized = content, lstrip, True, False

    def fake(lstrip):
        added = {0: Added("<|im_start|>", lstrip=lstrip)}
        return SimpleNamespace(backend_tokenizer=tok.backend_tokenizer, added_tokens_decoder=added)

    assert PromptEncoder(fake(lstrip=False)).enabled
    assert not PromptEncoder(fake(lstrip=True)).enabled
