"""The `regex` span detector: typed spans of agent text from YAML pattern sets.

Rules, in order (``patterns.yaml`` documents each key):

1. **Blocks** (``<think>...</think>``, ``<tool_call>...</tool_call>``, ...) are found first
   and never cut again; an unclosed block runs to the end.
2. **Fences**: closed ``` code fences outside blocks protect their lines from markers,
   unless a strong marker sits inside (then the opening fence was not really one).
3. **Markers** at line starts (``Thought:``, ``Action:``, ``Observation:``, ``Final
   Answer:``) open a span that runs to the next marker or block; a marker with ``after``
   counts only when the current span has one of those types.
4. **Analysis phrases** ("Let me", "I need to") open a reasoning span from an unmarked
   line, under the same ``after`` rule.
5. **Gaps** are filled by rule: text before the first marker takes ``leading``, unmarked
   text after a block takes ``after_block[type]`` (``before_action`` when an ``Action:``
   follows it, and analysis phrases apply in it), whitespace joins the span before it.

Each span's confidence is its rule's. Load with ``build("span_detector", "regex",
patterns="my.yaml")`` (default: the ``patterns.yaml`` shipped in this package).
"""

from __future__ import annotations

import bisect
import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from deepcoder_core import Span, SpanType, hookimpl, normalize_spans

_FENCE = re.compile(r"^[ \t]*```[^\n]*$", re.MULTILINE)


class PatternError(ValueError):
    """A pattern file that cannot be used; the message names the file and key."""


def _type(value: Any, where: str) -> SpanType:
    try:
        return SpanType[str(value).upper()]
    except KeyError:
        names = ", ".join(t.name.lower() for t in SpanType)
        raise PatternError(f"{where}: unknown span type {value!r} (one of {names})") from None


def _compile(pattern: str, where: str, flags: int = 0) -> re.Pattern[str]:
    try:
        return re.compile(pattern, flags)
    except re.error as exc:
        raise PatternError(f"{where}: invalid regular expression {pattern!r}: {exc}") from None


