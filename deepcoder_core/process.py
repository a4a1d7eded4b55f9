"""Stage 2, ``deepcoder process``: trajectories -> a tokenized dataset with a span type per token.

For each record: parse it into segments (:mod:`deepcoder_core.spans`), filter it (success,
duplicates), detect spans, render it with the student's chat template, encode the batch with
the fast tokenizer, map character spans to tokens, fit it into ``max_length`` (truncate at a
step boundary, drop, or split into windows that each repeat the prompt), and filter again
(length, span ratios). Bad input lines and unusable records are counted with their line
numbers; the rest is written as a ``datasets`` folder plus ``summary.json`` and the config
snapshot. Columns follow the processed-dataset contract of `docs/architecture.md`.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import click

from .chat_template import ChatRenderer
from .config import Config, ConfigError, load_config, snapshot
from .encoding import PromptEncoder, arrays
from .errors import DeepcoderError
from .io import BadLine, atomic_write_json, decode_record, jsonl_lines, packed_format
from .plugins import PluginError
from .protocols import Span, SpanType
from .spans import (
    FORMATS,
    Parsed,
    RecordError,
    Segment,
    compare_tokens,
    detect_spans,
    locate,
    parse_record,
    prompt_end,
    render,
    render_many,
    template_supports_tools,
    token_spans,
)

OVERFLOW = ("truncate", "drop", "split")
SPAN_NAMES = [t.name.lower() for t in SpanType]
# tokens the template adds around a cut conversation (end of turn, Qwen3's empty think block)
_MARGIN = 8
_MAX_LISTED_BAD = 100


class ProcessError(DeepcoderError):
    """A processing problem the user can act on (missing file, bad option, no tokenizer)."""


# ---------------------------------------------------------------------------- resolving


def resolve_tokenizer(config: Config, tokenizer: str | None = None) -> str:
    """The student's tokenizer: the argument, ``processing.tokenizer``, ``student.tokenizer``,
    ``student.path``, else the default teacher's (the student is derived from it)."""
    from . import models

    name = tokenizer or config.processing.tokenizer or config.student.tokenizer
    name = name or config.student.path
    if name is None or str(name).lower() in {"smollm2", "default"}:
        return str(models.default_teacher_path(config.paths.cache))
    if str(name).lower() == "qwen3":
        return str(models.qwen3_tokenizer_path())
    return str(name)


def other_detector(name: str) -> str:
    """The detector compared against for the agreement figure."""
    return "regex" if name == "structured" else "structured"


_TOKENIZERS: dict[str, Any] = {}


def load_tokenizer(path: str) -> Any:
    """A fast tokenizer (offset mappings need one), loaded once per process."""
    if path not in _TOKENIZERS:
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError) as exc:
            raise ProcessError(f"tokenizer {path}: cannot load: {exc}") from exc
        if not getattr(tokenizer, "is_fast", False):
            raise ProcessError(
                f"tokenizer {path} is not a fast tokenizer; character offsets need one "
                "(a folder with tokenizer.json)"
            )
        _TOKENIZERS[path] = tokenizer
    return _TOKENIZERS[path]


# ---------------------------------------------------------------------------- the worker


@dataclasses.dataclass
class Settings:
    """What a worker needs; plain data, so it also keys the per-process worker cache."""

    tokenizer: str
    detector: str
    detector_options: dict[str, Any]
    fmt: str
    max_length: int
    overflow: str
    min_tokens: int
    min_reasoning_ratio: float
    min_action_ratio: float
    successful_only: bool
    agreement_sample: int


@dataclasses.dataclass
class Example:
    ids: Any
    types: Any
    conf: Any
    missing: int = 0


