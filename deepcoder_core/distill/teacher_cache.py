"""The teacher-logit cache on disk: the manifest, the shard layout, and reading an example.

Written by :func:`~deepcoder_core.distill.teacher_logits.cache_teacher_logits`; what the
formats hold is in that module's docstring, how entries are packed in
:mod:`~deepcoder_core.distill.cache_format`. Layout of a cache folder::

    manifest.json              schema, format, k, spans, temperature, codec, fingerprint,
                               dataset fingerprint, teacher, vocab, positions, bytes, shards
    shard-00000.safetensors    per example (m): lengths int32[m] (L - 1), offsets int64[m+1]
    ...                        (stored rows), run_offsets, prefix_offsets, suffix_offsets
                               int64[m+1]; runs int32[r,2] (start, length of each run of
                               stored positions); per stored row (n): header uint8[n] (code
                               orders), extra [n] (top-k: tail angle uint16; sampled: distinct
                               ids uint8, uint16 past 255 draws); prefix, suffix uint8 code streams

A schema-1 cache (full-length int32 / float16 rows, before this layout) is refused with a
message to rebuild it. A shard that does not load or decode is a :class:`CacheError`
naming the file.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Config
from ..config.schema import TEACHER_LOGIT_FORMATS
from . import cache_format
from .cache_spans import position_runs, run_positions, span_names, span_numbers, weighted_spans
from .errors import CacheError

SCHEMA = 2
READABLE_SCHEMAS = (2,)
MANIFEST = "manifest.json"
FORMATS = TEACHER_LOGIT_FORMATS  # the values of teacher_logits.format
CODEC = {"name": "expgolomb-sqrt", "version": 1, "levels": cache_format.LEVELS}


def dataset_fingerprint(dataset: Any) -> str:
    """``datasets``' own content fingerprint, plus the row count."""
    return f"{dataset._fingerprint}:{len(dataset)}"


def vocab_hash(tokenizer: Any) -> str:
    """A hash of the token -> id map: equal hashes mean the same vocabulary."""
    cached = getattr(tokenizer, "_deepcoder_vocab_hash", None)
    if cached is not None:
        return cached
    items = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    digest = hashlib.sha256(json.dumps(items, ensure_ascii=False).encode()).hexdigest()[:16]
    tokenizer._deepcoder_vocab_hash = digest  # tokenizers are loaded once per folder (cached)
    return digest


def read_manifest(out: Path) -> dict[str, Any] | None:
    path = out / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise CacheError(f"{path}: unreadable manifest ({exc}); delete the folder") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("shards"), list):
        raise CacheError(f"{path}: not a teacher-logit manifest; delete the folder")
    if manifest.get("schema") not in READABLE_SCHEMAS:
        raise CacheError(
            f"{path}: a schema-{manifest.get('schema')} cache (full-length float16 rows); this "
            f"version reads schema {SCHEMA} (packed rows of the positions that train): delete "
            "the folder and re-run `deepcoder teacher-logits`"
        )
    return manifest


def shard_tensors(lengths: list[int], positions: list[np.ndarray], packed: list[Any]) -> dict:
    """The safetensors of one shard (module docstring)."""

    def offsets(sizes: list[int]) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)

    runs = [position_runs(p) for p in positions]
    return {
        "lengths": np.asarray(lengths, dtype=np.int32),
        "offsets": offsets([p.size for p in positions]),
        "runs": np.concatenate(runs).astype(np.int32),
        "run_offsets": offsets([r.shape[0] for r in runs]),
        "header": np.concatenate([p.header for p in packed]),
        "extra": np.concatenate([p.extra for p in packed]),
        "prefix": np.concatenate([p.prefix for p in packed]),
        "prefix_offsets": offsets([p.prefix.size for p in packed]),
        "suffix": np.concatenate([p.suffix for p in packed]),
        "suffix_offsets": offsets([p.suffix.size for p in packed]),
    }


@dataclass
class CachedRows:
    """The stored rows of one example: ``positions`` (ascending) out of its ``length`` (L - 1).

    ``indices`` int32 ``[n, w]`` and ``logprobs`` float32 ``[n, w]`` hold each row's sparse
    teacher distribution, ``tail_mass`` ``[n]`` the mass outside it; top-k rows have
    ``w = k``, most likely first; sampled rows have ``logprobs = log(count / K)``, tail 0,
    and pad to the example's most distinct ids with id -1 and log-probability -inf.
    """

    length: int
    positions: Any  # int64 [n]
    indices: Any
    logprobs: Any
    tail_mass: Any


