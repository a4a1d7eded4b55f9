"""What a processing run works with: its :class:`Settings`, the student tokenizer, its errors."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..config import Config
from ..errors import DeepcoderError


class ProcessError(DeepcoderError):
    """A processing problem the user can act on (missing file, bad option, no tokenizer)."""


# Settings taken from the processing section as they are (the others are resolved first).
_AS_CONFIGURED = (
    "max_length overflow min_tokens min_reasoning_ratio min_action_ratio successful_only "
    "agreement_sample"
).split()


@dataclasses.dataclass
class Settings:
    """What a worker needs; plain data, so it also keys the per-process worker cache and the
    dataset fingerprint."""

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

    @classmethod
    def from_config(
        cls,
        config: Config,
        *,
        tokenizer: str | None = None,
        detector: str | None = None,
        fmt: str | None = None,
    ) -> Settings:
        """The ``processing`` section, with the command's flags over it."""
        cfg = config.processing
        return cls(
            tokenizer=resolve_tokenizer(config, tokenizer),
            detector=detector or cfg.detector,
            detector_options=dict(cfg.detector_options),
            fmt=fmt or cfg.format,
            **{name: getattr(cfg, name) for name in _AS_CONFIGURED},
        )


def resolve_tokenizer(config: Config, tokenizer: str | None = None) -> str:
    """The student's tokenizer: the argument, ``processing.tokenizer``, ``student.tokenizer``,
    ``student.path``, else the default teacher's (the student is derived from it)."""
    from .. import models

    name = tokenizer or config.processing.tokenizer or config.student.tokenizer
    name = name or config.student.path
    return models.resolve_tokenizer_path(name, config.paths.cache)


def other_detector(name: str) -> str:
    """The detector compared against for the agreement figure."""
    return "regex" if name == "structured" else "structured"


def fast_tokenizer(path: str) -> Any:
    """A fast tokenizer (offset mappings need one), shared by every reader in this process."""
    from ..models import load_tokenizer as load

    try:
        tokenizer = load(path, shared=True)
    except (OSError, ValueError) as exc:
        raise ProcessError(f"tokenizer {path}: cannot load: {exc}") from exc
    if not getattr(tokenizer, "is_fast", False):
        raise ProcessError(
            f"tokenizer {path} is not a fast tokenizer; character offsets need one "
            "(a folder with tokenizer.json)"
        )
    return tokenizer
