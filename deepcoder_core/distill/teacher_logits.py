"""Teacher signal for training: a local white-box teacher, and the sparse top-k logit cache.

The cache keeps, for every position ``i`` of every example (position ``i`` predicts token
``i+1``), the teacher's ``k`` most likely next tokens and their log-probabilities, plus the
mass left outside them (``tail = 1 - sum_j exp(logp_j)``); the loss engine completes the
distribution with one tail bucket (the sparse-KD approximation of Raman et al. 2023,
"For distillation, tokens are not all you need"). Layout of a cache folder::

    manifest.json                 fingerprint, dataset fingerprint, teacher, top_k, vocab, shards
    shard-00000.safetensors       offsets int64[m+1], indices int32[n,k], logprobs float16[n,k],
    ...                           tail_mass float32[n]   (n = sum of (length - 1) over m examples)

Shards are written atomically and listed in the manifest as they finish, so a killed run
resumes at the first missing shard. The fingerprint covers the dataset fingerprint, the
teacher identity (model folder: config and weight-file headers; remote: plugin and model
name) and ``top_k``; training refuses a cache whose fingerprint does not match.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from ..config import Config, config_options
from ..io import atomic_write_json
from .data import load_processed
from .errors import CacheError, one_line_errors

SCHEMA = 1
MANIFEST = "manifest.json"


# ---------------------------------------------------------------------------- dataset


def dataset_fingerprint(dataset: Any) -> str:
    """``datasets``' own content fingerprint, plus the row count."""
    return f"{dataset._fingerprint}:{len(dataset)}"


# ---------------------------------------------------------------------------- teachers


def vocab_hash(tokenizer: Any) -> str:
    """A hash of the token -> id map: equal hashes mean the same vocabulary."""
    cached = getattr(tokenizer, "_deepcoder_vocab_hash", None)
    if cached is not None:
        return cached
    items = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    digest = hashlib.sha256(json.dumps(items, ensure_ascii=False).encode()).hexdigest()[:16]
    tokenizer._deepcoder_vocab_hash = digest  # tokenizers are loaded once per folder (cached)
    return digest


def model_folder_hash(path: str | Path) -> str:
    """Identity of a model folder without reading all its weights: config plus weight-file headers.

    Hashes ``config.json``, and for each weight file its name, size and first MiB (which
    holds the safetensors header with every tensor's offsets), so a retrained or
    re-quantised teacher changes the hash while a 60 GB model hashes in milliseconds.
    """
    path = Path(path)
    digest = hashlib.sha256()
    config = path / "config.json"
    if config.exists():
        digest.update(config.read_bytes())
    for weight in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        digest.update(f"{weight.name}:{weight.stat().st_size}".encode())
        with open(weight, "rb") as handle:
            digest.update(handle.read(1 << 20))
    return digest.hexdigest()[:16]


@dataclass
class WhiteBoxTeacher:
    """A local teacher whose logits training reads directly (no grad)."""

    model: Any  # transformers causal LM, eval mode
    tokenizer: Any
    identity: dict[str, Any]  # {name, model, hash}: what the cache fingerprint records

    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device

    @property
    def vocab_size(self) -> int:
        return self.model.get_output_embeddings().weight.shape[0]

    def hidden_states(self, input_ids: Any, attention_mask: Any) -> Any:
        """Final (normalised) hidden states ``[B, L, H]``: logits are ``lm_head`` of these."""
        import torch

        with torch.no_grad():
            out = self.model.get_decoder()(
                input_ids=input_ids.to(self.device),
                attention_mask=attention_mask.to(self.device),
                use_cache=False,
            )
        return out.last_hidden_state

    def logits(self, hidden: Any) -> Any:
        """Teacher logits of some hidden states, float32 (with the model's soft-capping, if any)."""
        import torch

        with torch.no_grad():
            logits = self.model.get_output_embeddings()(hidden).float()
            cap = getattr(self.model.config, "final_logit_softcapping", None)
            if cap:
                logits = cap * torch.tanh(logits / cap)
        return logits


class ScoringTeacher:
    """A teacher plugin that only offers ``score(token_ids, top_k) -> TopK`` (e.g. an SGLang server)."""

    def __init__(self, plugin: Any, identity: dict[str, Any]) -> None:
        self.plugin = plugin
        self.identity = identity
        self.tokenizer = getattr(plugin, "tokenizer", None)


