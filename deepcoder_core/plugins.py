"""Plugin loading and component registries.

Every component (built-in or third party) comes from a distribution that declares an entry
point in the ``deepcoder`` group. Each entry point loads inside its own ``try``: a plugin
that fails is recorded with its error and skipped, so one broken install never breaks the
CLI. ``DEEPCODER_LOAD_PLUGINS`` (comma list of distribution names, empty = none) and
``DEEPCODER_DISABLE_PLUGINS`` choose what loads.
"""

from __future__ import annotations

import difflib
import os
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from . import hookspecs
from .errors import DeepcoderError
from .protocols import KINDS

ENTRY_POINT_GROUP = "deepcoder"

# Distributions that live in this repository's plugins/ folder; shown by `deepcoder plugins --all`.
BUILTIN_PLUGINS = frozenset(
    {
        "deepcoder-plugin-example",
        "deepcoder-loss-kl",
        "deepcoder-loss-reverse-kl",
        "deepcoder-loss-symmetric-kl",
        "deepcoder-loss-jsd",
        "deepcoder-loss-alpha",
        "deepcoder-loss-skew-kl",
        "deepcoder-loss-tvd",
        "deepcoder-loss-wasserstein",
        "deepcoder-loss-focal",
        "deepcoder-loss-adaptive",
        "deepcoder-loss-ce",
        "deepcoder-weighting-uniform",
        "deepcoder-weighting-span-lambda",
        "deepcoder-weighting-adaptive",
        "deepcoder-weighting-curriculum",
        "deepcoder-weighting-confidence",
        "deepcoder-weighting-difficulty",
        "deepcoder-regex-spans",
        "deepcoder-structured-spans",
        "deepcoder-groq",
        "deepcoder-hf",
        "deepcoder-ctranslate2",
        "deepcoder-openai",
        "deepcoder-replay",
        "deepcoder-python-executor",
        "deepcoder-retriever",
    }
)

HOOK_OF_KIND = {
    "teacher": "register_teachers",
    "tool": "register_tools",
    "span_detector": "register_span_detectors",
    "loss": "register_losses",
    "weighting": "register_weightings",
}


class PluginError(DeepcoderError):
    """A plugin or component problem the user can act on (unknown name, duplicate, bad options)."""


@dataclass
class PluginInfo:
    """One distribution in the ``deepcoder`` entry-point group (loaded or not)."""

    name: str  # distribution name
    version: str
    entry_point: str
    builtin: bool
    error: str | None = None
    traceback: str | None = None  # of ``error``, for `deepcoder plugins --json`
    module: Any = None
    hooks: list[str] = field(default_factory=list)


@dataclass
class Entry:
    """A registered component: where it came from and how to build it."""

    kind: str
    name: str
    factory: Callable[..., Any]
    plugin: str
    version: str
    description: str

    def build(self, **options: Any) -> Any:
        """Call the factory; bad options become a PluginError naming the plugin."""
        try:
            return self.factory(**options)
        except TypeError as exc:
            raise PluginError(
                f"{self.kind} '{self.name}' (plugin {self.plugin}) rejected its options "
                f"{sorted(options)}: {exc}"
            ) from exc


def _wanted(dist_name: str) -> bool:
    load = os.environ.get("DEEPCODER_LOAD_PLUGINS")
    if load is not None:
        names = {n.strip() for n in load.split(",") if n.strip()}
        if dist_name not in names:
            return False
    disabled = {
        n.strip() for n in os.environ.get("DEEPCODER_DISABLE_PLUGINS", "").split(",") if n.strip()
    }
    return dist_name not in disabled


