"""Teacher `ct2`: a local causal LM decoded by CTranslate2, run in-process.

It takes the models teacher `hf` takes (a transformers folder; default SmolLM2-135M-Instruct,
offline, through :func:`deepcoder_core.resolve_model_path`) and decodes them 2-4x faster on
CPU. A folder is converted once to CTranslate2's format under ``<cache>/ct2/`` (float32
weights; ``compute_type`` picks int8 or float32 at load time) and checked before it is
used: the converted model's log-probabilities on a probe chat and its greedy continuation
must be within ``LOGPROB_TOLERANCE`` of transformers' (float32), and its vocabulary must
map every token as the tokenizer does. A failed check is an error, never a silently wrong
model. A changed folder (config, weight files, tokenizer) gets a new conversion, and the
older one of that folder is removed.

``complete_batch`` decodes up to ``max_batch_size`` chats in one ``generate_batch`` call;
the shared system prompt is CTranslate2's static prompt, whose state the engine computes
once and reuses for every later call. A row stops at an end token, at ``max_new_tokens``,
or the step its text holds a stop string (the engine's per-token callback). Temperature 0
is greedy; ``seed`` makes sampling reproducible (an unseeded call continues the engine's
sampler, which a process seeds at random). ``score`` returns next-token
log-probabilities from a float32 copy (``score_compute_type``): int8 log-probabilities are
off by KL 0.011 nats on average (0.33 at worst) on SmolLM2, too coarse for distillation.
The engine keeps no KV cache between calls beyond the static prompt, so an agent's earlier
steps are recomputed at each step (in one batched pass over the common prompt length).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path
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
LOGPROB_TOLERANCE = 1e-3  # nats, max |log p_ct2 - log p_transformers| (measured 7e-5 on SmolLM2)
_MANIFEST = "deepcoder-conversion.json"
_PROBE = [{"role": "user", "content": "Write a Python function that returns the sum of a list."}]
_PROBE_NEW_TOKENS = 8


class CT2Teacher:
    """A local causal LM on CTranslate2: batched chat generation and next-token log-probabilities."""

    def __init__(
        self,
        model: str | None = None,
        device: str = "cpu",
        compute_type: str = "int8",
        score_compute_type: str = "float32",
        max_batch_size: int = 8,
        chat_template_kwargs: dict[str, Any] | None = None,
        max_new_tokens: int = 256,
        prefix_cache: bool = True,
        min_prefix_tokens: int = 32,
        threads: int | None = None,
        cache: str | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"teacher 'ct2': max_batch_size must be >= 1, got {max_batch_size}")
        self._model_arg = model
        self.cache = cache  # the deepcoder cache (paths.cache); None: $DEEPCODER_CACHE or ~/.cache
        self.device = device
        self.compute_type = compute_type
        self.score_compute_type = score_compute_type
        self.max_batch_size = max_batch_size
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.default_max_new_tokens = max_new_tokens
        self.prefix_cache = prefix_cache
        self.min_prefix_tokens = min_prefix_tokens
        # one OpenMP thread per core this process may use (torch's default too)
        usable = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
        self.threads = threads or (len(usable) if usable else os.cpu_count() or 1)
        self._prefixes: dict[str, list[int]] = {}  # system message -> its tokens
        self.stats = TeacherStats()
        self._path: str | None = None
        self._converted: Path | None = None
        self._tokenizer: Any = None
        self._end_ids: set[int] | None = None
        self._generators: dict[str, Any] = {}  # compute type -> ctranslate2.Generator
        self._sampled = False  # whether the generation engine's sampler has drawn yet
        self._lock = threading.Lock()  # one engine call at a time; it uses every core already
        self.model = str(model) if model else "SmolLM2-135M-Instruct"

    def __repr__(self) -> str:
        return f"CT2Teacher(model={self.model!r}, compute_type={self.compute_type!r})"

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

            self._tokenizer = _loading(load_tokenizer, self.path)
        return self._tokenizer

    @property
    def converted_path(self) -> Path:
        """The checked CTranslate2 conversion of the model folder (converted on first use)."""
        if self._converted is None:
            self._converted = converted_model(self.path, self.cache)
        return self._converted

    def generator(self, compute_type: str | None = None) -> Any:
        """The engine at ``compute_type`` (default: the teacher's), loaded once."""
        compute_type = compute_type or self.compute_type
        if compute_type not in self._generators:
            ctranslate2 = _ctranslate2()
            self._generators[compute_type] = _loading(
                ctranslate2.Generator,
                str(self.converted_path),
                device=self.device,
                compute_type=compute_type,
                intra_threads=self.threads,
            )
        return self._generators[compute_type]

    @property
    def _ends(self) -> set[int]:
        if self._end_ids is None:
            self._end_ids = _end_ids(self.tokenizer, self.path)
        return self._end_ids

    # ------------------------------------------------------------------ generation

    def complete(self, messages: list[dict[str, Any]], **params: Any) -> Completion:
        return self.complete_batch([messages], **params)[0]

    def complete_batch(self, batch: list[list[dict[str, Any]]], **params: Any) -> list[Completion]:
        """One completion per chat, generated ``max_batch_size`` chats at a time."""
        unknown = set(params) - _PARAMS
        if unknown:
            raise TypeError(f"teacher 'ct2': unknown parameters {sorted(unknown)}")
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
        tokenizer = self.tokenizer
        # The chat template already holds the special tokens.
        rows = [tokenizer(self.prompt_text(m), add_special_tokens=False).input_ids for m in chats]
        prefix = self._shared_prefix(chats, rows)
        n = len(prefix)
        temperature = float(params.get("temperature") or 0.0)
        max_new = int(
            params.get("max_new_tokens") or params.get("max_tokens") or self.default_max_new_tokens
        )
        stop = list(params.get("stop") or [])
        ends = self._ends
        generated: list[list[int]] = [[] for _ in rows]
        stopped = _stop_check(tokenizer, stop)

        def on_token(step: Any) -> bool:
            """Per generated token; True stops this row (the engine drops it from the batch)."""
            row = generated[step.batch_id]
            row.append(step.token_id)
            return step.token_id not in ends and stopped(row)

        options: dict[str, Any] = {
            "max_length": max_new,
            "include_prompt_in_result": False,  # the prompt is forwarded at once, not step by step
            "end_token": sorted(ends),
            "callback": on_token,
            # temperature 0: greedy; else sample from the whole vocabulary cut at top_p
            "sampling_topk": 1 if temperature <= 0 else 0,
            "sampling_topp": float(params.get("top_p") or 1.0),
            "sampling_temperature": temperature if temperature > 0 else 1.0,
        }
        if n:
            options["static_prompt"] = tokenizer.convert_ids_to_tokens(prefix)
        starts = [tokenizer.convert_ids_to_tokens(r[n:]) for r in rows]
        with self._lock:
            if temperature > 0 and params.get("seed") is not None:
                # The engine's sampler takes the seed at its first draw only: a sampler that
                # has drawn already is replaced by a fresh engine (a reload, ~3 s for SmolLM2).
                if self._sampled:
                    self._generators.pop(self.compute_type, None)
                _ctranslate2().set_random_seed(int(params["seed"]))
            self._sampled = self._sampled or temperature > 0
            self.generator().generate_batch(starts, **options)
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

    def _shared_prefix(self, chats: list[list[dict[str, Any]]], rows: list[list[int]]) -> list[int]:
        """The system prompt's tokens when every chat starts with it (the engine's static prompt).

        Every agent call repeats the same system prompt (tools, format): the engine computes
        its state once and reuses it, the way serving engines reuse a shared prefix
        (SGLang's RadixAttention, Zheng et al. 2024).
        """
        if not self.prefix_cache or not all(chats) or chats[0][0].get("role") != "system":
            return []
        key = json.dumps(chats[0][0], sort_keys=True)
        if any(json.dumps(c[0], sort_keys=True) != key for c in chats):
            return []
        if key not in self._prefixes:
            text = self.tokenizer.apply_chat_template(
                [chats[0][0]], tokenize=False, **self.chat_template_kwargs
            )
            self._prefixes[key] = self.tokenizer(text, add_special_tokens=False).input_ids
            while len(self._prefixes) > 4:
                self._prefixes.pop(next(iter(self._prefixes)))
        ids = self._prefixes[key]
        n = len(ids)
        if n < self.min_prefix_tokens or any(len(r) <= n or r[:n] != ids for r in rows):
            return []  # too short to pay off, or the template tokenizes it differently in context
        return ids

    # ------------------------------------------------------------------ white-box scoring

    def score(self, token_ids: Any, top_k: int | None = 64) -> TopK:
        """Next-token log-probabilities ``log softmax(z_i)`` at every position of ``token_ids``.

        Row ``i`` predicts token ``i + 1``. ``top_k=k`` keeps the k largest per row and the
        tail mass ``1 - sum(exp(top-k))``; ``top_k=None`` returns the dense ``[n, V]``
        log-probabilities in ``logprobs`` with empty ``indices``. A 2-D input ``[b, n]``
        gives ``[b, n, k]``. Computed at ``score_compute_type`` (float32 by default), the
        whole sequence at once: memory is ``b x n x V`` floats.
        """
        import numpy as np
        import torch

        ids = torch.as_tensor(token_ids, dtype=torch.long)
        squeeze = ids.dim() == 1
        if squeeze:
            ids = ids.unsqueeze(0)
        scorer = self.generator(self.score_compute_type)
        with self._lock:
            out = scorer.forward_batch(ids.tolist(), return_log_probs=True)
            logp = torch.from_numpy(np.array(out, dtype=np.float32))  # a copy: out is freed
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


# ---------------------------------------------------------------------- conversion


def converted_model(path: str, cache: str | None = None) -> Path:
    """The checked CTranslate2 conversion of the transformers folder ``path``, made on first use.

    Lives at ``<cache>/ct2/<folder id>/<key>``: the folder id is its resolved path, the key
    covers its config, weight and tokenizer files and the ctranslate2 version. Written next
    to its final place and renamed only after the check passes, so a killed or failed
    conversion never leaves a folder that looks usable.
    """
    source = Path(path).expanduser()
    if not (source / "config.json").is_file():
        raise TeacherError(
            f"teacher 'ct2': {path} is not a local model folder (no config.json); "
            "download it first, or use teacher hf for hub ids",
            kind="model_load",
            fatal=True,
        )
    source = source.resolve()
    ctranslate2 = _ctranslate2()
    root = Path(cache or os.environ.get("DEEPCODER_CACHE") or "~/.cache/deepcoder").expanduser()
    home = root / "ct2" / hashlib.sha256(str(source).encode()).hexdigest()[:16]
    target = home / conversion_key(source, ctranslate2.__version__)
    if (target / _MANIFEST).is_file():
        return target
    home.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=home, prefix=".convert-"))
    try:
        out = staging / "model"
        try:
            converter = ctranslate2.converters.TransformersConverter(str(source))
            converter.convert(str(out), quantization=None)
        except Exception as exc:
            raise TeacherError(
                f"teacher 'ct2': cannot convert {source} to CTranslate2 "
                f"({type(exc).__name__}: {_first_line(exc)}); use teacher hf for this model",
                kind="model_load",
                fatal=True,
            ) from exc
        _fill_special_tokens(out)
        report = check_conversion(source, out)
        report.update(source=str(source), ctranslate2=ctranslate2.__version__)
        (out / _MANIFEST).write_text(json.dumps(report, indent=2) + "\n")
        for old in home.iterdir():  # earlier conversions of this folder: stale now
            if not old.name.startswith("."):
                shutil.rmtree(old, ignore_errors=True)
        os.replace(out, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def conversion_key(source: Path, version: str) -> str:
    """What a conversion depends on: the folder's identity, its files' mtimes, the engine version.

    ``model_folder_hash`` reads the config and each weight file's size and first MiB; the
    mtimes also catch a retrain that leaves those bytes unchanged.
    """
    from deepcoder_core import model_folder_hash

    files = sorted(
        f for f in source.iterdir() if f.is_file() and f.suffix in (".json", ".safetensors", ".bin")
    )
    stamp = {f.name: f.stat().st_mtime_ns for f in files}
    blob = json.dumps({"folder": model_folder_hash(source), "files": stamp, "ct2": version})
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _fill_special_tokens(converted: Path) -> None:
    """Name the EOS token where the converter wrote null (Qwen3's tokenizer has no BOS).

    The engine refuses a null token name; it reads BOS only to start an empty prompt, which
    this teacher never sends.
    """
    path = converted / "config.json"
    config = json.loads(path.read_text())
    missing = [k for k in ("bos_token", "unk_token") if k in config and config[k] is None]
    if missing:
        config.update(dict.fromkeys(missing, config["eos_token"]))
        path.write_text(json.dumps(config, indent=2))


def check_conversion(source: Path, converted: Path) -> dict[str, Any]:
    """Compare the conversion with transformers (float32) on a probe; raise if they differ.

    The probe is a short chat prompt followed by transformers' own greedy continuation, so
    the positions that decoding visits are compared too. Checked: the vocabulary maps each
    token id to the tokenizer's string (generation passes tokens as strings), and the
    log-probabilities at every position agree within ``LOGPROB_TOLERANCE``.
    """
    import numpy as np
    import torch

    from deepcoder_core import load_causal_lm, load_tokenizer

    ctranslate2 = _ctranslate2()
    tokenizer = load_tokenizer(source)
    vocabulary = json.loads((converted / "vocabulary.json").read_text())
    expected = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    wrong = [
        i for i, token in enumerate(expected) if i >= len(vocabulary) or vocabulary[i] != token
    ]
    if wrong:
        raise TeacherError(
            f"teacher 'ct2': the conversion of {source} maps token id {wrong[0]} to "
            f"{vocabulary[wrong[0]] if wrong[0] < len(vocabulary) else None!r}, the tokenizer "
            f"to {expected[wrong[0]]!r} ({len(wrong)} ids differ); use teacher hf for this model",
            kind="model_load",
            fatal=True,
        )
    model = load_causal_lm(source, dtype="float32")
    if tokenizer.chat_template:
        text = tokenizer.apply_chat_template(_PROBE, tokenize=False, add_generation_prompt=True)
    else:
        text = _PROBE[0]["content"]
    ids = tokenizer(text, add_special_tokens=False).input_ids
    with torch.inference_mode():
        for _ in range(_PROBE_NEW_TOKENS):
            ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
        reference = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
    del model
    engine = ctranslate2.Generator(str(converted), compute_type="float32")
    logp = torch.from_numpy(np.array(engine.forward_batch([ids], return_log_probs=True)))[0]
    error = float((logp - reference).abs().max())
    if not error <= LOGPROB_TOLERANCE:  # also catches NaN
        raise TeacherError(
            f"teacher 'ct2': the conversion of {source} disagrees with transformers: "
            f"log-probabilities differ by {error:.3g} nats (tolerance {LOGPROB_TOLERANCE}); "
            "use teacher hf for this model",
            kind="model_load",
            fatal=True,
        )
    return {"probe_tokens": len(ids), "max_logprob_error": error, "tolerance": LOGPROB_TOLERANCE}


# ---------------------------------------------------------------------- helpers


def _ctranslate2() -> Any:
    try:
        import ctranslate2
    except ImportError:
        raise TeacherError(
            "teacher 'ct2': the ctranslate2 package is not installed; "
            "`pip install ctranslate2`, or use teacher hf",
            kind="model_load",
            fatal=True,
        ) from None
    return ctranslate2


def _loading(load: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a model/tokenizer load; a failure is fatal for generation (every call would fail)."""
    try:
        return load(*args, **kwargs)
    except TeacherError:
        raise
    except Exception as exc:
        raise TeacherError(
            f"teacher 'ct2': cannot load {args[0] or 'the default model'}: "
            f"{type(exc).__name__}: {_first_line(exc)}",
            kind="model_load",
            fatal=True,
        ) from exc


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else ""


def _end_ids(tokenizer: Any, path: str) -> set[int]:
    """Token ids that end a reply: the tokenizer's EOS and pad, and the generation config's EOS."""
    ends = {tokenizer.eos_token_id, tokenizer.pad_token_id}
    config = Path(path) / "generation_config.json"
    if config.is_file():
        eos = json.loads(config.read_text()).get("eos_token_id")
        ends.update(eos if isinstance(eos, list) else [eos])
    ends.discard(None)
    return ends


def _stop_check(tokenizer: Any, stop: list[str]) -> Any:
    """``stopped(tokens)``: whether a row's generated text holds a stop string yet.

    Only the last few tokens are decoded: a stop string is found the step it completes.
    """
    if not stop:
        return lambda tokens: False
    window = 4 + max(len(s) for s in stop)  # a token is at least one character

    def stopped(tokens: list[int]) -> bool:
        tail = tokenizer.decode(tokens[-window:], skip_special_tokens=True)
        return any(s in tail for s in stop)

    return stopped


@hookimpl
def register_teachers(register):
    register("ct2", CT2Teacher)