def load_teacher(
    config: Config, teacher: Any = None, *, device: str | None = None
) -> WhiteBoxTeacher | ScoringTeacher:
    """Resolve the teacher for training or caching.

    ``teacher``: None (``config.teacher``), a model folder, a plugin name, or an object
    (a :class:`WhiteBoxTeacher`, or a plugin instance with ``hf_model`` or ``score``).
    The ``hf`` plugin's model is loaded here directly, so training does not depend on how
    that plugin batches generation.
    """
    from .. import models
    from ..plugins import build

    device = device or config.training.teacher_device
    if isinstance(teacher, WhiteBoxTeacher | ScoringTeacher):
        return teacher
    if teacher is not None and not isinstance(teacher, str | os.PathLike):
        return _wrap_plugin(teacher, getattr(teacher, "model", type(teacher).__name__), "object")
    name = config.teacher.name if teacher is None else str(teacher)
    options = dict(config.teacher.options) if teacher is None or name == config.teacher.name else {}
    if Path(name).expanduser().is_dir():
        path = str(Path(name).expanduser().resolve())
        return _local_teacher(path, device, options.get("dtype", "float32"))
    if name == "hf":
        path = models.resolve_model_path(options.get("model"), config.paths.cache)
        return _local_teacher(path, device, options.get("dtype", "float32"))
    return _wrap_plugin(build("teacher", name, **options), options.get("model", name), name)


def _local_teacher(path: str, device: str, dtype: str) -> WhiteBoxTeacher:
    from .. import models

    model = models.load_causal_lm(path, dtype=dtype, device=device)
    model.requires_grad_(False)
    identity = {"name": "hf", "model": path, "hash": model_folder_hash(path)}
    return WhiteBoxTeacher(model, models.load_tokenizer(path, shared=True), identity)


def _wrap_plugin(plugin: Any, model_name: str, name: str) -> WhiteBoxTeacher | ScoringTeacher:
    hf_model = getattr(plugin, "hf_model", None)
    if hf_model is not None:
        source = getattr(hf_model, "name_or_path", "") or str(model_name)
        digest = model_folder_hash(source) if Path(source).is_dir() else None
        identity = {"name": name, "model": source, "hash": digest}
        hf_model.requires_grad_(False)
        return WhiteBoxTeacher(hf_model.eval(), plugin.tokenizer, identity)
    if hasattr(plugin, "score"):
        return ScoringTeacher(plugin, {"name": name, "model": str(model_name), "hash": None})
    raise CacheError(
        f"teacher '{name}' is black-box (no logits, no score()): train with a loss that uses "
        "labels (e.g. --loss ce), or use a white-box teacher for distribution losses"
    )


# ---------------------------------------------------------------------------- top-k


def topk_from_logits(logits: Any, k: int) -> tuple[Any, Any, Any]:
    """``(indices int32 [n,k], logprobs float32 [n,k], tail_mass float32 [n])`` of logits ``[n, V]``."""
    import torch

    logp = torch.log_softmax(logits.float(), dim=-1)
    values, indices = torch.topk(logp, min(k, logp.shape[-1]), dim=-1)
    tail = (1.0 - values.exp().sum(-1)).clamp_min(0.0)
    return indices.to(torch.int32), values, tail


