"""Stage 2, ``deepcoder process``: trajectories -> a tokenized dataset with a span type per token.

For each record: parse it into segments (:mod:`deepcoder_core.spans`), filter it (success,
duplicates), detect spans, render it with the student's chat template, encode the batch with
the fast tokenizer, map character spans to tokens, fit it into ``max_length`` (truncate at a
step boundary, drop, or split into windows that each repeat the prompt), and filter again
(length, span ratios). Bad input lines and unusable records are counted with their line
numbers; the rest is written as a ``datasets`` folder plus ``summary.json`` and the config
snapshot. Columns follow the processed-dataset contract of `docs/architecture.md`.

One module a job:

- :mod:`.settings`: ``Settings`` from the config, the student tokenizer, ``ProcessError``;
- :mod:`.columns`: the dataset columns (names and types) and the rows workers fill;
- :mod:`.worker`: records -> rows (parse, detect, render, encode, label, filter);
- :mod:`.overflow`: fitting an example into ``max_length``;
- :mod:`.parallel`: the worker over all records, in this process or forked children;
- :mod:`.summary`: kept rows, drops, bad input and the figures of ``summary.json``;
- :mod:`.stage`: :func:`process`, the stage function; :mod:`.command`: ``deepcoder process``;
- :mod:`.view`: :func:`show_example` for ``deepcoder show example``.
"""

from .columns import COLUMNS, PRIVATE, Example, features
from .command import process_command
from .overflow import OVERFLOW
from .settings import ProcessError, Settings, fast_tokenizer, other_detector, resolve_tokenizer
from .stage import process
from .view import SPAN_STYLES, show_example
from .worker import Worker

__all__ = [
    "COLUMNS",
    "OVERFLOW",
    "PRIVATE",
    "SPAN_STYLES",
    "Example",
    "ProcessError",
    "Settings",
    "Worker",
    "features",
    "fast_tokenizer",
    "other_detector",
    "process",
    "process_command",
    "resolve_tokenizer",
    "show_example",
]
