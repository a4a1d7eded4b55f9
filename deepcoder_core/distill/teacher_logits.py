"""Teacher signal for training: a local white-box teacher, and the sparse teacher-logit cache.

The cache keeps, for the positions that train (position ``i`` predicts token ``i+1``; a
position is stored when its span type is in the cache's span set,
:mod:`~deepcoder_core.distill.cache_spans`), one of two sparse teacher distributions:

- ``topk``: the teacher's ``k`` most likely next tokens, their probabilities and the mass
  left outside them (``tail = 1 - sum_j p_j``); the loss engine completes the distribution
  with one tail bucket (the sparse-KD approximation of Raman et al. 2023, "For
  distillation, tokens are not all you need"). Biased: the student never sees the tail's
  shape.
- ``sampled``: ``K`` ids drawn with replacement from the teacher's distribution at the
  loss temperature, ``p~_j = count_j / K`` (Random-Sampling KD of Anshumann et al., ACL
  2025, "Sparse Logit Sampling: Accelerating Knowledge Distillation in LLMs", with the
  proposal equal to the target, so every importance weight is 1). ``E[p~] = p``, so for a
  loss linear in ``p`` -- forward KL's cross-entropy ``-sum_j p_j log q_j`` -- the loss is
  unbiased up to the teacher-entropy constant and its gradient ``softmax(z / T) - p`` is
  unbiased exactly.

Entries are bit-packed (:mod:`~deepcoder_core.distill.cache_format`: about 114 bytes a
top-64 position, ``KL(exact || stored) <= 5.7e-4`` nats); the folder layout and the reader
are in :mod:`~deepcoder_core.distill.teacher_cache`. Scoring runs the teacher over each
whole example, then projects, extracts and moves off the device only the stored positions.

Shards are written atomically and listed in the manifest as they finish, so a killed run
resumes at the first missing shard. The fingerprint covers the dataset fingerprint, the
teacher identity (model folder: config and weight-file headers; remote: plugin and model
name), the format, ``k``, the span set, the sampling temperature and the codec; training
refuses a cache written for another dataset or tokenizer, one whose span set misses a span
type the weighting trains, and a sampled cache drawn at another temperature.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np

from ..config import Config, config_options
from ..io import atomic_write_json
from . import cache_format
from .cache_spans import span_names, stored_positions, stored_spans
from .data import load_processed
from .errors import CacheError, one_line_errors
from .teacher_cache import (
    CODEC,
    FORMATS,
    MANIFEST,
    SCHEMA,
    dataset_fingerprint,
    read_manifest,
    shard_tensors,
    vocab_hash,
)

# ---------------------------------------------------------------------------- teachers


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
    if name in ("hf", "ct2"):
        # a local engine decodes; the teacher's distribution is its model's, read in-process
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


# ---------------------------------------------------------------------------- scoring


def topk_from_logits(logits: Any, k: int) -> tuple[Any, Any, Any]:
    """``(indices int32 [n,k], logprobs float32 [n,k], tail_mass float32 [n])`` of logits ``[n, V]``."""
    import torch

    logp = torch.log_softmax(logits.float(), dim=-1)
    values, indices = torch.topk(logp, min(k, logp.shape[-1]), dim=-1)
    tail = (1.0 - values.exp().sum(-1)).clamp_min(0.0)
    return indices.to(torch.int32), values, tail


def sample_from_logits(logits: Any, draws: int, temperature: float, generator: Any) -> Any:
    """``[n, draws]`` ids drawn with replacement from ``softmax(logits / temperature)``."""
    import torch

    probs = torch.softmax(logits.float() / temperature, dim=-1)
    return torch.multinomial(probs, draws, replacement=True, generator=generator)


@dataclass
class Scoring:
    """What to extract at the stored positions: ``topk`` (k) or ``sampled`` (K draws at T)."""

    format: str
    k: int
    temperature: float = 1.0
    generator: Any = None  # torch.Generator on the teacher's device (sampled)
    chunk: int = 512  # positions projected at once: float32 logits stay O(chunk x V)

    def extract(self, logits: Any) -> tuple[Any, ...]:
        if self.format == "topk":
            return tuple(t.cpu() for t in topk_from_logits(logits, self.k))
        return (sample_from_logits(logits, self.k, self.temperature, self.generator).cpu(),)


def score_examples(
    teacher: WhiteBoxTeacher | ScoringTeacher,
    rows: list[list[int]],
    positions: list[np.ndarray],
    scoring: Scoring,
) -> list[tuple[Any, ...]]:
    """The entries of each example's stored ``positions``: one batched forward over the whole
    context, then logits, extraction and transfer only at those positions."""
    import torch

    out: list[tuple[Any, ...]] = []
    if isinstance(teacher, ScoringTeacher):
        for row, where in zip(rows, positions, strict=True):
            at = torch.as_tensor(where, dtype=torch.long)
            if scoring.format == "topk":
                top = teacher.plugin.score(row, scoring.k)
                out.append(
                    (
                        torch.as_tensor(top.indices)[at].to(torch.int32),
                        torch.as_tensor(top.logprobs)[at].float(),
                        torch.as_tensor(top.tail_mass)[at].float(),
                    )
                )
            else:  # a dense score (top_k=None) holds log-probabilities: tempering them is exact
                dense = torch.as_tensor(teacher.plugin.score(row, None).logprobs)[at]
                out.append(scoring.extract(dense))
        return out
    longest = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), longest, dtype=torch.long)
    mask = torch.zeros(len(rows), longest, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    hidden = teacher.hidden_states(ids, mask)
    for i, where in enumerate(positions):
        picked = hidden[i, torch.as_tensor(where, dtype=torch.long, device=hidden.device)]
        parts = [
            scoring.extract(teacher.logits(picked[start : start + scoring.chunk]))
            for start in range(0, picked.shape[0], scoring.chunk)
        ]
        if not parts:  # no stored position: an empty entry of the right shape
            parts = [scoring.extract(teacher.logits(picked[:0]))]
        out.append(tuple(torch.cat([p[j] for p in parts]) for j in range(len(parts[0]))))
    return out


def _teacher_prefixes(shard: Any) -> list[tuple[list[int], int]] | None:
    """Each row's ``(teacher_prefix, teacher_prefix_replaces)``; None when no row has one."""
    if "teacher_prefix" not in shard.column_names:
        return None
    pairs = list(zip(shard["teacher_prefix"], shard["teacher_prefix_replaces"], strict=True))
    return pairs if any(replaces for _, replaces in pairs) else None


