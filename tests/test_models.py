import pytest
import torch

from deepcoder_core import models


def test_prune_layers_keeps_chosen_layers_and_runs():
    teacher = models.random_causal_lm(
        models.tiny_qwen3_config() | {"num_hidden_layers": 4, "vocab_size": 512}
    )
    student = models.prune_layers(teacher, [0, 3])
    assert student.config.num_hidden_layers == 2
    assert teacher.config.num_hidden_layers == 4  # the teacher is untouched
    kept = student.get_decoder().layers[1].mlp.up_proj.weight
    assert torch.equal(kept, teacher.get_decoder().layers[3].mlp.up_proj.weight)
    out = student.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 6)


@pytest.mark.parametrize("layers", [[], [0, 0], [7]])
def test_prune_layers_rejects_bad_indices(layers):
    teacher = models.random_causal_lm(models.tiny_qwen3_config() | {"vocab_size": 512})
    with pytest.raises(ValueError, match="student.init.from_teacher.layers"):
        models.prune_layers(teacher, layers)


def test_random_model_needs_model_type():
    with pytest.raises(ValueError, match="model_type"):
        models.random_causal_lm({"hidden_size": 8})


def test_tiny_moe_reports_router_loss():
    model = models.random_causal_lm(models.tiny_qwen3_config(moe=True) | {"vocab_size": 512})
    ids = torch.tensor([[1, 2, 3, 4]])
    out = model(ids, labels=ids)
    assert out.aux_loss is not None and torch.isfinite(out.aux_loss)


def test_qwen3_tokenizer_is_real():
    tokenizer = models.load_tokenizer(models.qwen3_tokenizer_path())
    assert len(tokenizer) == 151669
    assert tokenizer.chat_template


@pytest.mark.slow
def test_default_teacher_converts_once_and_generates(tmp_path):
    path = models.default_teacher_path(tmp_path)
    assert (path / "model.safetensors").exists()
    assert models.default_teacher_path(tmp_path) == path  # cached: no second conversion
    model, tokenizer = models.load_causal_lm(path), models.load_tokenizer(path)
    assert model.config.num_hidden_layers == 30
    batch = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Say hi"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**batch, max_new_tokens=5, do_sample=False)
    assert tokenizer.decode(out[0, batch["input_ids"].shape[1] :]).strip()


def test_one_resolver_puts_the_default_model_in_the_configured_cache(tmp_path):
    """Student building, the white-box teacher and the hf plugin all resolve into paths.cache."""
    import deepcoder_hf

    from deepcoder_core.config import load_config
    from deepcoder_core.distill.student import teacher_model_path

    default = tmp_path / "models" / "SmolLM2-135M-Instruct"
    default.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):  # as if converted already
        (default / name).write_text("{}")
    config = load_config(None, [f"paths.cache={tmp_path}"])
    assert models.resolve_model_path(None, config.paths.cache) == str(default)
    assert models.resolve_model_path("smollm2", tmp_path) == str(default)
    assert models.resolve_model_path("some/folder", tmp_path) == "some/folder"
    assert teacher_model_path(config) == str(default)
    assert deepcoder_hf.HFTeacher(cache=config.paths.cache).path == str(default)
    assert models.resolve_tokenizer_path("qwen3", tmp_path) == str(models.qwen3_tokenizer_path())
    assert models.resolve_tokenizer_path(None, tmp_path) == str(default)


def test_shared_tokenizers_are_loaded_once_and_fresh_ones_are_not(tmp_path):
    path = models.qwen3_tokenizer_path()
    shared = models.load_tokenizer(path, shared=True)
    assert models.load_tokenizer(path, shared=True) is shared
    assert models.load_tokenizer(path) is not shared
