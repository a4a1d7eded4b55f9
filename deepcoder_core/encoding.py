"""Encoding rendered chats to token ids and character offsets, each distinct prompt once.

Every trajectory of a dataset starts with the same system prompt, and the K samples of a
problem share its statement, so the rendered chats share long prefixes. A fast tokenizer
splits its input at added tokens (``<|im_start|>``...) before anything else, and encodes the
text between them independently; so when a chat is cut right before an added token,

    encode(prefix + rest) == encode(prefix) + encode(rest)   (rest's offsets shifted by len(prefix))

:class:`PromptEncoder` cuts each chat at the first special token after its prompt, encodes
each distinct prompt once (cached) and only the rest of each chat in the batch. The first cut
chat of every batch is also encoded whole and compared; on any difference (a tokenizer whose
special tokens strip whitespace, say) the cache is switched off for good.
"""

from __future__ import annotations

import itertools
import logging
import re
from typing import Any

log = logging.getLogger(__name__)


def arrays(encoding: Any, shift: int = 0) -> tuple[Any, Any]:
    """(ids int32 [n], offsets int64 [n, 2]) of a ``tokenizers.Encoding``."""
    import numpy as np

    ids = np.asarray(encoding.ids, dtype=np.int32)
    pairs = itertools.chain.from_iterable(encoding.offsets)
    offsets = np.fromiter(pairs, dtype=np.int64, count=2 * len(ids)).reshape(-1, 2)
    if shift:
        offsets += shift
    return ids, offsets


def _cut_pattern(tokenizer: Any) -> re.Pattern[str] | None:
    """Special tokens a chat can be cut before: matched on raw text, stripping nothing."""
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    names = [
        t.content
        for t in decoder.values()
        if getattr(t, "special", False)
        and not getattr(t, "lstrip", True)
        and not getattr(t, "normalized", True)
        and t.content
    ]
    if not names:
        return None
    return re.compile("|".join(re.escape(n) for n in sorted(names, key=len, reverse=True)))


class PromptEncoder:
    """``encode(texts, prompt_ends)`` -> [(ids, offsets)], equal to encoding each text whole."""

    def __init__(self, tokenizer: Any, *, max_cached: int = 4096) -> None:
        self.backend = tokenizer.backend_tokenizer
        self.pattern = _cut_pattern(tokenizer)
        self.cache: dict[str, tuple[Any, Any]] = {}
        self.max_cached = max_cached
        self.reused_tokens = 0  # prompt tokens taken from the cache instead of encoded again
        self.tokens = 0

    @property
    def enabled(self) -> bool:
        return self.pattern is not None

    def _whole(self, texts: list[str]) -> list[tuple[Any, Any]]:
        out = [arrays(e) for e in self.backend.encode_batch(texts, add_special_tokens=False)]
        self.tokens += sum(len(ids) for ids, _ in out)
        return out

    def cut(self, text: str, prompt_end: int) -> int:
        """Where ``text`` may be cut after its prompt (0: nowhere)."""
        if self.pattern is None or prompt_end <= 0:
            return 0
        found = self.pattern.search(text, prompt_end)
        return found.start() if found else 0

    def encode(self, texts: list[str], prompt_ends: list[int]) -> list[tuple[Any, Any]]:
        import numpy as np

        if not texts:
            return []
        cuts = [self.cut(t, e) for t, e in zip(texts, prompt_ends, strict=True)]
        if not any(cuts):
            return self._whole(texts)
        missing = sorted({t[:c] for t, c in zip(texts, cuts, strict=True) if c} - self.cache.keys())
        if len(self.cache) + len(missing) > self.max_cached:
            self.cache.clear()
            missing = sorted({t[:c] for t, c in zip(texts, cuts, strict=True) if c})
        reused = 0
        for prefix, enc in zip(
            missing, self.backend.encode_batch(missing, add_special_tokens=False), strict=True
        ):
            self.cache[prefix] = arrays(enc)
            reused -= len(self.cache[prefix][0])  # encoded now: not reused the first time
        rests = self.backend.encode_batch(
            [t[c:] for t, c in zip(texts, cuts, strict=True)], add_special_tokens=False
        )
        out = []
        for text, c, rest in zip(texts, cuts, rests, strict=True):
            ids, offsets = arrays(rest, shift=c)
            if c:
                head_ids, head_offsets = self.cache[text[:c]]
                ids = np.concatenate([head_ids, ids])
                offsets = np.concatenate([head_offsets, offsets])
                reused += len(head_ids)
            out.append((ids, offsets))
        first = next(i for i, c in enumerate(cuts) if c)
        whole_ids, whole_offsets = arrays(
            self.backend.encode(texts[first], add_special_tokens=False)
        )
        if not (
            np.array_equal(whole_ids, out[first][0])
            and np.array_equal(whole_offsets, out[first][1])
        ):
            log.warning("encoding prompts apart changes the tokens; encoding chats whole")
            self.pattern = None
            self.cache.clear()
            return self._whole(texts)
        self.tokens += sum(len(ids) for ids, _ in out)
        self.reused_tokens += reused
        return out