class PluginManager:
    """A pluggy manager plus the bookkeeping the CLI shows: versions, hooks, load errors."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        self._registries: dict[str, dict[str, Entry]] = {}

    # ------------------------------------------------------------------ loading
    def load_entry_points(self, entry_points: Iterable[metadata.EntryPoint] | None = None) -> None:
        if entry_points is None:
            entry_points = metadata.entry_points(group=ENTRY_POINT_GROUP)
        for ep in entry_points:
            dist = ep.dist
            dist_name = dist.name if dist is not None else ep.name
            if not _wanted(dist_name):
                continue
            info = PluginInfo(
                name=dist_name,
                version=dist.version if dist is not None else "unknown",
                entry_point=f"{ep.name} = {ep.value}",
                builtin=dist_name in BUILTIN_PLUGINS,
            )
            self.plugins[dist_name] = info
            try:
                module = ep.load()
                self.add(module, name=dist_name, info=info)
            except Exception as exc:  # any failure in third-party code: record, skip, go on
                info.error = f"{type(exc).__name__}: {exc}"
                info.traceback = traceback.format_exc()

    def add(self, plugin: Any, name: str, info: PluginInfo | None = None) -> None:
        """Register a plugin object (module or instance); misspelled hooks are rejected."""
        if info is None:
            info = PluginInfo(name=name, version="local", entry_point="", builtin=False)
            self.plugins[name] = info
        self.pm.register(plugin, name=name)
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            self.pm.unregister(plugin)
            raise PluginError(f"plugin {name}: {exc}") from exc
        info.module = plugin
        info.hooks = sorted(impl for impl in dir(plugin) if impl.startswith("register_"))
        self._registries.clear()

    def remove(self, name: str) -> None:
        plugin = self.pm.get_plugin(name)
        if plugin is not None:
            self.pm.unregister(plugin)
        self.plugins.pop(name, None)
        self._registries.clear()

    # ------------------------------------------------------------------ registries
    def registry(self, kind: str) -> dict[str, Entry]:
        """All components of ``kind`` by name. Two plugins giving one name is a PluginError."""
        if kind not in HOOK_OF_KIND:
            raise PluginError(f"unknown component kind {kind!r}; kinds: {', '.join(KINDS)}")
        if kind in self._registries:
            return self._registries[kind]
        entries: dict[str, Entry] = {}
        hook = getattr(self.pm.hook, HOOK_OF_KIND[kind])
        for impl in hook.get_hookimpls():
            plugin_name = impl.plugin_name
            info = self.plugins.get(plugin_name)

            given: dict[str, Entry] = {}

            def register(
                name: str,
                factory: Callable[..., Any],
                _p: str = plugin_name,
                _i: PluginInfo | None = info,
                _given: dict[str, Entry] = given,
                *,
                description: str | None = None,
                **unknown: Any,
            ) -> None:
                if unknown:  # capabilities are attributes of the component (protocols.py)
                    raise PluginError(
                        f"plugin {_p}: register({name!r}, ...) got {', '.join(sorted(unknown))}; "
                        "only description= is read: declare capabilities as attributes of the "
                        "component (see deepcoder_core/protocols.py)"
                    )
                if name in _given:
                    raise PluginError(f"plugin {_p} registers {kind} '{name}' twice")
                if name in entries:
                    first = entries[name].plugin
                    raise PluginError(
                        f"{kind} '{name}' is registered by two plugins: "
                        f"{first} and {_p}; uninstall or disable one "
                        f"(DEEPCODER_DISABLE_PLUGINS={_p})"
                    )
                _given[name] = Entry(
                    kind=kind,
                    name=name,
                    factory=factory,
                    plugin=_p,
                    version=_i.version if _i else "local",
                    description=description or _first_line(factory.__doc__),
                )

            try:
                impl.function(register=register)
            except PluginError as exc:
                if "registered by two plugins" in str(exc):
                    raise
                self._hook_failed(plugin_name, info, exc)
                continue
            except Exception as exc:  # third-party code: record it, skip its components
                self._hook_failed(plugin_name, info, exc)
                continue
            entries.update(given)
        self._registries[kind] = dict(sorted(entries.items()))
        return self._registries[kind]

    def _hook_failed(self, plugin_name: str, info: PluginInfo | None, exc: Exception) -> None:
        if info is None:
            info = self.plugins.setdefault(
                plugin_name,
                PluginInfo(name=plugin_name, version="local", entry_point="", builtin=False),
            )
        info.error = f"{type(exc).__name__}: {exc}"
        info.traceback = traceback.format_exc()

    def lookup(self, kind: str, name: str) -> Entry:
        """The entry for ``name``, or a one-line error with a suggestion and the choices."""
        registry = self.registry(kind)
        if name in registry:
            return registry[name]
        raise PluginError(unknown_name_message(kind, name, list(registry)))

    def build(self, kind: str, name: str, **options: Any) -> Any:
        return self.lookup(kind, name).build(**options)


def unknown_name_message(kind: str, name: str, available: list[str]) -> str:
    label = kind.replace("_", " ")
    close = difflib.get_close_matches(name, available, n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    if not available:
        return (
            f"unknown {label} '{name}': no {label} plugin is installed; the standard ones come "
            "with `pip install 'deepcoder[standard]'` (in this repository: `make install`)"
        )
    return f"unknown {label} '{name}'{hint} available: {', '.join(available)}"


def _first_line(doc: str | None) -> str:
    return doc.strip().splitlines()[0] if doc and doc.strip() else ""


_manager: PluginManager | None = None


def get_plugin_manager() -> PluginManager:
    """The process-wide manager, loading installed entry points on first use."""
    global _manager
    if _manager is None:
        _manager = PluginManager()
        _manager.load_entry_points()
    return _manager


def reset_plugin_manager(manager: PluginManager | None = None) -> None:
    """Forget the loaded plugins (tests install their own manager with this)."""
    global _manager
    _manager = manager


def lookup(kind: str, name: str) -> Entry:
    return get_plugin_manager().lookup(kind, name)


def build(kind: str, name: str, **options: Any) -> Any:
    """Build the component ``name`` of ``kind`` with its options (the config section's ``options``)."""
    return get_plugin_manager().build(kind, name, **options)


def available(kind: str) -> list[str]:
    return list(get_plugin_manager().registry(kind))