class TeacherLogitsCache:
    """Reads a finished cache; :meth:`check` refuses one made for other data or another teacher."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        manifest = read_manifest(self.path)
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
        try:
            self.format = str(manifest["format"])
            self.k = int(manifest["k"])
            self.spans = span_numbers(manifest["spans"])
            self.temperature = manifest.get("temperature")
            shards = [(int(s["start"]), int(s["end"]), str(s["file"])) for s in manifest["shards"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise CacheError(f"{self.path / MANIFEST}: malformed manifest ({exc!r})") from None
        if self.format not in FORMATS:
            raise CacheError(f"{self.path / MANIFEST}: unknown format {self.format!r}")
        self.manifest = manifest
        self._shards = shards
        self._handles: dict[str, _Shard] = {}

    @property
    def top_k(self) -> int:
        """Columns of a row at most (top-k: k; sampled: K draws)."""
        return self.k

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

    def check_training(self, config: Config, weighting: Any, loss_fn: Any) -> None:
        """Refuse a span set that misses what ``weighting`` trains, or a sampled cache drawn at
        another temperature; warn when the loss makes the sampled format biased."""
        where = self.path / MANIFEST
        missing = set(weighted_spans(weighting)) - set(self.spans)
        if missing:
            raise CacheError(
                f"{where}: the cache stores {', '.join(span_names(self.spans))} positions only, "
                f"and weighting '{config.weighting.name}' also weights "
                f"{', '.join(span_names(missing))}; rebuild it with teacher_logits.spans: null "
                "(follow the weighting) or a list that includes them"
            )
        if self.format != "sampled":
            return
        if self.temperature is None or float(self.temperature) != float(config.loss.temperature):
            raise CacheError(
                f"{where}: the sampled cache was drawn at temperature {self.temperature}, "
                f"training uses loss.temperature {config.loss.temperature}; rebuild the cache "
                "with this temperature (draws are unbiased only for the distribution they "
                "were drawn from)"
            )
        if not gradient_is_affine(loss_fn):
            warnings.warn(
                f"loss '{config.loss.name}' is not linear in the teacher distribution, so a "
                "sampled cache gives it a biased loss and gradient; use kl, or a top-k cache",
                stacklevel=2,
            )

    def _shard(self, index: int) -> tuple[int, str, _Shard]:
        for start, end, name in self._shards:
            if start <= index < end:
                if name not in self._handles:
                    self._handles[name] = _Shard(self.path / name, end - start)
                return start, name, self._handles[name]
        raise CacheError(f"{self.path}: example {index} is not in any shard")

    def rows(self, index: int) -> CachedRows:
        """The stored rows of example ``index`` (:class:`CachedRows`)."""
        import torch

        start, name, shard = self._shard(index)
        i = index - start
        t = shard.offsets
        a, b = int(t["offsets"][i]), int(t["offsets"][i + 1])
        packed = cache_format.Packed(
            header=shard.read("header", a, b),
            extra=shard.read("extra", a, b),
            prefix=shard.read("prefix", *t["prefix_offsets"][i : i + 2]),
            suffix=shard.read("suffix", *t["suffix_offsets"][i : i + 2]),
        )
        runs = shard.read("runs", *t["run_offsets"][i : i + 2])
        length = int(t["lengths"][i])
        try:
            positions = run_positions(runs)
            if positions.size != b - a or (positions.size and int(positions[-1]) >= length):
                raise ValueError("stored positions do not match the rows")
            if self.format == "topk":
                indices, logprobs, tail = cache_format.decode_topk(packed, self.k)
            else:
                indices, counts = cache_format.decode_sampled(packed, self.k)
                with np.errstate(divide="ignore"):
                    logprobs = np.log(counts / self.k).astype(np.float32)
                tail = np.zeros(counts.shape[0], dtype=np.float32)
        except (ValueError, IndexError) as exc:
            raise CacheError(
                f"{self.path / name}: example {index} does not decode ({exc}); delete the shard "
                "and re-run `deepcoder teacher-logits` to rewrite it"
            ) from None
        return CachedRows(
            length=length,
            positions=torch.from_numpy(positions),
            indices=torch.from_numpy(indices),
            logprobs=torch.from_numpy(logprobs),
            tail_mass=torch.from_numpy(tail),
        )

    def example(self, index: int) -> tuple[Any, Any, Any]:
        """``(indices int32 [L-1, w], logprobs float32 [L-1, w], tail_mass float32 [L-1])``.

        Rows that are not stored (their predicted token's span type is outside the span set:
        weight 0 for the weighting the cache was built for) hold id -1, log-probability -inf
        and tail NaN, so that nothing can use them as a distribution by mistake.
        """
        import torch

        rows = self.rows(index)
        width = rows.indices.shape[1]
        indices = torch.full((rows.length, width), -1, dtype=torch.int32)
        logprobs = torch.full((rows.length, width), float("-inf"))
        tail = torch.full((rows.length,), float("nan"))
        indices[rows.positions] = rows.indices
        logprobs[rows.positions] = rows.logprobs
        tail[rows.positions] = rows.tail_mass
        return indices, logprobs, tail

    def __getstate__(self) -> dict[str, Any]:
        # File handles do not pickle (dataloader workers); they reopen lazily.
        return {**self.__dict__, "_handles": {}}


_OFFSETS = {"offsets": "header", "run_offsets": "runs"} | {
    f"{stream}_offsets": stream for stream in ("prefix", "suffix")
}


class _Shard:
    """One open shard: the per-example offsets in memory, the rows read by slice (mmap)."""

    def __init__(self, path: Path, examples: int) -> None:
        from safetensors import safe_open

        self.path = path
        try:
            self.handle = safe_open(str(path), framework="np")
            keys = set(self.handle.keys())
            missing = sorted({"lengths", "extra", *_OFFSETS, *_OFFSETS.values()} - keys)
            if missing:
                raise ValueError(f"missing arrays {missing}")
            self.offsets = {key: self.handle.get_tensor(key) for key in ("lengths", *_OFFSETS)}
            shapes = {key: self.handle.get_slice(key).get_shape() for key in keys}
        except Exception as exc:  # safetensors raises its own error types
            raise self.error(f"unreadable shard ({exc})") from None
        if self.offsets["lengths"].shape != (examples,):
            raise self.error(f"holds {shapes['lengths'][0]} examples, the manifest {examples}")
        for key, data in _OFFSETS.items():
            offsets = self.offsets[key]
            if (
                offsets.shape != (examples + 1,)
                or int(offsets[-1]) != shapes[data][0]
                or np.any(np.diff(offsets) < 0)
            ):
                raise self.error(f"{key} does not match {data}")
        if shapes["extra"][0] != shapes["header"][0]:
            raise self.error("extra does not match header")

    def error(self, problem: str) -> CacheError:
        return CacheError(
            f"{self.path}: {problem}; delete it and re-run `deepcoder teacher-logits` with "
            "the same arguments to rewrite it"
        )

    def read(self, key: str, start: Any, end: Any) -> np.ndarray:
        try:
            return self.handle.get_slice(key)[int(start) : int(end)]
        except Exception as exc:  # a file truncated after it was opened
            raise self.error(f"unreadable {key} ({exc})") from None


def gradient_is_affine(loss_fn: Any, seed: int = 0) -> bool:
    """Whether the loss's gradient in the student is affine in the teacher distribution ``p``.

    The condition for a sampled teacher (``E[p~] = p``) to give the dense gradient in
    expectation; checked on a mixture of two random distributions (forward KL: the gradient
    in the student's log-probabilities is ``-p``, linear).
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    vocab = 7
    student = torch.log_softmax(torch.randn(2, vocab, generator=gen, dtype=torch.float64), -1)
    p1, p2 = (
        torch.softmax(3 * torch.randn(2, vocab, generator=gen, dtype=torch.float64), -1)
        for _ in range(2)
    )

    def grad(p: Any) -> Any:
        s = student.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(loss_fn(s, p.log()).sum(), s)
        return g

    try:
        mixed = grad(0.3 * p1 + 0.7 * p2)
        return bool(torch.allclose(mixed, 0.3 * grad(p1) + 0.7 * grad(p2), atol=1e-8))
    except (RuntimeError, TypeError, ValueError):
        return False
