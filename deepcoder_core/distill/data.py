"""Training data: the processed rows as a map-style dataset, padded batches, and the teacher
signal each batch carries.

A row of the processed dataset (``docs/architecture.md``, data contracts) holds ``input_ids``,
``attention_mask``, ``span_type`` and ``span_confidence`` per token. Position ``i`` of a row
predicts token ``i + 1``; it counts when both tokens are real (:func:`positions`). Besides the
tokens a batch may carry the teacher signal: the cached top-k rows of a
:class:`~deepcoder_core.distill.teacher_logits.TeacherLogitsCache`, or, for a teacher with
another tokenizer, the teacher's own tokens and the position map (:class:`TokenAligner`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..protocols import TopK
from .errors import CacheError

if TYPE_CHECKING:
    from .teacher_logits import TeacherLogitsCache

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
            k = self.cache.top_k
            out["topk_indices"] = torch.zeros(batch, length - 1, k, dtype=torch.long)
            out["topk_logprobs"] = torch.zeros(batch, length - 1, k)
            out["topk_tail"] = torch.zeros(batch, length - 1)
            for i, row in enumerate(rows):
                indices, logprobs, tail = self.cache.example(row["index"])
                n = indices.shape[0]
                if n != len(row["input_ids"]) - 1:
                    raise CacheError(
                        f"{self.cache.path}: example {row['index']} has {n} cached positions, "
                        f"the dataset row {len(row['input_ids'])} tokens; the cache is stale"
                    )
                out["topk_indices"][i, :n] = indices.long()
                out["topk_logprobs"][i, :n] = logprobs
                out["topk_tail"][i, :n] = tail
        if self.aligner is not None:
            out.update(self.aligner(rows, length))
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


def topk_for_student(indices: Any, logprobs: Any, tail: Any, width: int | None) -> TopK:
    """A :class:`TopK` whose ids fit the student: ids past its vocabulary (padding) join the tail."""
    if width is not None and bool((indices >= width).any()):
        outside = indices >= width
        tail = tail + (logprobs.exp() * outside).sum(-1)
        logprobs = logprobs.masked_fill(outside, -1e4)  # exp() == 0: no mass, no NaN
        indices = indices.masked_fill(outside, 0)
    return TopK(indices=indices, logprobs=logprobs, tail_mass=tail)
