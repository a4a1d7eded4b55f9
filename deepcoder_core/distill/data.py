"""Training data: the processed rows as a map-style dataset, padded batches, and the teacher
signal each batch carries.

A row of the processed dataset (``docs/architecture.md``, data contracts) holds ``input_ids``,
``attention_mask``, ``span_type`` and ``span_confidence`` per token. Position ``i`` of a row
predicts token ``i + 1``; it counts when both tokens are real (:func:`positions`). Besides the
tokens a batch may carry the teacher signal: the cached top-k rows of a
:class:`~deepcoder_core.distill.teacher_cache.TeacherLogitsCache`, or, for a teacher with
another tokenizer, the teacher's own tokens and the position map (:class:`TokenAligner`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..protocols import TopK
from .errors import CacheError

if TYPE_CHECKING:
    from .teacher_cache import TeacherLogitsCache

DATA_COLUMNS = ("input_ids", "attention_mask", "span_type", "span_confidence")
DIFFICULTY = {"easy": 0, "medium": 1, "hard": 2}


def load_processed(data: str | Path) -> Any:
    """The processed dataset (``datasets.save_to_disk`` folder; a DatasetDict gives its ``train``)."""
    from datasets import Dataset, DatasetDict, load_from_disk

    path = Path(data)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no processed dataset here (run `deepcoder process`)")
    try:
        dataset = load_from_disk(str(path))
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{path}: not a saved dataset ({exc})") from None
    if isinstance(dataset, DatasetDict):
        if "train" not in dataset:
            raise ValueError(f"{path}: dataset has splits {list(dataset)}, expected 'train'")
        dataset = dataset["train"]
    assert isinstance(dataset, Dataset)
    missing = [c for c in DATA_COLUMNS if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"{path}: dataset lacks columns {missing} (has {dataset.column_names}); "
            "re-run `deepcoder process`"
        )
    if len(dataset) == 0:
        raise ValueError(f"{path}: the dataset is empty")
    return dataset


class Examples:
    """Map-style dataset over the processed rows, in training order, with each row's index."""

    def __init__(self, dataset: Any, order: list[int] | None = None) -> None:
        self.dataset = dataset
        self.order = list(range(len(dataset))) if order is None else list(order)
        self.ordered = order is not None  # a weighting's curriculum: no shuffling

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int) -> dict[str, Any]:
        index = self.order[i]
        row = self.dataset[index]
        out = {key: row[key] for key in DATA_COLUMNS}
        out["index"] = index
        out["difficulty"] = DIFFICULTY.get(str(row.get("difficulty", "medium")).lower(), 1)
        out["success"] = int(bool(row.get("success", True)))
        return out


@dataclass
class Collator:
    """Right-pads rows into tensors; attaches the cached teacher top-k of each row when given."""

    pad_id: int
    cache: TeacherLogitsCache | None = None
    aligner: TokenAligner | None = None

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        length = max(len(r["input_ids"]) for r in rows)
        batch = len(rows)
        out = {
            "input_ids": torch.full((batch, length), self.pad_id, dtype=torch.long),
            "attention_mask": torch.zeros(batch, length, dtype=torch.long),
            "span_type": torch.zeros(batch, length, dtype=torch.long),
            "span_confidence": torch.zeros(batch, length, dtype=torch.float32),
            "difficulty": torch.tensor([r["difficulty"] for r in rows]),
            "success": torch.tensor([r["success"] for r in rows]),
            "index": torch.tensor([r["index"] for r in rows]),
        }
        for i, row in enumerate(rows):
            n = len(row["input_ids"])
            out["input_ids"][i, :n] = torch.tensor(row["input_ids"])
            out["attention_mask"][i, :n] = torch.tensor(row["attention_mask"])
            out["span_type"][i, :n] = torch.tensor(row["span_type"])
            out["span_confidence"][i, :n] = torch.tensor(row["span_confidence"])
        if self.cache is not None:
            out.update(self.cached_rows(rows, length))
        if self.aligner is not None:
            out.update(self.aligner(rows, length))
        return out

    def cached_rows(self, rows: list[dict[str, Any]], length: int) -> dict[str, Any]:
        """The cached teacher rows as ``[B, L-1, w]`` tensors; ``topk_stored`` marks the rows the
        cache holds (the others carry no distribution: id -1, log-probability -inf)."""
        import torch

        assert self.cache is not None
        cached = [self.cache.rows(row["index"]) for row in rows]
        for row, entry in zip(rows, cached, strict=True):
            if entry.length != len(row["input_ids"]) - 1:
                raise CacheError(
                    f"{self.cache.path}: example {row['index']} has {entry.length} cached "
                    f"positions, the dataset row {len(row['input_ids'])} tokens; the cache is stale"
                )
        batch, width = len(rows), max(1, *(entry.indices.shape[1] for entry in cached))
        out = {
            "topk_indices": torch.full((batch, length - 1, width), -1, dtype=torch.long),
            "topk_logprobs": torch.full((batch, length - 1, width), float("-inf")),
            "topk_tail": torch.zeros(batch, length - 1),
            "topk_stored": torch.zeros(batch, length - 1, dtype=torch.bool),
        }
        for i, entry in enumerate(cached):
            at, w = entry.positions, entry.indices.shape[1]
            out["topk_indices"][i, at, :w] = entry.indices.long()
            out["topk_logprobs"][i, at, :w] = entry.logprobs
            out["topk_tail"][i, at] = entry.tail_mass
            out["topk_stored"][i, at] = True
        return out


