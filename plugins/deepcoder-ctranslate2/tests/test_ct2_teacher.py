"""The ct2 teacher on a tiny random Llama (real Qwen3 tokenizer), against transformers."""

import json
import sys
from pathlib import Path

import deepcoder_ctranslate2
import pytest

from deepcoder_core.plugins import PluginManager
from deepcoder_core.teachers import TeacherError

torch = pytest.importorskip("torch")
pytest.importorskip("ctranslate2")

SYSTEM = {"role": "system", "content": "You solve problems step by step. " * 12}  # > 32 tokens
CHATS = [
    [SYSTEM, {"role": "user", "content": "Write a function that adds two numbers."}],
    [SYSTEM, {"role": "user", "content": "Reverse a string in Python, and explain it at length."}],
    [{"role": "user", "content": "Hi"}],
]


def tiny_llama_config() -> dict:
    from deepcoder_core.models import tiny_qwen3_config

    config = {**tiny_qwen3_config(), "model_type": "llama"}
    # wide weights give peaked logits: no near-ties for greedy decoding to break differently
    config["initializer_range"] = 0.2
    return config


def save_tiny(path, seed=0):
    from deepcoder_core.models import (
        load_tokenizer,
        qwen3_tokenizer_path,
        random_causal_lm,
    )

    random_causal_lm(tiny_llama_config(), seed=seed).save_pretrained(path)
    load_tokenizer(qwen3_tokenizer_path()).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def teacher(tiny_model, cache):
    manager = PluginManager()
    manager.add(deepcoder_ctranslate2, name="deepcoder-ctranslate2")
    return manager.build(
        "teacher", "ct2", model=tiny_model, cache=cache, compute_type="float32", max_batch_size=2
    )


@pytest.fixture(scope="module")
def reference(tiny_model):
    """Transformers' float32 model of the same folder: greedy tokens and log-probabilities."""
    from deepcoder_core.models import load_causal_lm

    return load_causal_lm(tiny_model)


def greedy(model, ids, steps):
    ids = list(ids)
    with torch.inference_mode():
        for _ in range(steps):
            ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[-steps:]


def prompt_ids(teacher, chat):
    return teacher.tokenizer(teacher.prompt_text(chat), add_special_tokens=False).input_ids


def test_conversion_is_checked_and_recorded(teacher, tiny_model):
    folder = teacher.converted_path
    manifest = json.loads((folder / "deepcoder-conversion.json").read_text())
    assert manifest["source"] == str(Path(tiny_model).resolve())
    assert 0 <= manifest["max_logprob_error"] <= manifest["tolerance"] == 1e-3
    assert (folder / "model.bin").is_file()


def test_greedy_batch_matches_transformers_row_by_row(teacher, reference):
    """Rows of different lengths, the shared system prompt as static prompt, two per call."""
    assert teacher._shared_prefix(CHATS[:2], [prompt_ids(teacher, c) for c in CHATS[:2]])
    out = teacher.complete_batch(CHATS, temperature=0, max_new_tokens=6)
    for completion, chat in zip(out, CHATS, strict=True):
        ids = prompt_ids(teacher, chat)
        expected = greedy(reference, ids, 6)
        assert completion.text == teacher.tokenizer.decode(expected, skip_special_tokens=True)
        assert completion.usage.prompt_tokens == len(ids)
        assert completion.usage.completion_tokens == 6
        assert completion.finish_reason == "length"


def test_an_unfinished_assistant_turn_is_continued(teacher, reference):
    chat = [*CHATS[0], {"role": "assistant", "content": "Thought: add them"}]
    ids = prompt_ids(teacher, chat)
    assert teacher.tokenizer.decode(ids).endswith("Thought: add them")
    out = teacher.complete(chat, temperature=0, max_new_tokens=4)
    assert out.text == teacher.tokenizer.decode(greedy(reference, ids, 4), skip_special_tokens=True)


def test_stop_string_cuts_the_row_where_it_completes(teacher):
    free = teacher.complete(CHATS[0], temperature=0, max_new_tokens=12)
    tokens = teacher.tokenizer(free.text, add_special_tokens=False).input_ids
    assert len(tokens) >= 8
    stop = teacher.tokenizer.decode(tokens[5:7]).strip() or teacher.tokenizer.decode(tokens[5:8])
    cut = teacher.complete(CHATS[0], temperature=0, max_new_tokens=12, stop=[stop])
    assert cut.text == free.text[: free.text.index(stop)]
    assert cut.finish_reason == "stop"
    assert cut.usage.completion_tokens < free.usage.completion_tokens