class Worker:
    """Turns batches of records into example rows. One per process (see :func:`_worker`)."""

    def __init__(self, settings: Settings) -> None:
        import numpy as np

        from .plugins import build

        self.settings = settings
        self.tokenizer = load_tokenizer(settings.tokenizer)
        self.backend = self.tokenizer.backend_tokenizer
        # a lookup table: special[id] is True for <|im_start|>, <|im_end|>, ...
        self.special = np.zeros(len(self.tokenizer) + 1, dtype=bool)
        self.special[list(self.tokenizer.all_special_ids)] = True
        self.tools = template_supports_tools(self.tokenizer)
        self.renderer = ChatRenderer(self.tokenizer)
        self.encoder = PromptEncoder(self.tokenizer)
        self.detector = build("span_detector", settings.detector, **settings.detector_options)
        self.other = None
        self.agreement_stride = 1  # every k-th record is compared (set per file by process)
        if settings.agreement_sample > 0:
            try:
                self.other = build("span_detector", other_detector(settings.detector))
            except PluginError:
                self.other = None

    # ------------------------------------------------------------------ encoding
    def _label(
        self,
        rendered: str,
        segments: list[Segment],
        spans: list[tuple[Span, ...]],
        encoded: tuple[Any, Any],
    ) -> tuple[Example, Any, Any]:
        import numpy as np

        labels = np.zeros(len(rendered), np.int8)
        confidence = np.ones(len(rendered), np.float32)
        located = locate(rendered, segments, spans, labels, confidence)
        ids, offsets = encoded
        special = self.special[ids]
        types, conf = token_spans(offsets, labels, confidence, special)
        return Example(ids, types, conf, located.missing_chars), offsets, located

    def _example(self, segments: list[Segment], spans: list[tuple[Span, ...]]) -> Example:
        rendered = render(segments, self.tokenizer)
        encoded = arrays(self.backend.encode(rendered, add_special_tokens=False))
        return self._label(rendered, segments, spans, encoded)[0]

    # ------------------------------------------------------------------ records
    def run(self, items: list[tuple[int, int, dict[str, Any]]]) -> dict[str, list[Any]]:
        """``items``: (line, index, record). Returns columns; dropped records get one row with
        ``_drop`` set and empty token columns."""
        rows, prepared = self.prepare(items)
        return self.finish(rows, prepared, self.encode(prepared))

    def run_pipelined(
        self, batches: Iterable[list[tuple[int, int, dict[str, Any]]]]
    ) -> Iterator[dict[str, list[Any]]]:
        """:meth:`run` over ``batches``, encoding batch k on a thread while batch k+1 is parsed
        and rendered: the tokenizer releases the GIL, so its work and ours overlap."""
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1, thread_name_prefix="deepcoder-encode") as pool:
            pending = None
            for items in batches:
                rows, prepared = self.prepare(items)
                encoding = pool.submit(self.encode, prepared)
                if pending is not None:
                    yield self.finish(*pending[0], pending[1].result())
                pending = (rows, prepared), encoding
            if pending is not None:
                yield self.finish(*pending[0], pending[1].result())

    def encode(self, prepared: list[Any]) -> list[tuple[Any, Any]]:
        """(ids, offsets) of each rendered chat, each distinct prompt encoded once."""
        return self.encoder.encode([p[4] for p in prepared], [p[5] for p in prepared])

    def prepare(self, items: list[tuple[int, int, Any]]) -> tuple[_Rows, list[Any]]:
        """Decode, parse, filter, detect and render each record of a batch (a record is a
        dict, or its raw JSONL line)."""
        s = self.settings
        rows = _Rows()
        parsed_items = []
        for line, index, record in items:
            try:
                if isinstance(record, bytes):
                    record = decode_record(record)
            except ValueError as exc:
                rows.drop(line, index, "bad_record", str(exc), fmt=s.fmt)
                continue
            try:
                parsed = parse_record(record, s.fmt)
            except RecordError as exc:
                rows.drop(line, index, "bad_record", str(exc), fmt=s.fmt)
                continue
            if s.successful_only and not parsed.meta["success"]:
                rows.drop(line, index, "unsuccessful", "", parsed=parsed)
                continue
            try:
                spans = detect_spans(self.detector, parsed.segments)
            except Exception as exc:  # a detector failing on odd input: skip the record
                rows.drop(line, index, "bad_record", f"span detector: {exc}"[:300], parsed=parsed)
                continue
            parsed_items.append((line, index, parsed, spans))
        prepared = []
        rendered_all = render_many(
            [p[2].segments for p in parsed_items], self.tokenizer, self.renderer
        )
        for (line, index, parsed, spans), rendered in zip(parsed_items, rendered_all, strict=True):
            if isinstance(rendered, Exception):
                reason = f"chat template: {type(rendered).__name__}: {rendered}"
                rows.drop(line, index, "bad_record", reason[:300], parsed=parsed)
                continue
            try:
                rendered.encode("utf-8")
            except UnicodeEncodeError as exc:  # a JSON "\ud800" escape: no tokenizer takes it
                reason = f"invalid UTF-8: lone surrogate at character {exc.start}"
                rows.drop(line, index, "bad_record", reason, parsed=parsed)
                continue
            end = prompt_end(rendered, parsed.segments)
            prepared.append((line, index, parsed, spans, rendered, end))
        return rows, prepared

    def finish(
        self, rows: _Rows, prepared: list[Any], encodings: list[Any]
    ) -> dict[str, list[Any]]:
        """Align, fit into ``max_length``, filter."""
        s = self.settings
        for (line, index, parsed, spans, rendered, _), enc in zip(prepared, encodings, strict=True):
            example, offsets, located = self._label(rendered, parsed.segments, spans, enc)
            agreement = None
            if self.other is not None and index % self.agreement_stride == 0:
                agreement = self._agreement(rendered, parsed.segments, example, offsets, located)
            if len(example.ids) <= s.max_length:
                pieces, note = [example], ""
            elif s.overflow == "drop":
                pieces, note = [], "too_long"
            elif s.overflow == "split":
                pieces, note = self._split(parsed.segments, spans, offsets, located)
            else:
                pieces, note = self._truncate(parsed.segments, spans, offsets, located)
            if not pieces:
                rows.drop(line, index, note or "too_long", "", parsed=parsed)
                continue
            # the same chat renders to the same text: its hash finds duplicates
            digest = hashlib.sha1(rendered.encode("utf-8", "surrogatepass")).hexdigest()
            kept = 0
            for part, piece in enumerate(pieces):
                reason = self._filter(piece)
                if reason:
                    if part == 0 and len(pieces) == 1:
                        rows.drop(line, index, reason, "", parsed=parsed, agreement=agreement)
                    continue
                rows.add(line, index, parsed, piece, note, agreement if kept == 0 else None, digest)
                kept += 1
            if len(pieces) > 1 and not kept:
                rows.drop(line, index, "too_short", "", parsed=parsed)
        return rows.columns

    def _filter(self, example: Example) -> str:
        import numpy as np

        s = self.settings
        n = len(example.ids)
        if n < s.min_tokens:
            return "too_short"
        labeled = int(np.count_nonzero(example.types))
        if labeled == 0:
            return "no_labeled_tokens"
        if (
            int(np.count_nonzero(example.types == SpanType.REASONING))
            < s.min_reasoning_ratio * labeled
        ):
            return "low_reasoning_ratio"
        if int(np.count_nonzero(example.types == SpanType.ACTION)) < s.min_action_ratio * labeled:
            return "low_action_ratio"
        return ""

    def _agreement(self, rendered, segments, example, offsets, located) -> dict[str, Any]:
        """Token agreement of the other detector with this one, after the prompt."""
        import numpy as np

        try:
            spans = detect_spans(self.other, segments)
        except Exception:  # the comparison must never stop processing
            return {}
        labels = np.zeros(len(rendered), np.int8)
        confidence = np.ones(len(rendered), np.float32)
        locate(rendered, segments, spans, labels, confidence)
        special = self.special[example.ids]
        other, _ = token_spans(offsets, labels, confidence, special)
        body = offsets[:, 0] >= located.prompt_end
        return {"this": example.types[body], "other": other[body]}

    # ------------------------------------------------------------------ overflow
    def _boundaries(self, segments, spans, located) -> list[tuple[int, int, int]]:
        """Step starts as (segment, offset, rendered position), in order: every assistant
        message after the first, and every span right after an observation inside one text
        (FireAct-style single-message trajectories)."""
        out = []
        body = next((i for i, seg in enumerate(segments) if not seg.prompt), len(segments))
        for i in range(body, len(segments)):
            seg, where = segments[i], located.ranges[i]
            if where is None:
                continue
            if (
                i > body
                and seg.role == "assistant"
                and seg.field == "content"
                and seg.message != segments[i - 1].message
            ):
                out.append((i, 0, where[0]))
            if where[1] - where[0] == len(seg.text):
                seg_spans = spans[i]
                for a, b in zip(seg_spans, seg_spans[1:], strict=False):
                    if a.type == SpanType.OBSERVATION and b.type != SpanType.OBSERVATION:
                        out.append((i, b.start, where[0] + b.start))
        return sorted(set(out), key=lambda t: t[2])

    def _cut(self, segments, spans, start: tuple[int, int] | None, end: tuple[int, int] | None):
        """The prompt plus the body between two step boundaries (None: body start / end)."""
        body = next((i for i, seg in enumerate(segments) if not seg.prompt), len(segments))
        i0, o0 = start if start else (body, 0)
        i1, o1 = end if end else (len(segments), 0)
        out_seg, out_spans = list(segments[:body]), list(spans[:body])
        for i in range(i0, min(i1 + 1, len(segments))):
            a = o0 if i == i0 else 0
            b = o1 if i == i1 else len(segments[i].text)
            if b <= a:
                continue
            seg = segments[i]
            out_seg.append(dataclasses.replace(seg, text=seg.text[a:b], parts=()))
            out_spans.append(
                tuple(
                    Span(max(sp.start, a) - a, min(sp.end, b) - a, sp.type, sp.confidence)
                    for sp in spans[i]
                    if sp.end > a and sp.start < b
                )
            )
        return out_seg, out_spans

    def _truncate(self, segments, spans, offsets, located):
        """Keep whole steps: the longest prefix ending before a step start that fits."""
        import numpy as np

        ends = offsets[:, 1]
        limit = self.settings.max_length
        tries = 0
        for i, off, pos in reversed(self._boundaries(segments, spans, located)):
            if int(np.searchsorted(ends, pos, side="right")) + _MARGIN > limit:
                continue
            example = self._example(*self._cut(segments, spans, None, (i, off)))
            if len(example.ids) <= limit:
                return [example], "truncated"
            tries += 1
            if tries >= 4:
                break
        return [], "too_long"

    def _split(self, segments, spans, offsets, located):
        """Windows of whole steps, each after the prompt, each within ``max_length``."""
        import numpy as np

        ends = offsets[:, 1]
        limit = self.settings.max_length
        body = next((i for i, seg in enumerate(segments) if not seg.prompt), len(segments))
        body_pos = located.ranges[body][0] if body < len(segments) and located.ranges[body] else 0
        prompt_tokens = int(np.searchsorted(ends, body_pos, side="right"))
        points: list[tuple[int, int] | None] = [None]
        marks = [body_pos]
        for i, off, pos in self._boundaries(segments, spans, located):
            points.append((i, off))
            marks.append(pos)
        points.append(None)
        tokens = [int(np.searchsorted(ends, p, side="right")) for p in marks] + [len(ends)]
        pieces = []
        i = 0
        while i < len(points) - 1:
            j = len(points) - 1
            while j > i and prompt_tokens + tokens[j] - tokens[i] + _MARGIN > limit:
                j -= 1
            example = None
            while j > i:
                start = points[i] if i > 0 else None
                candidate = self._example(*self._cut(segments, spans, start, points[j]))
                if len(candidate.ids) <= limit:
                    example = candidate
                    break
                j -= 1
            if example is None:  # one step alone is too long: leave it out
                i += 1
                continue
            pieces.append(example)
            i = j
        return pieces, ("split" if len(pieces) > 1 else "truncated" if pieces else "too_long")


