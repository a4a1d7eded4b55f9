"""The YAML loader: plain data only, and a refusal for input that would explode or is not text.

:func:`load_yaml` is ``yaml.safe_load`` that measures the composed document first and
refuses alias bombs, recursive aliases and very deep nesting; :func:`read_yaml` reads a
config file, refusing one over :data:`MAX_CONFIG_BYTES` or not valid UTF-8, and names the
file and line in every error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .checks import ConfigError

MAX_CONFIG_BYTES = 1 << 20  # a config is a few kilobytes; the cap also stops at /dev/zero
MAX_YAML_VALUES = 100_000  # counted with every alias written out
MAX_YAML_DEPTH = 64


class _Refused(Exception):
    """A YAML document that would explode once built; the message says how."""


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _measure(root: yaml.Node) -> None:
    """Refuse a document that, with each alias written out, is too large, too deep or endless.

    Aliases share nodes, so a "billion laughs" composes (and builds) cheaply, but every later
    copy of the config (``asdict``, snapshots, fingerprints) writes the aliases out. Each
    distinct node is measured once, so this is linear in the file, whatever it expands to.
    """
    measured: dict[int, tuple[int, int]] = {}  # id(node) -> (values, depth), aliases expanded
    walking: set[int] = set()  # nodes on the current path: meeting one again is a cycle
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        if finished:
            walking.discard(id(node))
            below = [measured[id(child)] for child in _children(node)]
            values = 1 + sum(v for v, _ in below)
            depth = 1 + max((d for _, d in below), default=0)
            if values > MAX_YAML_VALUES:
                raise _Refused(
                    f"more than {MAX_YAML_VALUES:,} values with its anchors and aliases "
                    "expanded (an alias bomb?); a config needs far fewer"
                )
            if depth > MAX_YAML_DEPTH:
                raise _Refused(f"nested too deeply (more than {MAX_YAML_DEPTH} levels)")
            measured[id(node)] = (values, depth)
        elif id(node) in walking:
            raise _Refused("an alias refers to itself (a recursive structure), which no key takes")
        elif id(node) not in measured:
            walking.add(id(node))
            stack.append((node, True))
            stack.extend((child, False) for child in _children(node))


class _MeasuringLoader(yaml.SafeLoader):
    """``SafeLoader`` that measures the composed document before building Python objects."""

    def construct_document(self, node: yaml.Node) -> Any:
        _measure(node)
        return super().construct_document(node)


def load_yaml(text: str, source: str) -> Any:
    """``yaml.safe_load``, refusing alias bombs, recursive aliases and deep nesting.

    A refusal is a :class:`ConfigError` naming ``source``; bad syntax stays a ``yaml.YAMLError``.
    """
    try:
        # A SafeLoader subclass: plain data only, never arbitrary Python objects.
        return yaml.load(text, Loader=_MeasuringLoader)
    except _Refused as exc:
        raise ConfigError(f"{source}: refused: {exc}") from None
    except RecursionError:  # the composer recurses per level, before _measure sees the depth
        raise ConfigError(
            f"{source}: refused: nested too deeply (more than {MAX_YAML_DEPTH} levels)"
        ) from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror or exc}") from exc
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"{path}: larger than {MAX_CONFIG_BYTES >> 20} MiB; a config is a few kilobytes "
            "(is this the right file?)"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"{path}:{line}: invalid UTF-8 at byte {exc.start} (0x{raw[exc.start]:02x}, "
            f"{exc.reason}); save the file as UTF-8"
        ) from None
    try:
        data = load_yaml(text, str(path)) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{at}: invalid YAML: {getattr(exc, 'problem', exc)}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data
