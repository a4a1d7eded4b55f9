"""deepcoder: Structured Agent Distillation toolkit.

This module is the plugin API: a plugin imports only ``deepcoder_core`` (``from deepcoder_core
import hookimpl, Completion, TeacherError``), never its submodules, and every name below
stays importable from here across releases (a rename keeps the old name as an alias for
at least one minor version). Names load on first use, so ``import deepcoder_core`` stays
as light as the CLI's start-up needs: torch comes in with ``kl_`` or ``span_weights``, not
before. What each hook and component must provide is in ``hookspecs.py`` and
``protocols.py``; ``docs/architecture.md`` walks through both.
"""

import importlib
from typing import Any

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("deepcoder")
"""Marker for plugin hook implementations: ``@hookimpl def register_losses(register): ...``."""

# name -> the module that defines it. Grouped by who needs them.
_API = {
    # every plugin: registration and its errors
    "PluginError": "deepcoder_core.plugins",
    "build": "deepcoder_core.plugins",  # a component of another plugin, by kind and name
    "PluginManager": "deepcoder_core.plugins",  # tests: a manager holding only their plugin
    "reset_plugin_manager": "deepcoder_core.plugins",
    "DeepcoderError": "deepcoder_core.errors",
    "RecordError": "deepcoder_core.errors",
    # component protocols and the records they exchange
    "Teacher": "deepcoder_core.protocols",
    "Tool": "deepcoder_core.protocols",
    "SpanDetector": "deepcoder_core.protocols",
    "Loss": "deepcoder_core.protocols",
    "Weighting": "deepcoder_core.protocols",
    "Completion": "deepcoder_core.protocols",
    "Usage": "deepcoder_core.protocols",
    "TopK": "deepcoder_core.protocols",
    "Observation": "deepcoder_core.protocols",
    "Span": "deepcoder_core.protocols",
    "SpanType": "deepcoder_core.protocols",
    "SPAN_NAMES": "deepcoder_core.protocols",
    "TrainingState": "deepcoder_core.protocols",
    "Trajectory": "deepcoder_core.records",
    "Step": "deepcoder_core.records",
    "Action": "deepcoder_core.records",
    "read_trajectories": "deepcoder_core.records",
    # teachers
    "TeacherError": "deepcoder_core.teachers",
    "TeacherStats": "deepcoder_core.teachers",
    "RateLimiter": "deepcoder_core.teachers",
    "retry_call": "deepcoder_core.teachers",
    "cut_at_stop": "deepcoder_core.teachers",
    "split_thinking": "deepcoder_core.teachers",
    "classify_http_error": "deepcoder_core.teachers",
    "estimate_tokens": "deepcoder_core.teachers",
    "REACT_STOP": "deepcoder_core.react_format",
    "read_jsonl": "deepcoder_core.io",
    "resolve_model_path": "deepcoder_core.models",
    "load_tokenizer": "deepcoder_core.models",
    "load_causal_lm": "deepcoder_core.models",
    "model_folder_hash": "deepcoder_core.distill.teacher_logits",  # local engines key conversions by it
    # tools
    "SandboxPool": "deepcoder_core.sandbox",
    "SandboxRequest": "deepcoder_core.sandbox",
    "SandboxError": "deepcoder_core.sandbox",
    "Limits": "deepcoder_core.sandbox",
    "get_pool": "deepcoder_core.sandbox",
    "PURE_MODULES": "deepcoder_core.sandbox",
    "register_source": "deepcoder_core.sandbox",
    "short_traceback": "deepcoder_core.sandbox",
    # span detectors
    "Segment": "deepcoder_core.spans",
    "fill_gaps": "deepcoder_core.spans",
    "normalize_spans": "deepcoder_core.spans",
    # losses and weightings (these import torch)
    "kl_": "deepcoder_core.distill.divergences",
    "reverse_kl_": "deepcoder_core.distill.divergences",
    "jsd_": "deepcoder_core.distill.divergences",
    "span_lambdas": "deepcoder_core.distill.weights",
    "span_weights": "deepcoder_core.distill.weights",
}
_RENAMED = {"REACT_STOP": "STOP"}  # API name -> name in its module

__all__ = ["__version__", "hookimpl", *_API]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'deepcoder_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), _RENAMED.get(name, name))
    globals()[name] = value  # loaded once
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