class _Rows:
    """Column builder for :meth:`Worker.run`."""

    def __init__(self) -> None:
        self.columns: dict[str, list[Any]] = {name: [] for name in COLUMNS + PRIVATE}

    def _meta(self, line, index, parsed: Parsed | None, fmt: str = "", digest: str = "") -> None:
        meta = parsed.meta if parsed else {}
        c = self.columns
        c["trajectory_id"].append(meta.get("trajectory_id") or f"line-{line}")
        c["problem_id"].append(meta.get("problem_id", ""))
        c["difficulty"].append(meta.get("difficulty", ""))
        c["category"].append(meta.get("category", ""))
        c["success"].append(bool(meta.get("success", False)))
        c["_line"].append(line)
        c["_index"].append(index)
        c["_format"].append(parsed.format if parsed else fmt)
        c["_hash"].append(digest)

    def drop(self, line, index, reason, message, *, parsed=None, fmt="", agreement=None):
        import numpy as np

        self._meta(line, index, parsed, fmt)
        c = self.columns
        c["input_ids"].append(np.zeros(0, np.int32))
        c["attention_mask"].append(np.zeros(0, np.int8))
        c["span_type"].append(np.zeros(0, np.int8))
        c["span_confidence"].append(np.zeros(0, np.float32))
        c["_drop"].append(reason)
        c["_message"].append(message)
        c["_note"].append("")
        c["_missing"].append(0)
        self._agreement(agreement)

    def add(self, line, index, parsed, example: Example, note: str, agreement, digest) -> None:
        import numpy as np

        self._meta(line, index, parsed, digest=digest)
        c = self.columns
        c["input_ids"].append(example.ids)
        c["attention_mask"].append(np.ones(len(example.ids), np.int8))
        c["span_type"].append(example.types)
        c["span_confidence"].append(example.conf)
        c["_drop"].append("")
        c["_message"].append("")
        c["_note"].append(note)
        c["_missing"].append(int(example.missing))
        self._agreement(agreement)

    def _agreement(self, agreement) -> None:
        import numpy as np

        c = self.columns
        if agreement:
            c["_agree_this"].append(agreement["this"].astype(np.int8))
            c["_agree_other"].append(agreement["other"].astype(np.int8))
        else:
            c["_agree_this"].append(np.zeros(0, np.int8))
            c["_agree_other"].append(np.zeros(0, np.int8))