def _score_examples(
    teacher: WhiteBoxTeacher | ScoringTeacher, rows: list[list[int]], k: int, chunk: int = 512
) -> list[tuple[Any, Any, Any]]:
    """Top-k of positions ``0..len-2`` of each example (one batched forward for white-box teachers)."""
    import torch

    out: list[tuple[Any, Any, Any]] = []
    if isinstance(teacher, ScoringTeacher):
        for row in rows:
            top = teacher.plugin.score(row, k)
            n = len(row) - 1
            out.append(
                (
                    torch.as_tensor(top.indices)[:n].to(torch.int32),
                    torch.as_tensor(top.logprobs)[:n].float(),
                    torch.as_tensor(top.tail_mass)[:n].float(),
                )
            )
        return out
    longest = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), longest, dtype=torch.long)
    mask = torch.zeros(len(rows), longest, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    hidden = teacher.hidden_states(ids, mask)
    for i, row in enumerate(rows):
        parts = []
        # Chunks keep the float32 logits at O(chunk x V) memory, whatever the sequence length.
        for start in range(0, len(row) - 1, chunk):
            end = min(start + chunk, len(row) - 1)
            parts.append(topk_from_logits(teacher.logits(hidden[i, start:end]), k))
        indices, logprobs, tail = (torch.cat([p[j] for p in parts]).cpu() for j in range(3))
        out.append((indices, logprobs, tail))
    return out


# ---------------------------------------------------------------------------- cache


def cache_fingerprint(dataset_fp: str, identity: dict[str, Any], top_k: int) -> str:
    blob = json.dumps({"dataset": dataset_fp, "teacher": identity, "top_k": top_k}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _read_manifest(out: Path) -> dict[str, Any] | None:
    path = out / MANIFEST
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CacheError(f"{path}: unreadable manifest ({exc}); delete the folder") from None


def cache_teacher_logits(
    config: Config,
    *,
    data: str | Path,
    out: str | Path,
    teacher: Any = None,
    top_k: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Write (or finish) the top-k cache of ``data`` under ``out``; returns the manifest."""
    import torch
    from safetensors.torch import save_file

    out = Path(out)
    section = config.teacher_logits
    k = int(top_k or section.top_k)
    dataset = load_processed(data)
    data_fp = dataset_fingerprint(dataset)
    resolved = load_teacher(config, teacher)
    if resolved.tokenizer is None:
        raise CacheError("the teacher has no tokenizer to fingerprint; use a white-box teacher")
    fingerprint = cache_fingerprint(data_fp, resolved.identity, k)
    manifest = _read_manifest(out)
    if manifest is not None and manifest.get("fingerprint") != fingerprint:
        raise CacheError(
            f"{out / MANIFEST}: holds a cache for another dataset, teacher or top_k "
            f"(fingerprint {manifest.get('fingerprint')}, wanted {fingerprint}); "
            "choose another --out or delete that folder"
        )
    if manifest is None:
        manifest = {
            "schema": SCHEMA,
            "fingerprint": fingerprint,
            "dataset": str(Path(data).resolve()),
            "dataset_fingerprint": data_fp,
            "num_examples": len(dataset),
            "teacher": resolved.identity,
            "top_k": k,
            "vocab_size": resolved.vocab_size if isinstance(resolved, WhiteBoxTeacher) else None,
            "vocab_hash": vocab_hash(resolved.tokenizer),
            "shard_size": section.shard_size,
            "shards": [],
            "complete": False,
        }
    done = {s["file"] for s in manifest["shards"] if (out / s["file"]).exists()}
    manifest["shards"] = [s for s in manifest["shards"] if s["file"] in done]
    shard_size = manifest["shard_size"]
    starts = range(0, len(dataset), shard_size)
    todo = [s for s in starts if f"shard-{s // shard_size:05d}.safetensors" not in done]
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    bar = _progress(progress, len(dataset), len(dataset) - len(todo) * shard_size)
    for start in todo:
        end = min(start + shard_size, len(dataset))
        name = f"shard-{start // shard_size:05d}.safetensors"
        rows = dataset.select(range(start, end))["input_ids"]
        results = []
        for b in range(0, len(rows), section.batch_size):
            batch = [list(r) for r in rows[b : b + section.batch_size]]
            results.extend(_score_examples(resolved, batch, k))
            if bar is not None:
                bar.update(len(batch))
        lengths = [r[0].shape[0] for r in results]
        tensors = {
            "offsets": torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()]),
            "indices": torch.cat([r[0] for r in results]).contiguous(),
            "logprobs": torch.cat([r[1] for r in results]).to(torch.float16).contiguous(),
            "tail_mass": torch.cat([r[2] for r in results]).float().contiguous(),
        }
        tmp = out / f".{name}.tmp"
        save_file(tensors, str(tmp))
        os.replace(tmp, out / name)
        manifest["shards"].append(
            {"file": name, "start": start, "end": end, "positions": sum(lengths)}
        )
        manifest["shards"].sort(key=lambda s: s["start"])
        atomic_write_json(out / MANIFEST, manifest)
    if bar is not None:
        bar.close()
    manifest["complete"] = len(manifest["shards"]) == len(starts)
    manifest["seconds"] = round(time.perf_counter() - started, 3)
    atomic_write_json(out / MANIFEST, manifest)
    return manifest


def _progress(enabled: bool, total: int, initial: int) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=max(0, initial), desc="teacher top-k", unit="ex")


class TeacherLogitsCache:
    """Reads a finished cache; :meth:`check` refuses one made for other data or another teacher."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        manifest = _read_manifest(self.path)
        if manifest is None:
            raise CacheError(
                f"{self.path}: no {MANIFEST}; write the cache with `deepcoder teacher-logits`"
            )
        if not manifest.get("complete"):
            raise CacheError(
                f"{self.path / MANIFEST}: the cache is incomplete "
                f"({len(manifest['shards'])} shards written); re-run `deepcoder teacher-logits` "
                "with the same arguments to finish it"
            )
        self.manifest = manifest
        self.top_k = int(manifest["top_k"])
        self._handles: dict[str, Any] = {}

    def check(self, dataset: Any) -> None:
        """Raise :class:`CacheError` unless the cache was written for exactly this dataset."""
        current = dataset_fingerprint(dataset)
        if self.manifest["dataset_fingerprint"] != current:
            raise CacheError(
                f"{self.path / MANIFEST}: stale teacher-logit cache: written for dataset "
                f"{self.manifest['dataset_fingerprint']} ({self.manifest.get('dataset')}), "
                f"the training data is {current}; re-run `deepcoder teacher-logits`"
            )

    def check_vocab(self, tokenizer: Any, student_vocab_size: int) -> None:
        """Same tokenizer required; a different logits width (vocabulary padding) only warns."""
        if self.manifest["vocab_hash"] != vocab_hash(tokenizer):
            raise CacheError(
                f"{self.path / MANIFEST}: the cache was written with another tokenizer than the "
                "student's; top-k ids only make sense for the same vocabulary"
            )
        width = self.manifest.get("vocab_size")
        if width and width != student_vocab_size:
            warnings.warn(
                f"teacher logits have {width} entries, the student's {student_vocab_size} "
                "(vocabulary padding); ids beyond the student's vocabulary go to the tail mass",
                stacklevel=2,
            )

    def _shard(self, index: int) -> tuple[dict[str, Any], Any]:
        from safetensors import safe_open

        for shard in self.manifest["shards"]:
            if shard["start"] <= index < shard["end"]:
                if shard["file"] not in self._handles:
                    handle = safe_open(str(self.path / shard["file"]), framework="pt")
                    self._handles[shard["file"]] = (handle, handle.get_tensor("offsets"))
                return shard, self._handles[shard["file"]]
        raise CacheError(f"{self.path}: example {index} is not in any shard")

    def example(self, index: int) -> tuple[Any, Any, Any]:
        """``(indices int32 [L-1,k], logprobs float32 [L-1,k], tail_mass float32 [L-1])``."""
        shard, (handle, offsets) = self._shard(index)
        local = index - shard["start"]
        a, b = int(offsets[local]), int(offsets[local + 1])
        return (
            handle.get_slice("indices")[a:b],
            handle.get_slice("logprobs")[a:b].float(),
            handle.get_slice("tail_mass")[a:b],
        )

    def __getstate__(self) -> dict[str, Any]:
        # File handles do not pickle (dataloader workers); they reopen lazily.
        return {**self.__dict__, "_handles": {}}


# ---------------------------------------------------------------------------- command


@click.command("teacher-logits")
@click.option("--data", required=True, type=click.Path(file_okay=False), help="Processed dataset.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Cache folder.")
@click.option("--teacher", help="Teacher plugin name or model folder (default: config teacher).")
@click.option("--top-k", type=int, help="Tokens kept per position (default: teacher_logits.top_k).")
@config_options
def teacher_logits_command(
    data: str,
    out: str,
    teacher: str | None,
    top_k: int | None,
    config_path: str | None,
    overrides: tuple[str, ...],
) -> None:
    """Cache the teacher's top-k next-token log-probabilities for every token of a dataset."""
    from ..config import load_config

    with one_line_errors():
        config = load_config(config_path, overrides, {"teacher_logits.top_k": top_k})
        manifest = cache_teacher_logits(config, data=data, out=out, teacher=teacher)
    positions = sum(s["positions"] for s in manifest["shards"])
    click.echo(
        f"cached top-{manifest['top_k']} teacher log-probs for {manifest['num_examples']} "
        f"examples ({positions} positions, {len(manifest['shards'])} shards) in {out}"
    )