def test_sampling_is_seeded(teacher):
    def sample(seed):
        out = teacher.complete_batch(CHATS[:2], temperature=1.0, max_new_tokens=8, seed=seed)
        return [c.text for c in out]

    assert sample(3) == sample(3)
    assert sample(3) != sample(4)
    assert sample(3) != [c.text for c in teacher.complete_batch(CHATS[:2], max_new_tokens=8)]


def test_score_topk_and_dense_agree_with_transformers(teacher, reference):
    ids = teacher.tokenizer("def add(a, b): return a + b", add_special_tokens=False).input_ids
    with torch.inference_mode():
        logp = torch.log_softmax(reference(input_ids=torch.tensor([ids])).logits[0].float(), -1)
    top = teacher.score(ids, top_k=5)
    assert top.indices.shape == (len(ids), 5) and top.indices.dtype == torch.int32
    assert torch.allclose(top.logprobs, logp.topk(5, -1).values, atol=1e-4)
    assert torch.equal(top.indices.long(), logp.topk(5, -1).indices)
    assert torch.allclose(top.tail_mass, 1 - logp.topk(5, -1).values.exp().sum(-1), atol=1e-4)
    dense = teacher.score([ids, ids], top_k=None)
    assert dense.logprobs.shape == (2, len(ids), logp.shape[-1]) and dense.indices.numel() == 0
    assert torch.allclose(dense.logprobs[1], logp, atol=1e-4)


def test_conversion_is_reused_and_redone_when_the_weights_change(tmp_path, monkeypatch):
    source = save_tiny(tmp_path / "model", seed=1)
    cache = str(tmp_path / "cache")
    first = deepcoder_ctranslate2.converted_model(source, cache)

    class Refuses:
        def __init__(self, *args):
            raise AssertionError("converted again")

    ctranslate2 = deepcoder_ctranslate2._ctranslate2()
    with monkeypatch.context() as patch:
        patch.setattr(ctranslate2.converters, "TransformersConverter", Refuses)
        assert deepcoder_ctranslate2.converted_model(source, cache) == first
    save_tiny(tmp_path / "model", seed=2)  # a retrained model in the same folder
    second = deepcoder_ctranslate2.converted_model(source, cache)
    assert second != first and second.parent == first.parent
    assert not first.exists()  # the stale conversion is removed
    assert [p.name for p in second.parent.iterdir()] == [second.name]  # no staging left


def test_a_conversion_that_disagrees_is_refused(tmp_path, teacher):
    other = save_tiny(tmp_path / "other", seed=5)
    with pytest.raises(TeacherError, match="disagrees with transformers"):
        deepcoder_ctranslate2.check_conversion(Path(other), teacher.converted_path)


def test_an_unsupported_architecture_is_a_clear_error(tmp_path):
    from deepcoder_core.models import random_causal_lm, tiny_qwen3_config

    random_causal_lm(tiny_qwen3_config(moe=True)).save_pretrained(tmp_path / "moe")
    with pytest.raises(TeacherError, match="teacher 'ct2': cannot convert .*use teacher hf"):
        deepcoder_ctranslate2.converted_model(str(tmp_path / "moe"), str(tmp_path / "cache"))
    assert not any((tmp_path / "cache" / "ct2").rglob("model.bin"))


def test_missing_ctranslate2_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ctranslate2", None)  # import raises ImportError
    fresh = deepcoder_ctranslate2.CT2Teacher(model=save_tiny(tmp_path / "m"), cache=str(tmp_path))
    with pytest.raises(TeacherError, match="ctranslate2 package is not installed") as info:
        fresh.complete(CHATS[2], max_new_tokens=2)
    assert info.value.fatal


def test_a_hub_id_is_refused_with_the_fix(tmp_path):
    with pytest.raises(TeacherError, match="not a local model folder"):
        deepcoder_ctranslate2.converted_model("org/some-model", str(tmp_path))


def test_unknown_parameter_is_an_error(teacher):
    with pytest.raises(TypeError, match="unknown parameters"):
        teacher.complete(CHATS[0], beam_width=3)
