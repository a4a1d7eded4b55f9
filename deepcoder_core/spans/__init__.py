"""Agent data -> normalized segments -> the student's chat text with a span type per character.

Processing (``deepcoder process``) reads trajectories in several formats, cuts each into
:class:`Segment` s (one chat message each, or a part of one), lets a span detector label
character ranges, renders the messages with the student tokenizer's chat template exactly as
the student will be prompted, finds every segment's text inside the rendered string, and
maps character labels to tokens with the fast tokenizer's offset mapping. One module a step:

- :mod:`.segments`: ``Segment``, ``Parsed`` and the span-list rules (``normalize_spans``,
  ``fill_gaps``, ``detect_spans``);
- :mod:`.formats`: format detection and ``parse_record``; the parsers live in
  :mod:`.trajectory` (ours, ``deepcoder``) and :mod:`.chat_formats` (``openai``,
  ``sharegpt``, ``fireact``, ``text``);
- :mod:`.render`: segments -> chat messages -> the rendered text;
- :mod:`.align`: segment spans -> per-character labels in the rendered text -> per token;
- :mod:`.measure`: flat text and token agreement, to score detectors.

Everything before the first assistant message (the prompt) is type 0. A record that cannot be
read is a :class:`~deepcoder_core.errors.RecordError` naming the field.
"""

from ..errors import RecordError
from .align import TAG_TYPES, Located, locate, token_spans
from .formats import FORMATS, detect_format, parse_record
from .measure import char_labels, compare_tokens, detector_accuracy, flatten
from .render import build_messages, prompt_end, render, render_many, template_supports_tools
from .segments import Parsed, Segment, detect_spans, fill_gaps, normalize_spans
from .trajectory import step_parts

__all__ = [
    "FORMATS",
    "TAG_TYPES",
    "Located",
    "Parsed",
    "RecordError",
    "Segment",
    "build_messages",
    "char_labels",
    "compare_tokens",
    "detect_format",
    "detect_spans",
    "detector_accuracy",
    "fill_gaps",
    "flatten",
    "locate",
    "normalize_spans",
    "parse_record",
    "prompt_end",
    "render",
    "render_many",
    "step_parts",
    "template_supports_tools",
    "token_spans",
]
