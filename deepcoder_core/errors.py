"""The errors stages raise for bad input or a run that cannot go on.

A stage never prints and exits: it raises a ``DeepcoderError`` whose message says what was
wrong, where (file:line, record, key, plugin) and what to do. The CLI turns it into one
line, ``Error: <message>``, and the exit code the error carries; other callers catch it.
"""

from __future__ import annotations


class DeepcoderError(Exception):
    """A problem the user can fix; ``exit_code`` is what the CLI exits with (2: bad input)."""

    exit_code = 2


class RecordError(DeepcoderError, ValueError):
    """A record (trajectory, problem, example) that is malformed: names the field."""


class StageError(DeepcoderError):
    """A stage cannot run or go on (missing input, nothing left to do, a failed run)."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code