def teacher_view(
    rows: list[list[int]], positions: list[np.ndarray], prefixes: list[tuple[list[int], int]]
) -> tuple[list[list[int]], list[np.ndarray]]:
    """The rows as the teacher reads them, and the stored positions moved with them.

    A row with privileged exemplars (``teacher_prefix`` replacing its first ``replaces``
    tokens, the plain system message) is scored as ``prefix + row[replaces:]``: student
    position ``i`` (predicting token ``i + 1``) is teacher position ``i + len(prefix) -
    replaces``. Only positions after the system message can be moved (``i >= replaces - 1``);
    the stored ones always are (they predict assistant tokens).
    """
    out_rows, out_positions = [], []
    for row, where, (prefix, replaces) in zip(rows, positions, prefixes, strict=True):
        if not replaces:
            out_rows.append(row)
            out_positions.append(where)
            continue
        if where.size and int(where.min()) < replaces - 1:
            raise CacheError(
                f"a stored position ({int(where.min())}) lies inside the system message the "
                f"teacher's own prefix replaces ({replaces} tokens); re-run `deepcoder process`"
            )
        out_rows.append(list(prefix) + row[replaces:])
        out_positions.append(where + (len(prefix) - replaces))
    return out_rows, out_positions


def _pack(scoring: Scoring, entry: tuple[Any, ...]) -> cache_format.Packed:
    if scoring.format == "topk":
        indices, logprobs, tail = (t.numpy() for t in entry)
        return cache_format.encode_topk(indices, logprobs, tail)
    return cache_format.encode_sampled(entry[0].numpy())


# ---------------------------------------------------------------------------- cache