COLUMNS = [
    "input_ids",
    "attention_mask",
    "span_type",
    "span_confidence",
    "trajectory_id",
    "problem_id",
    "difficulty",
    "category",
    "success",
]
PRIVATE = [
    "_line",
    "_index",
    "_format",
    "_hash",
    "_drop",
    "_message",
    "_note",
    "_missing",
    "_agree_this",
    "_agree_other",
]


def features():
    """Arrow types of the rows the worker produces (public columns first)."""
    from datasets import Features, List, Value

    return Features(
        {
            "input_ids": List(Value("int32")),
            "attention_mask": List(Value("int8")),
            "span_type": List(Value("int8")),
            "span_confidence": List(Value("float32")),
            "trajectory_id": Value("string"),
            "problem_id": Value("string"),
            "difficulty": Value("string"),
            "category": Value("string"),
            "success": Value("bool"),
            "_line": Value("int64"),
            "_index": Value("int64"),
            "_format": Value("string"),
            "_hash": Value("string"),
            "_drop": Value("string"),
            "_message": Value("string"),
            "_note": Value("string"),
            "_missing": Value("int64"),
            "_agree_this": List(Value("int8")),
            "_agree_other": List(Value("int8")),
        }
    )


_WORKERS: dict[str, Worker] = {}


def _worker(settings: Settings) -> Worker:
    key = json.dumps(dataclasses.asdict(settings), sort_keys=True, default=str)
    if key not in _WORKERS:
        _WORKERS[key] = Worker(settings)
    return _WORKERS[key]


