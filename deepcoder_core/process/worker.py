"""The worker: batches of records in, example rows out (:class:`~.columns.Rows`).

Per record: decode the JSONL line, parse it into segments (:mod:`deepcoder_core.spans`),
drop it if unsuccessful, detect spans; per batch: render every chat with the student's
template and encode them together (:class:`~deepcoder_core.encoding.PromptEncoder`); per
record again: map character spans to tokens, fit into ``max_length``
(:mod:`.overflow`) and filter (length, span ratios). A record that cannot be read or
rendered becomes a dropped row that says why. One worker per process, cached by its
settings, so forked children inherit it ready (tokenizer, template, detector loaded).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Iterator
from typing import Any

from ..chat_template import ChatRenderer
from ..encoding import PromptEncoder, arrays
from ..io import decode_record
from ..plugins import PluginError, build
from ..protocols import Span, SpanType
from ..spans import (
    RecordError,
    Segment,
    detect_spans,
    locate,
    parse_record,
    prompt_end,
    render,
    render_many,
    template_supports_tools,
    token_spans,
)
from .columns import Example, Rows
from .overflow import fit
from .settings import Settings, fast_tokenizer, other_detector

Items = list[tuple[int, int, Any]]  # (line, record number, the raw JSONL line or a dict)


class Worker:
    """Turns batches of records into example rows. One per process (see :func:`get_worker`)."""

    def __init__(self, settings: Settings) -> None:
        import numpy as np

        self.settings = settings
        self.tokenizer = fast_tokenizer(settings.tokenizer)
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
        self._systems: dict[str, Any] = {}  # system text -> its tokens (see _system_ids)
        if settings.agreement_sample > 0:
            try:
                self.other = build("span_detector", other_detector(settings.detector))
            except PluginError:
                self.other = None

    # ------------------------------------------------------------------ records
    def run(self, items: Items) -> dict[str, list[Any]]:
        """``items``: (line, index, record). Returns columns; dropped records get one row with
        ``_drop`` set and empty token columns."""
        rows, prepared = self.prepare(items)
        return self.finish(rows, prepared, self.encode(prepared))

    def run_pipelined(self, batches: Iterable[Items]) -> Iterator[dict[str, list[Any]]]:
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

    def prepare(self, items: Items) -> tuple[Rows, list[Any]]:
        """Decode, parse, filter, detect and render each record of a batch (a record is a
        dict, or its raw JSONL line)."""
        s = self.settings
        rows = Rows()
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

    def finish(self, rows: Rows, prepared: list[Any], encodings: list[Any]) -> dict[str, list[Any]]:
        """Align, fit into ``max_length``, filter."""
        s = self.settings
        for (line, index, parsed, spans, rendered, _), enc in zip(prepared, encodings, strict=True):
            example, offsets, located = self._label(rendered, parsed.segments, spans, enc)
            agreement = None
            if self.other is not None and index % self.agreement_stride == 0:
                agreement = self._agreement(rendered, parsed.segments, example, offsets, located)
            pieces, note = fit(
                example,
                s.overflow,
                s.max_length,
                parsed.segments,
                spans,
                offsets,
                located,
                self._example,
            )
            if not pieces:
                rows.drop(line, index, note or "too_long", "", parsed=parsed)
                continue
            # the same chat renders to the same text: its hash finds duplicates
            digest = hashlib.sha1(rendered.encode("utf-8", "surrogatepass")).hexdigest()
            prefix = self._teacher_prefix(parsed, example.ids)
            kept = 0
            for part, piece in enumerate(pieces):
                reason = self._filter(piece)
                if reason:
                    if part == 0 and len(pieces) == 1:
                        rows.drop(line, index, reason, "", parsed=parsed, agreement=agreement)
                    continue
                first = agreement if kept == 0 else None
                rows.add(line, index, parsed, piece, note, first, digest, prefix)
                kept += 1
            if len(pieces) > 1 and not kept:
                rows.drop(line, index, "too_short", "", parsed=parsed)
        return rows.columns

    def _teacher_prefix(self, parsed: Any, ids: Any) -> dict[str, Any] | None:
        """The teacher's own system message as tokens, and how many leading tokens of the row
        they replace (privileged exemplars); None when the record has none or the row does not
        start with its plain system message (then the teacher scores the row as it is)."""
        import numpy as np

        text = parsed.meta.get("teacher_system")
        segments = parsed.segments
        if not text or not segments or segments[0].role != "system":
            return None
        plain = self._system_ids(segments[0].text)
        if len(plain) > len(ids) or not np.array_equal(np.asarray(ids[: len(plain)]), plain):
            return None
        teacher = self._system_ids(text)
        return {"teacher_prefix": teacher, "teacher_prefix_replaces": len(plain)}

    def _system_ids(self, text: str) -> Any:
        """Tokens of a system message alone, as the chat template renders it (cached: every
        record of a run shares one or two system prompts)."""
        import numpy as np

        cached = self._systems.get(text)
        if cached is None:
            rendered = self.tokenizer.apply_chat_template(
                [{"role": "system", "content": text}], tokenize=False
            )
            ids = self.backend.encode(rendered, add_special_tokens=False).ids
            cached = self._systems[text] = np.asarray(ids, dtype=np.int32)
            while len(self._systems) > 8:
                self._systems.pop(next(iter(self._systems)))
        return cached

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


_WORKERS: dict[str, Worker] = {}


def get_worker(settings: Settings) -> Worker:
    """The worker of ``settings`` in this process, built on first use."""
    key = json.dumps(dataclasses.asdict(settings), sort_keys=True, default=str)
    if key not in _WORKERS:
        _WORKERS[key] = Worker(settings)
    return _WORKERS[key]