def cache_fingerprint(
    dataset_fp: str,
    identity: dict[str, Any],
    fmt: str,
    k: int,
    spans: tuple[int, ...],
    temperature: float | None,
) -> str:
    blob = json.dumps(
        {
            "dataset": dataset_fp,
            "teacher": identity,
            "format": fmt,
            "k": k,
            "spans": list(spans),
            "temperature": temperature,
            "codec": CODEC,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cache_teacher_logits(
    config: Config,
    *,
    data: str | Path,
    out: str | Path,
    teacher: Any = None,
    top_k: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Write (or finish) the teacher-logit cache of ``data`` under ``out``; returns the manifest.

    ``teacher_logits.format`` picks top-k (``top_k`` or ``teacher_logits.top_k`` ids) or
    sampled (``teacher_logits.samples`` draws at ``loss.temperature``).
    """
    import torch
    from safetensors.numpy import save_file

    out = Path(out)
    section = config.teacher_logits
    fmt = section.format
    k = int(top_k or section.top_k) if fmt == "topk" else int(section.samples)
    temperature = float(config.loss.temperature) if fmt == "sampled" else None
    spans = stored_spans(config)
    if not spans:
        raise CacheError(
            f"weighting '{config.weighting.name}' gives every span type weight 0 and "
            "teacher_logits.spans is null: there is nothing to cache"
        )
    dataset = load_processed(data)
    data_fp = dataset_fingerprint(dataset)
    resolved = load_teacher(config, teacher)
    if resolved.tokenizer is None:
        raise CacheError("the teacher has no tokenizer to fingerprint; use a white-box teacher")
    fingerprint = cache_fingerprint(data_fp, resolved.identity, fmt, k, spans, temperature)
    try:
        manifest = read_manifest(out)
    except CacheError as exc:
        raise CacheError(f"{exc}; or choose another --out") from None
    if manifest is not None and manifest.get("fingerprint") != fingerprint:
        raise CacheError(
            f"{out / MANIFEST}: holds a cache for another dataset, teacher, format, k, span set "
            f"or temperature (fingerprint {manifest.get('fingerprint')}, wanted {fingerprint}); "
            "choose another --out or delete that folder"
        )
    if manifest is None:
        manifest = {
            "schema": SCHEMA,
            "format": fmt,
            "k": k,
            "top_k": k if fmt == "topk" else None,
            "samples": k if fmt == "sampled" else None,
            "temperature": temperature,
            "spans": span_names(spans),
            "codec": CODEC | ({"kl_bound": cache_format.kl_bound(k)} if fmt == "topk" else {}),
            "fingerprint": fingerprint,
            "dataset": str(Path(data).resolve()),
            "dataset_fingerprint": data_fp,
            "num_examples": len(dataset),
            "teacher": resolved.identity,
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
    device = resolved.device if isinstance(resolved, WhiteBoxTeacher) else "cpu"
    for start in todo:
        end = min(start + shard_size, len(dataset))
        name = f"shard-{start // shard_size:05d}.safetensors"
        shard = dataset.select(range(start, end))
        rows, types = shard["input_ids"], shard["span_type"]
        generator = None
        if fmt == "sampled":  # a shard's draws depend only on the fingerprint and the shard
            generator = torch.Generator(device=device)
            generator.manual_seed(int(fingerprint, 16) % (2**61) + start)
        scoring = Scoring(fmt, k, temperature or 1.0, generator)
        positions = [stored_positions(t, spans) for t in types]
        prefixes = _teacher_prefixes(shard)
        packed: list[Any] = []
        for b in range(0, len(rows), section.batch_size):
            batch = [list(r) for r in rows[b : b + section.batch_size]]
            where = positions[b : b + section.batch_size]
            if prefixes is not None:
                batch, where = teacher_view(batch, where, prefixes[b : b + section.batch_size])
            entries = score_examples(resolved, batch, where, scoring)
            packed.extend(_pack(scoring, entry) for entry in entries)
            if bar is not None:
                bar.update(len(batch))
        tensors = shard_tensors([len(r) - 1 for r in rows], positions, packed)
        tmp = out / f".{name}.tmp"
        save_file(tensors, str(tmp))
        os.replace(tmp, out / name)
        manifest["shards"].append(
            {
                "file": name,
                "start": start,
                "end": end,
                "positions": int(sum(p.size for p in positions)),
                "positions_total": int(sum(len(r) - 1 for r in rows)),
                "bytes": (out / name).stat().st_size,
            }
        )
        manifest["shards"].sort(key=lambda s: s["start"])
        atomic_write_json(out / MANIFEST, manifest)
    if bar is not None:
        bar.close()
    shards = manifest["shards"]
    manifest["complete"] = len(shards) == len(starts)
    manifest["positions"] = sum(s["positions"] for s in shards)
    manifest["positions_total"] = sum(s["positions_total"] for s in shards)
    manifest["bytes"] = sum(s["bytes"] for s in shards)
    manifest["bytes_per_position"] = round(manifest["bytes"] / max(1, manifest["positions"]), 2)
    manifest["seconds"] = round(time.perf_counter() - started, 3)
    atomic_write_json(out / MANIFEST, manifest)
    return manifest


def _progress(enabled: bool, total: int, initial: int) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=max(0, initial), desc="teacher logits", unit="ex")


# ---------------------------------------------------------------------------- command


@click.command("teacher-logits")
@click.option("--data", required=True, type=click.Path(file_okay=False), help="Processed dataset.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Cache folder.")
@click.option("--teacher", help="Teacher plugin name or model folder (default: config teacher).")
@click.option("--top-k", type=int, help="Tokens kept per position (default: teacher_logits.top_k).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    help="topk or sampled (default: teacher_logits.format).",
)
@config_options
def teacher_logits_command(
    data: str,
    out: str,
    teacher: str | None,
    top_k: int | None,
    fmt: str | None,
    config_path: str | None,
    overrides: tuple[str, ...],
) -> None:
    """Cache the teacher's next-token distribution (top-k or sampled) at the positions that train."""
    from ..config import load_config

    with one_line_errors():
        flags = {"teacher_logits.top_k": top_k, "teacher_logits.format": fmt}
        config = load_config(config_path, overrides, flags)
        manifest = cache_teacher_logits(config, data=data, out=out, teacher=teacher)
    what = "top-{k}" if manifest["format"] == "topk" else "{k}-draw sampled"
    click.echo(
        f"cached {what.format(k=manifest['k'])} teacher log-probs for "
        f"{manifest['num_examples']} examples ({manifest['positions']} of "
        f"{manifest['positions_total']} positions: {', '.join(manifest['spans'])}; "
        f"{manifest['bytes_per_position']} bytes each; {len(manifest['shards'])} shards) in {out}"
    )
