"""The errors of distillation, and how a distillation command hands them to the CLI.

Each is a :class:`~deepcoder_core.errors.DeepcoderError` (the CLI prints ``Error: <message>``
and exits with its ``exit_code``) and a ``ValueError`` (callers that catch bad values keep
working).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import DeepcoderError, StageError


class DistillError(DeepcoderError, ValueError):
    """Inputs the loss engine cannot use: wrong signal, shapes, or non-finite values."""


class CacheError(DeepcoderError, ValueError):
    """A teacher-logit cache that cannot be used (stale, incomplete, another teacher)."""


class TrainError(DeepcoderError, ValueError):
    """A training setup problem the user can fix (signal, vocabulary, paths, checkpoint state)."""


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Inside a command: a plugin, file or value error becomes a :class:`StageError`.

    Typed errors (``DeepcoderError``) pass unchanged, with their own exit code.
    """
    from ..plugins import PluginError

    try:
        yield
    except DeepcoderError:
        raise
    except (PluginError, OSError, ValueError) as exc:
        raise StageError(str(exc)) from exc