class RegexSpanDetector:
    """Cut agent text into reasoning/action/observation/answer spans with regular expressions."""

    def __init__(self, patterns: str | Path | None = None):
        if patterns is None:
            source = "deepcoder_regex_spans/patterns.yaml"
            text = resources.files(__package__).joinpath("patterns.yaml").read_text("utf-8")
        else:
            source = str(patterns)
            try:
                text = Path(patterns).read_text(encoding="utf-8")
            except OSError as exc:
                raise PatternError(f"{source}: cannot read pattern file: {exc.strerror}") from None
        try:
            config = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise PatternError(f"{source}: invalid YAML: {exc}") from None
        self.source = source
        self._load(config, source)

    def _load(self, config: dict[str, Any], source: str) -> None:
        leading = config.get("leading") or {"type": "other", "confidence": 0.5}
        self.leading = (_type(leading["type"], f"{source}: leading"), float(leading["confidence"]))
        self.blocks = []
        for i, block in enumerate(config.get("blocks") or []):
            where = f"{source}: blocks[{i}]"
            self.blocks.append(
                (
                    _compile(block["start"], f"{where}.start"),
                    _compile(block["end"], f"{where}.end"),
                    _type(block["type"], where),
                    float(block.get("confidence", 0.99)),
                )
            )
        self.after_block = {
            _type(name, f"{source}: after_block"): (
                _type(rule["type"], f"{source}: after_block.{name}"),
                float(rule.get("confidence", 0.5)),
            )
            for name, rule in (config.get("after_block") or {}).items()
        }
        rule = config.get("before_action") or {"type": "reasoning", "confidence": 0.7}
        self.before_action = (
            _type(rule["type"], f"{source}: before_action"),
            float(rule.get("confidence", 0.7)),
        )
        prefix = config.get("marker_prefix", r"^[ \t]*")
        self.markers = []
        alternatives = []
        for i, marker in enumerate(config.get("markers") or []):
            where = f"{source}: markers[{i}]"
            _compile(marker["pattern"], where)
            after = marker.get("after")
            self.markers.append(
                (
                    _type(marker["type"], where),
                    float(marker.get("confidence", 0.9)),
                    frozenset(_type(a, f"{where}.after") for a in after) if after else None,
                )
            )
            alternatives.append(f"(?P<m{i}>{marker['pattern']})")
        # markers that end a fence: unconditional ones of the agent's own span types
        self._strong = [after is None and kind != SpanType.OTHER for kind, _, after in self.markers]
        self.marker_re = _compile(
            f"{prefix}(?:{'|'.join(alternatives)})" if alternatives else r"(?!x)x",
            f"{source}: markers",
            re.MULTILINE,
        )
        phrases = config.get("phrases") or {}
        self.phrase_conf = float(phrases.get("confidence", 0.7))
        self.phrase_after = frozenset(
            _type(a, f"{source}: phrases.after") for a in phrases.get("after") or ["other"]
        )
        patterns = phrases.get("patterns") or []
        self.phrase_re = (
            _compile(rf"^[ \t]*(?:{'|'.join(patterns)})", f"{source}: phrases", re.MULTILINE)
            if patterns
            else None
        )
        self.fences = bool(config.get("fences", True))

    # ------------------------------------------------------------------ detection
    def _find_blocks(self, text: str) -> list[tuple[int, int, SpanType, float]]:
        found = []
        pos = 0
        while self.blocks:
            best = None
            for start_re, end_re, kind, conf in self.blocks:
                match = start_re.search(text, pos)
                if match and (best is None or match.start() < best[0].start()):
                    best = (match, end_re, kind, conf)
            if best is None:
                break
            match, end_re, kind, conf = best
            close = end_re.search(text, match.end())
            end = close.end() if close else len(text)
            found.append((match.start(), end, kind, conf if close else conf * 0.8))
            pos = max(end, match.start() + 1)
        return found

    def detect(self, text: str) -> list[Span]:
        blocks = self._find_blocks(text)
        block_starts = [b[0] for b in blocks]

        def in_block(pos: int) -> bool:
            i = bisect.bisect_right(block_starts, pos) - 1
            return i >= 0 and blocks[i][0] <= pos < blocks[i][1]

        markers = [
            (m.start(), str(m.lastgroup))  # every alternative is a named group
            for m in self.marker_re.finditer(text)
            if not in_block(m.start())
        ]
        fences: list[tuple[int, int]] = []
        if self.fences and "```" in text:
            strong = [pos for pos, group in markers if self._strong[int(group[1:])]]
            lines = [m for m in _FENCE.finditer(text) if not in_block(m.start())]
            i = 0
            while i + 1 < len(lines):
                start, end = lines[i].start(), lines[i + 1].end()
                k = bisect.bisect_left(strong, start)
                if k < len(strong) and strong[k] < end:
                    i += 1  # a marker inside: this fence line opens nothing
                    continue
                fences.append((start, end))
                i += 2
        fence_starts = [f[0] for f in fences]

        def in_fence(pos: int) -> bool:
            i = bisect.bisect_right(fence_starts, pos) - 1
            return i >= 0 and fences[i][0] <= pos < fences[i][1]

        events: list[tuple[int, int, Any]] = [(b[0], 0, b) for b in blocks]
        events += [(pos, 1, group) for pos, group in markers if not in_fence(pos)]
        if self.phrase_re is not None:
            events += [
                (m.start(), 2, None)
                for m in self.phrase_re.finditer(text)
                if not in_block(m.start()) and not in_fence(m.start())
            ]
        events.sort(key=lambda e: (e[0], e[1]))

        spans: list[Span] = []
        kind, conf = self.leading
        start = 0
        after_block = False  # the current span is unmarked text after a block
        for pos, what, payload in events:
            if pos < start:
                continue  # inside a block already emitted
            if what == 0:
                b_start, b_end, b_kind, b_conf = payload
                if b_start > start:
                    spans.append(Span(start, b_start, kind, conf))
                spans.append(Span(b_start, b_end, b_kind, b_conf))
                kind, conf = self.after_block.get(b_kind, (kind, conf))
                start, after_block = b_end, True
                continue
            if what == 1:
                m_kind, m_conf, after = self.markers[int(payload[1:])]
                if after is not None and kind not in after:
                    continue
                if after_block and m_kind == SpanType.ACTION:
                    kind, conf = self.before_action  # ReAct: what precedes an action is its thought
            else:
                if kind not in self.phrase_after and not after_block:
                    continue
                m_kind, m_conf = SpanType.REASONING, self.phrase_conf
            if pos > start:
                spans.append(Span(start, pos, kind, conf))
            kind, conf, start, after_block = m_kind, m_conf, pos, False
        if start < len(text):
            spans.append(Span(start, len(text), kind, conf))
        return list(normalize_spans(text, spans))


@hookimpl
def register_span_detectors(register):
    register(
        "regex",
        RegexSpanDetector,
        description="ReAct markers, <think> blocks and tool-call tags from YAML pattern sets",
    )
