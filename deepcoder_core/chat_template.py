"""Rendering many chats with a tokenizer's chat template, as ``apply_chat_template`` does, faster.

``apply_chat_template(chats, tokenize=False)`` spends most of its time outside the template:
it copies and normalizes every message, and the sandboxed Jinja environment re-checks the
safety of each attribute the template reads (``message.content``, ``loop.last``,
``content.split``...) on every access. :class:`ChatRenderer` renders with the same compiled
template, in the same sandbox, with the same variables, but

- decides each (type, attribute) safety question once: in Jinja's immutable sandbox the
  answer depends on the object's type and the attribute name only, never on the value;
- reads the keys of plain ``dict`` messages, and the methods of ``str``, directly, and calls
  ``str`` methods directly: what the sandbox ends up doing for them anyway;
- passes our messages as they are (they are already plain dicts of strings).

Each call checks its first chat against ``apply_chat_template`` and the renderer falls back to
it for good if they ever disagree (a new transformers, an odd template).
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

# A minimal ChatML template for tokenizers that ship none (same scaffolding as Qwen / SmolLM2).
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def _fast_template(source: str) -> Any:
    """The template compiled in an overlay of transformers' sandbox with cached safety checks,
    or None when transformers' compiler or sandbox is not what we expect."""
    try:
        from transformers.utils.chat_template_utils import _compile_jinja_template
    except ImportError:  # pragma: no cover - depends on the transformers version
        return None
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = _compile_jinja_template(source).environment
    if type(env) is not ImmutableSandboxedEnvironment:  # the caching below is only sound there
        return None
    env = env.overlay()
    checked: dict[tuple[type, str], bool] = {}
    is_safe = env.is_safe_attribute
    plain_getattr = env.getattr
    dict_names = frozenset(dir({}))
    undefined = env.undefined

    def cached_is_safe(obj: Any, attr: str, value: Any) -> bool:
        key = (type(obj), attr)
        safe = checked.get(key)
        if safe is None:
            safe = checked[key] = is_safe(obj, attr, value)
        return safe

    def fast_getattr(obj: Any, attribute: str) -> Any:
        kind = type(obj)
        if kind is dict and attribute not in dict_names:
            try:
                return obj[attribute]
            except KeyError:
                return undefined(obj=obj, name=attribute)
        if kind is str and attribute not in ("format", "format_map"):
            # str methods: the sandbox's own path minus its format wrapper, which only
            # ever applies to str.format and str.format_map
            try:
                value = getattr(obj, attribute)
            except AttributeError:
                return plain_getattr(obj, attribute)
            if cached_is_safe(obj, attribute, value):
                return value
            return env.unsafe_undefined(obj, attribute)
        return plain_getattr(obj, attribute)

    plain_call = env.call
    builtin = type(len)

    def fast_call(__context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        # a str method: the sandbox would find it safe (no unsafe markers on builtins) and
        # the context would pass it nothing extra; call it straight away
        if type(__obj) is builtin and type(getattr(__obj, "__self__", None)) is str:
            kwargs.pop("_block_vars", None)
            kwargs.pop("_loop_vars", None)
            return __obj(*args, **kwargs)
        return plain_call(__context, __obj, *args, **kwargs)

    env.is_safe_attribute = cached_is_safe  # type: ignore[method-assign]  # the overlay is the point
    env.getattr = fast_getattr  # type: ignore[method-assign]
    env.call = fast_call  # type: ignore[method-assign]
    return env.from_string(source)


class ChatRenderer:
    """``render(chats)`` == ``tokenizer.apply_chat_template(chats, tokenize=False)`` for chats of
    plain ``{"role", "content"[, "tool_calls"]}`` dicts (no generation prompt)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.source = getattr(tokenizer, "chat_template", None) or CHATML_TEMPLATE
        self.override = None if getattr(tokenizer, "chat_template", None) else CHATML_TEMPLATE
        self.variables = dict(getattr(tokenizer, "special_tokens_map", {}) or {})
        self.template = _fast_template(self.source)

    def slow(self, chats: list[list[dict[str, Any]]]) -> list[str]:
        return self.tokenizer.apply_chat_template(
            chats, tokenize=False, chat_template=self.override
        )

    def render(self, chats: list[list[dict[str, Any]]]) -> list[str]:
        if not chats:
            return []
        if self.template is None:
            return self.slow(chats)
        out = [self._one(chat) for chat in chats]
        if self.slow(chats[:1])[0] != out[0]:
            log.warning("fast chat-template rendering disagrees; using apply_chat_template")
            self.template = None
            return self.slow(chats)
        return out

    def _one(self, chat: list[dict[str, Any]]) -> str:
        return self.template.render(
            messages=chat,
            tools=None,
            documents=None,
            add_generation_prompt=False,
            **self.variables,
        )
