"""The processed dataset's columns, names and types defined once, and the rows workers fill.

Workers build plain column lists (:class:`Rows`), one row per example, or one per dropped
record with empty token columns; :func:`rows_table` turns them into one Arrow table with the
types below. The private columns carry drops, notes, duplicate hashes and detector agreement
from the workers to the summary and are dropped before the dataset is saved
(`docs/architecture.md`, "Processed dataset").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from ..spans import Parsed

# name -> Arrow value type; "[]": a list with one value per token
COLUMNS: dict[str, str] = {
    "input_ids": "int32[]",  # the rendered chat, tokenized without extra special tokens
    "attention_mask": "int8[]",  # all ones
    "span_type": "int8[]",  # SpanType per token
    "span_confidence": "float32[]",  # the detector's confidence (1.0 for special tokens)
    "trajectory_id": "string",  # from the record, line-N when it has none
    "problem_id": "string",
    "difficulty": "string",
    "category": "string",
    "success": "bool",  # formats without a verdict count as successful
    # privileged exemplars: the teacher read its own system message; these tokens replace the
    # first ``teacher_prefix_replaces`` input_ids when the teacher scores the row (else empty, 0)
    "teacher_prefix": "int32[]",
    "teacher_prefix_replaces": "int32",
}
PRIVATE: dict[str, str] = {
    "_line": "int64",  # line of the input file
    "_index": "int64",  # record number (a record split into windows gives several rows)
    "_format": "string",
    "_hash": "string",  # of the rendered text: finds duplicates
    "_drop": "string",  # why the record was dropped ("" when kept)
    "_message": "string",  # what was wrong with a bad record
    "_note": "string",  # truncated | split
    "_missing": "int64",  # characters the chat template did not render
    "_agree_this": "int8[]",  # span types of this detector on the compared tokens
    "_agree_other": "int8[]",  # and of the other detector
}
SCHEMA = {**COLUMNS, **PRIVATE}
TOKEN_COLUMNS = [name for name, kind in SCHEMA.items() if kind.endswith("[]")]


def value_type(name: str) -> str:
    """The type of one value of column ``name``: ``int8`` for ``int8[]``."""
    return SCHEMA[name].removesuffix("[]")


def features() -> Any:
    """The ``datasets`` features of :data:`SCHEMA` (public columns first)."""
    from datasets import Features, List, Value

    return Features(
        {
            name: List(Value(value_type(name)))
            if name in TOKEN_COLUMNS
            else Value(value_type(name))
            for name in SCHEMA
        }
    )


@dataclasses.dataclass
class Example:
    """One tokenized example: ids, span type and confidence per token."""

    ids: Any
    types: Any
    conf: Any
    missing: int = 0


class Rows:
    """Column lists of :data:`SCHEMA`, filled one row at a time by a worker."""

    def __init__(self) -> None:
        import numpy as np

        self.columns: dict[str, list[Any]] = {name: [] for name in SCHEMA}
        self._none = {name: np.zeros(0, value_type(name)) for name in TOKEN_COLUMNS}

    def drop(self, line, index, reason, message, *, parsed=None, fmt="", agreement=None):
        """A record that gives no example: one row with empty token columns and ``_drop`` set."""
        self._append(
            {
                **self._none,
                **self._meta(line, index, parsed, fmt),
                "_drop": reason,
                "_message": message,
                "_note": "",
                "_missing": 0,
                **self._agreement(agreement),
            }
        )

    def add(
        self, line, index, parsed, example: Example, note: str, agreement, digest, prefix=None
    ) -> None:
        import numpy as np

        self._append(
            {
                **self._meta(line, index, parsed, digest=digest),
                "input_ids": example.ids,
                "attention_mask": np.ones(len(example.ids), value_type("attention_mask")),
                "span_type": example.types,
                "span_confidence": example.conf,
                **(prefix or {"teacher_prefix": self._none["teacher_prefix"]}),
                "_drop": "",
                "_message": "",
                "_note": note,
                "_missing": int(example.missing),
                **self._agreement(agreement),
            }
        )

    def _append(self, row: dict[str, Any]) -> None:
        for name, values in self.columns.items():
            values.append(row[name])

    @staticmethod
    def _meta(line, index, parsed: Parsed | None, fmt: str = "", digest: str = "") -> dict:
        meta = parsed.meta if parsed else {}
        return {
            "trajectory_id": meta.get("trajectory_id") or f"line-{line}",
            "problem_id": meta.get("problem_id", ""),
            "difficulty": meta.get("difficulty", ""),
            "category": meta.get("category", ""),
            "success": bool(meta.get("success", False)),
            "teacher_prefix_replaces": 0,
            "_line": line,
            "_index": index,
            "_format": parsed.format if parsed else fmt,
            "_hash": digest,
        }

    def _agreement(self, agreement) -> dict[str, Any]:
        if not agreement:
            return {name: self._none[name] for name in ("_agree_this", "_agree_other")}
        return {"_agree_this": agreement["this"], "_agree_other": agreement["other"]}


def rows_table(results: Iterable[dict[str, list[Any]]]) -> Any:
    """One Arrow table of :data:`SCHEMA` from the column lists of :class:`Rows`, in order;
    list columns are built from numpy in one go."""
    import numpy as np
    import pyarrow as pa

    columns: dict[str, list[Any]] = {name: [] for name in SCHEMA}
    for done in results:
        for name, values in done.items():
            columns[name].extend(values)
    schema = features().arrow_schema
    arrays = []
    for name in schema.names:
        values = columns[name]
        kind = schema.field(name).type
        if pa.types.is_list(kind):
            lengths = np.fromiter((len(v) for v in values), dtype=np.int64, count=len(values))
            offsets = np.zeros(len(values) + 1, dtype=np.int32)
            np.cumsum(lengths, out=offsets[1:])
            item = kind.value_type.to_pandas_dtype()
            flat = np.concatenate(values) if values else np.zeros(0, item)
            flat = flat.astype(item, copy=False)
            arrays.append(pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat)))
        else:
            arrays.append(pa.array(values, type=kind))
    return pa.Table.from_arrays(arrays, schema=schema)