class TokenAligner:
    """Pairs student and teacher positions when the two tokenizers differ.

    A student position ``i`` (predicting token ``i+1``) is paired with the teacher position
    ``j`` whose next token starts at the same character of the decoded text; positions
    without such a boundary are left out. Used with vocabulary-agnostic losses, which
    compare the two next-token distributions without a shared vocabulary (the Universal
    Logit Distillation setting, Boizard et al. 2024, "Towards Cross-Tokenizer Distillation").
    """

    def __init__(self, student_tokenizer: Any, teacher_tokenizer: Any) -> None:
        self.student = student_tokenizer
        self.teacher = teacher_tokenizer
        self.teacher_pad = 0

    def starts(self, ids: list[int]) -> list[int] | None:
        """Character offset where each student token starts, or None if it does not round-trip."""
        text = self.student.decode(ids, skip_special_tokens=False)
        encoded = self.student(text, add_special_tokens=False, return_offsets_mapping=True)
        if encoded["input_ids"] != list(ids):
            return None
        return [start for start, _ in encoded["offset_mapping"]]

    def __call__(self, rows: list[dict[str, Any]], length: int) -> dict[str, Any]:
        import torch

        texts, student_starts = [], []
        for row in rows:
            ids = list(row["input_ids"])
            student_starts.append(self.starts(ids))
            texts.append(self.student.decode(ids, skip_special_tokens=False))
        encoded = [
            self.teacher(t, add_special_tokens=False, return_offsets_mapping=True) for t in texts
        ]
        teacher_length = max(1, *(len(e["input_ids"]) for e in encoded))
        batch = len(rows)
        teacher_ids = torch.full((batch, teacher_length), self.teacher_pad, dtype=torch.long)
        teacher_mask = torch.zeros(batch, teacher_length, dtype=torch.long)
        aligned = torch.zeros(batch, length - 1, dtype=torch.bool)
        teacher_pos = torch.zeros(batch, length - 1, dtype=torch.long)
        for b, (enc, starts) in enumerate(zip(encoded, student_starts, strict=True)):
            n = len(enc["input_ids"])
            teacher_ids[b, :n] = torch.tensor(enc["input_ids"], dtype=torch.long)
            teacher_mask[b, :n] = 1
            if starts is None:
                continue  # the row does not decode back to its own tokens: no trusted offsets
            token_at = {start: u for u, (start, _) in enumerate(enc["offset_mapping"]) if u > 0}
            for i in range(len(starts) - 1):
                u = token_at.get(starts[i + 1])
                if u is not None:
                    aligned[b, i] = True
                    teacher_pos[b, i] = u - 1
        return {
            "teacher_input_ids": teacher_ids,
            "teacher_attention_mask": teacher_mask,
            "aligned": aligned,
            "teacher_pos": teacher_pos,
        }


def positions(inputs: dict[str, Any]) -> Any:
    """``[B, L-1]`` bool: position ``i`` predicts a real token ``i+1`` (and has a teacher twin)."""
    mask = inputs["attention_mask"].bool()
    keep = mask[:, 1:] & mask[:, :-1]
    return keep & inputs["aligned"] if "aligned" in inputs else keep


def token_batch(inputs: dict[str, Any], keep: Any) -> dict[str, Any]:
    """Per-token tensors of the predicted tokens (what a weighting strategy sees), flattened."""
    length = keep.shape[1]
    per_example = {
        name: inputs[name][:, None].expand(-1, length)[keep] for name in ("difficulty", "success")
    }
    return {
        "span_type": inputs["span_type"][:, 1:][keep],
        "span_confidence": inputs["span_confidence"][:, 1:][keep],
        **per_example,
    }


def topk_for_student(
    indices: Any, logprobs: Any, tail: Any, width: int | None, *, vocab: int | None = None
) -> TopK:
    """A :class:`TopK` the engine can map the student onto: every id distinct and in range.

    Ids past the student's vocabulary (padding) join the tail with their mass; absent
    entries (id -1: a sampled row's padding, a row not stored) carry none. Both become
    distinct *filler* ids -- the smallest ids not in the row -- with probability 0, so the
    student's mass on a filler id is neither counted twice nor moved into the tail: for a
    probability-0 bucket the engine's gradient is the student's own probability, as the dense
    gradient ``q - p`` has it. ``width``: the logits columns both sides share (None: all);
    ``vocab``: the student's vocabulary size, where fillers are taken from.
    """
    import torch

    if width is not None:
        vocab = width
    elif vocab is None:
        vocab = max(int(indices.max()) + 1 if indices.numel() else 1, 2 * indices.shape[-1])
    absent = (indices < 0) | (indices >= vocab)
    if not bool(absent.any()):
        return TopK(indices=indices, logprobs=logprobs, tail_mass=tail)
    moved = torch.where(absent & (indices >= 0), logprobs.exp(), torch.zeros_like(logprobs))
    tail = tail + moved.sum(-1)
    logprobs = logprobs.masked_fill(absent, -1e4)  # exp() == 0: no mass, no NaN
    n, k = indices.shape
    span = min(2 * k, vocab)  # 2k candidates: at most k are taken by the row's own ids
    taken = torch.zeros(n, span + 1, dtype=torch.bool, device=indices.device)
    present = torch.where(absent | (indices >= span), span, indices)
    taken.scatter_(1, present, True)
    free = torch.sort(taken[:, :span].to(torch.int8), dim=1, stable=True).indices  # free first
    slot = (absent.cumsum(1) - 1).clamp_min(0)  # the j-th absent entry takes the j-th free id
    fillers = free.gather(1, slot.clamp_max(span - 1))
    return TopK(indices=torch.where(absent, fillers, indices), logprobs=logprobs, tail_mass=tail)