def _rows_table(results: Iterable[dict[str, list[Any]]]) -> Any:
    """One Arrow table from the column dicts of :meth:`Worker.run`, in order."""
    columns: dict[str, list[Any]] = {name: [] for name in COLUMNS + PRIVATE}
    for done in results:
        for name, values in done.items():
            columns[name].extend(values)
    return _table(columns)


def _share(worker: Worker, items: list[Any], batch: int, bar: Any = None) -> Any:
    """The example rows of ``items``, batch after batch, as one Arrow table."""

    def batches():
        for start in range(0, len(items), batch):
            yield worker.run(items[start : start + batch])
            if bar is not None:
                bar.update(1)

    return _rows_table(batches())


def _run_forked(worker: Worker, items: list[Any], batch: int, num_proc: int, bar: Any) -> Any:
    """The records split in ``num_proc`` equal shares: this process works on the first while
    ``num_proc - 1`` forked children work on the others. Children inherit the loaded worker
    (tokenizer, template, detector) and the records, and send back one Arrow table each
    through a pipe; the result is in input order. A failing child fails the stage."""
    import pickle
    import signal

    import pyarrow as pa

    size = -(-len(items) // num_proc)
    shares = [items[i : i + size] for i in range(0, len(items), size)]
    # one tokenizer thread per process (read by tokenizers at every call); set before fork,
    # tokenizers does not warn about a fork after its thread pool was used
    saved = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    # what exists now is never garbage-collected in the children: their collector does not
    # walk (and copy-on-write) the parent's objects (the gc.freeze documentation's advice)
    gc.freeze()
    children: list[tuple[int, int, int]] = []  # (pid, read end of its pipe, records)
    try:
        for share in shares[1:]:
            read_end, write_end = os.pipe()
            pid = os.fork()
            if pid == 0:  # the child: compute, send, and leave without running any cleanup
                os.close(read_end)
                code = 0
                try:
                    payload = pickle.dumps(("ok", _share(worker, share, batch)), protocol=5)
                except BaseException as exc:  # noqa: BLE001 - reported by the parent
                    payload = pickle.dumps(("error", f"{type(exc).__name__}: {exc}"))
                    code = 1
                with os.fdopen(write_end, "wb") as pipe:
                    pipe.write(payload)
                os._exit(code)
            os.close(write_end)
            children.append((pid, read_end, len(share)))
        tables = [_share(worker, shares[0], batch, bar)]
        while children:
            pid, read_end, records = children[0]
            with os.fdopen(read_end, "rb") as pipe:
                data = pipe.read()
            os.waitpid(pid, 0)
            children.pop(0)  # reaped: never signalled again
            status, result = pickle.loads(data) if data else ("error", "died without a result")
            if status != "ok":
                raise ProcessError(f"processing worker {pid} failed: {result}")
            tables.append(result)
            bar.update(-(-records // batch))
    finally:
        for pid, read_end, _ in children:  # interrupted or failed: no worker outlives us
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                os.close(read_end)
            except OSError:
                pass
        gc.unfreeze()
        if saved is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = saved
    return pa.concat_tables(tables)


def _table(columns: dict[str, list[Any]]):
    """An Arrow table from worker columns, building list columns from numpy in one go."""
    import numpy as np
    import pyarrow as pa

    schema = features().arrow_schema
    arrays = []
    for name in schema.names:
        values = columns[name]
        kind = schema.field(name).type
        if pa.types.is_list(kind):
            lengths = np.fromiter((len(v) for v in values), dtype=np.int64, count=len(values))
            offsets = np.zeros(len(values) + 1, dtype=np.int32)
            np.cumsum(lengths, out=offsets[1:])
            flat = (
                np.concatenate(values) if values else np.zeros(0, kind.value_type.to_pandas_dtype())
            )
            flat = flat.astype(kind.value_type.to_pandas_dtype(), copy=False)
            arrays.append(pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat)))
        else:
            arrays.append(pa.array(values, type=kind))
    return pa.Table.from_arrays(arrays, schema=schema)


# ---------------------------------------------------------------------------- the stage


def _bad_kind(reason: str) -> str:
    for key, kind in (
        ("nested too deeply", "too_deep"),
        ("invalid JSON", "invalid_json"),
        ("invalid UTF-8", "invalid_utf8"),
        ("too large", "too_large"),
        ("truncated", "truncated_line"),
        ("expected a JSON object", "not_an_object"),
        ("empty steps", "empty_steps"),
        ("empty step", "empty_steps"),
        ("empty record", "empty_record"),
        ("has type", "wrong_type"),
        ("missing field", "missing_field"),
        ("unknown record format", "unknown_format"),
    ):
        if key in reason:
            return kind
    return "bad_record"


def _check_trajectories(path: Path) -> None:
    """Refuse, before any work, a file that cannot hold trajectories: empty or compressed."""
    with open(path, "rb") as handle:
        head = handle.read(16)
    if not head:
        raise ProcessError(f"{path}: empty file: no trajectories to process (check the path)")
    packed = packed_format(head)
    if packed:
        raise ProcessError(f"{path}: not UTF-8 JSONL (looks {packed})")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def process(
    config: Config,
    *,
    trajectories: Path,
    out: Path,
    tokenizer: str | None = None,
    detector: str | None = None,
    num_proc: int | None = None,
    fmt: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Turn ``trajectories`` (JSONL) into a tokenized dataset in ``out``; returns the summary.

    ``out`` gets the ``datasets`` folder (``save_to_disk``), ``summary.json`` and
    ``config.yaml``; it is built next to ``out`` and moved into place at the end, so a killed
    run leaves the previous output (or none), never a half-written one.
    """
    import numpy as np

    started = time.perf_counter()
    cfg = config.processing
    trajectories, out = Path(trajectories), Path(out)
    fmt = fmt or cfg.format
    if fmt not in ("auto", *FORMATS):
        raise ProcessError(f"format {fmt!r}: expected auto or one of {', '.join(FORMATS)}")
    if cfg.overflow not in OVERFLOW:
        raise ProcessError(
            f"processing.overflow {cfg.overflow!r}: expected one of {', '.join(OVERFLOW)}"
        )
    if cfg.max_length < 8:
        raise ProcessError(f"processing.max_length {cfg.max_length}: must be at least 8")
    if not trajectories.is_file():
        raise ProcessError(f"{trajectories}: no such trajectories file")
    _check_trajectories(trajectories)
    detector = detector or cfg.detector
    num_proc = int(cfg.num_proc if num_proc is None else num_proc)
    if num_proc <= 0:  # one per core this process may use
        num_proc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    settings = Settings(
        tokenizer=resolve_tokenizer(config, tokenizer),
        detector=detector,
        detector_options=dict(cfg.detector_options),
        fmt=fmt,
        max_length=cfg.max_length,
        overflow=cfg.overflow,
        min_tokens=cfg.min_tokens,
        min_reasoning_ratio=cfg.min_reasoning_ratio,
        min_action_ratio=cfg.min_action_ratio,
        successful_only=cfg.successful_only,
        agreement_sample=cfg.agreement_sample,
    )
    try:
        worker = _worker(settings)  # fails early on a bad tokenizer or detector name
    except PluginError as exc:
        raise ProcessError(str(exc)) from exc

    bad: list[BadLine] = []
    phases = {"setup": time.perf_counter() - started}
    # lines are decoded by the workers, in parallel; bad JSON is reported from there
    items = [
        (line, index, raw)
        for index, (line, raw) in enumerate(
            jsonl_lines(trajectories, errors=bad, max_line_bytes=cfg.max_record_bytes)
        )
    ]
    if not items and not bad:
        raise ProcessError(f"{trajectories}: no trajectories: every line is blank")
    if cfg.agreement_sample > 0:  # compared records spread over the file (and the workers)
        worker.agreement_stride = max(1, -(-len(items) // cfg.agreement_sample))
    phases["read"] = time.perf_counter() - started - sum(phases.values())
    batch = max(1, cfg.batch_size)
    if not hasattr(os, "fork"):
        num_proc = 1  # workers inherit the loaded tokenizer by fork (Linux, macOS)
    chunks = range(0, len(items), batch)
    with click.progressbar(chunks, label="process", file=None if progress else _Null()) as bar:
        if num_proc == 1 or len(items) < 2 * batch:
            batches = (items[start : start + batch] for start in bar)
            table = _rows_table(worker.run_pipelined(batches))
        else:
            table = _run_forked(worker, items, batch, num_proc, bar)
    phases["records"] = time.perf_counter() - started - sum(phases.values())

    # ---- drops, de-duplication, summary
    drops: Counter[str] = Counter()
    formats: Counter[str] = Counter()
    bad_lines = [{"line": b.line, "reason": b.reason} for b in bad]
    # plain Arrow from here on: a datasets.Dataset is made once, to be saved
    meta = table.select(
        ["_line", "_index", "_format", "_hash", "_drop", "_message", "_note", "_missing"]
    ).to_pydict()
    keep: list[int] = []
    first_index_of: dict[str, int] = {}
    counted: set[int] = set()
    notes: Counter[str] = Counter()
    missing = 0
    for row, (line, index, fmt_name, digest, drop, message, note, miss) in enumerate(
        zip(*(meta[k] for k in meta), strict=False)
    ):
        new_record = index not in counted
        counted.add(index)
        if new_record and fmt_name and drop != "bad_record":
            formats[fmt_name] += 1
        if drop:
            if drop == "bad_record":
                bad_lines.append({"line": line, "reason": message})
            else:
                drops[drop] += 1
            continue
        if cfg.dedup and digest:
            owner = first_index_of.setdefault(digest, index)
            if owner != index:
                if new_record:
                    drops["duplicate"] += 1
                continue
        if note and new_record:
            notes[note] += 1
        missing += miss
        keep.append(row)

    agreement = _agreement_summary(table, detector, worker.other is not None, cfg)
    import pyarrow as pa
    import pyarrow.compute as pc
    from datasets import Dataset

    table = table.take(pa.array(keep, pa.int64())).drop_columns(PRIVATE)
    source_sha256 = _sha256(trajectories)
    config_fingerprint = config.section_fingerprint("processing")
    # the same inputs make the same dataset: its fingerprint says so (and datasets need not
    # hash the table to make one up)
    fingerprint = hashlib.sha256(
        json.dumps(
            [source_sha256, config_fingerprint, dataclasses.asdict(settings)],
            sort_keys=True,
            default=str,
        ).encode()
    ).hexdigest()[:16]
    dataset = Dataset(table, fingerprint=fingerprint)
    span_type = table.column("span_type").combine_chunks().flatten().to_numpy()
    counts = np.bincount(span_type.astype(np.int64), minlength=len(SpanType))
    total = int(counts.sum())
    bad_lines.sort(key=lambda b: b["line"])
    bad_kinds = Counter(_bad_kind(b["reason"]) for b in bad_lines)
    phases["filter"] = time.perf_counter() - started - sum(phases.values())
    records_read = len(items) + len(bad)
    summary = {
        "schema": 1,
        "stage": "process",
        "trajectories": str(trajectories),
        "trajectories_sha256": source_sha256,
        "config_fingerprint": config_fingerprint,
        "tokenizer": settings.tokenizer,
        "chat_template": "tokenizer" if worker.tokenizer.chat_template else "chatml-fallback",
        "template_tools": worker.tools,
        "detector": detector,
        "format": fmt,
        "formats": dict(formats),
        "records": {
            "read": records_read,
            "bad": len(bad_lines),
            "dropped": sum(drops.values()),
            "kept": len(pc.unique(table.column("trajectory_id"))),
        },
        "examples": len(dataset),
        "truncated": notes.get("truncated", 0),
        "split": notes.get("split", 0),
        "tokens": total,
        "span_tokens": {name: int(counts[t]) for t, name in enumerate(SPAN_NAMES)},
        "span_ratios": {
            name: round(int(counts[t]) / total, 4) if total else 0.0
            for t, name in enumerate(SPAN_NAMES)
        },
        "drops": dict(sorted(drops.items())),
        "bad_input": {
            "count": len(bad_lines),
            "by_reason": dict(sorted(bad_kinds.items())),
            "lines": bad_lines[:_MAX_LISTED_BAD],
        },
        "template_missing_chars": missing,
        "agreement": agreement,
        "num_proc": num_proc,
    }
    _write(out, dataset, summary, config)
    phases["write"] = time.perf_counter() - started - sum(phases.values())
    seconds = time.perf_counter() - started
    summary["seconds"] = round(seconds, 3)
    summary["phase_seconds"] = {name: round(value, 3) for name, value in phases.items()}
    summary["trajectories_per_second"] = round(records_read / seconds, 1) if seconds else None
    atomic_write_json(out / "summary.json", summary)
    return summary


def _agreement_summary(table, detector: str, available: bool, cfg) -> dict[str, Any] | None:
    """Token agreement of ``structured`` and ``regex`` on ``agreement_sample`` records spread
    evenly over the file."""
    import numpy as np

    if cfg.agreement_sample <= 0:
        return None
    other = other_detector(detector)
    if not available:
        return {"detectors": [detector, other], "error": f"span detector '{other}' not installed"}
    column = table.column("_agree_this").combine_chunks()
    this = column.flatten().to_numpy()
    that = table.column("_agree_other").combine_chunks().flatten().to_numpy()
    records = int(np.count_nonzero(np.diff(column.offsets.to_numpy())))
    result = compare_tokens(this, that)
    return {
        "detectors": [detector, other],
        "records": records,
        "tokens": result["tokens"],
        "agreement": result["accuracy"],
        # precision/recall of the other detector, taking this one as the reference
        "per_type": result["per_type"],
    }


def _write(out: Path, dataset: Any, summary: dict[str, Any], config: Config) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    from datasets import disable_progress_bars, enable_progress_bars

    disable_progress_bars()
    try:
        # one shard at least: datasets cannot load an empty dataset saved with none
        dataset.save_to_disk(str(staging), num_shards=1 if len(dataset) == 0 else None)
        atomic_write_json(staging / "summary.json", summary)
        snapshot(config, staging / "config.yaml")
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{staging.name[-8:]}"
            out.rename(old)
        staging.rename(out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        enable_progress_bars()
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


class _Null:
    """A file that swallows the progress bar when progress is off."""

    def write(self, _text: str) -> None:
        pass

    def flush(self) -> None:
        pass


# ---------------------------------------------------------------------------- CLI


@click.command("process")
@click.option(
    "--trajectories",
    required=True,
    type=click.Path(dir_okay=False),
    help="JSONL of trajectories (ours, OpenAI chat, FireAct, ShareGPT, or {text}).",
)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Dataset folder.")
@click.option("--tokenizer", help="Student tokenizer folder (default: the student's).")
@click.option("--detector", help="Span detector plugin: structured, regex, ...")
@click.option("--num-proc", type=int, help="Worker processes (0: one per core).")
@click.option(
    "--format", "fmt", type=click.Choice(["auto", *FORMATS]), help="Input format (default: auto)."
)
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="YAML config.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a key.")
def process_command(
    trajectories: str,
    out: str,
    tokenizer: str | None,
    detector: str | None,
    num_proc: int | None,
    fmt: str | None,
    config_path: str | None,
    overrides: tuple[str, ...],
) -> None:
    """Tokenize trajectories with the student's chat template and label every token's span."""
    try:
        config = load_config(config_path, overrides)
        summary = process(
            config,
            trajectories=Path(trajectories),
            out=Path(out),
            tokenizer=tokenizer,
            detector=detector,
            num_proc=num_proc,
            fmt=fmt,
            progress=True,
        )
    except (ConfigError, ProcessError, PluginError, OSError) as exc:
        from .cli import fail

        fail(str(exc))
        return
    for bad in summary["bad_input"]["lines"][:10]:
        click.secho(
            f"warning: skipped {trajectories}:{bad['line']}: {bad['reason']}", fg="yellow", err=True
        )
    too_large = summary["bad_input"]["by_reason"].get("too_large", 0)
    if too_large:
        click.secho(
            f"warning: {too_large} record(s) over processing.max_record_bytes "
            f"({config.processing.max_record_bytes:,} bytes) skipped unread; raise it "
            "(--set processing.max_record_bytes=N) to keep them",
            fg="yellow",
            err=True,
        )
    if summary["bad_input"]["count"] > 10:
        click.secho(
            f"warning: {summary['bad_input']['count'] - 10} more bad lines: see {out}/summary.json",
            fg="yellow",
            err=True,
        )
    ratios = ", ".join(f"{k} {v:.1%}" for k, v in summary["span_ratios"].items())
    drops = ", ".join(f"{k} {v}" for k, v in summary["drops"].items()) or "none"
    agreement = summary.get("agreement") or {}
    click.echo(
        f"{summary['examples']} examples ({summary['tokens']} tokens) from "
        f"{summary['records']['read']} records in {summary['seconds']:.1f}s -> {out}\n"
        f"spans: {ratios}\ndropped: {drops}; bad input: {summary['bad_input']['count']}"
        + (
            f"\nagreement {'/'.join(agreement['detectors'])}: {agreement['agreement']:.1%}"
            if agreement.get("agreement") is not None
            else ""
        )
    )


# ---------------------------------------------------------------------------- show example

SPAN_STYLES = {
    SpanType.OTHER: {"dim": True},
    SpanType.REASONING: {"fg": "magenta"},
    SpanType.ACTION: {"fg": "yellow", "bold": True},
    SpanType.OBSERVATION: {"fg": "green"},
    SpanType.ANSWER: {"fg": "blue", "bold": True},
}


def show_example(
    directory: Path, index: int, *, tokenizer: str | None = None, markers: bool = False
) -> str:
    """One processed example as text, runs of one span type coloured (or tagged, ``markers``)."""
    from datasets import load_from_disk

    directory = Path(directory)
    try:
        dataset = load_from_disk(str(directory))
    except (FileNotFoundError, ValueError) as exc:
        raise ProcessError(f"{directory}: not a processed dataset ({exc})") from exc
    if not -len(dataset) <= index < len(dataset):
        raise ProcessError(f"{directory}: index {index} out of range (0..{len(dataset) - 1})")
    example = dataset[index]
    if tokenizer is None:
        summary_path = directory / "summary.json"
        if summary_path.exists():
            tokenizer = json.loads(summary_path.read_text(encoding="utf-8")).get("tokenizer")
    if tokenizer is None:
        raise ProcessError(f"{directory}: no summary.json naming the tokenizer; pass --tokenizer")
    tok = load_tokenizer(tokenizer)
    ids, types = example["input_ids"], example["span_type"]
    counts = Counter(types)
    header = (
        f"example {index} of {len(dataset)}: trajectory {example['trajectory_id']} "
        f"problem {example['problem_id'] or '-'} ({len(ids)} tokens; "
        + ", ".join(f"{SpanType(t).name.lower()} {counts.get(t, 0)}" for t in range(5))
        + ")"
    )
    legend = " ".join(click.style(f"[{t.name.lower()}]", **SPAN_STYLES[t]) for t in SpanType)
    parts = [header, legend, ""]
    start = 0
    for end in range(1, len(ids) + 1):
        if end == len(ids) or types[end] != types[start]:
            text = tok.decode(ids[start:end], skip_special_tokens=False)
            kind = SpanType(types[start])
            if markers:
                text = f"⟦{kind.name.lower()}⟧{text}"
            parts.append(click.style(text, **SPAN_STYLES[kind]))
            start = end
    return "\n".join(parts[:3]) + "".join(parts[3:])
