"""deepcoder: Structured Agent Distillation toolkit.

Plugins import only this package: ``from deepcoder_core import hookimpl``.
"""

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("deepcoder")
"""Marker for plugin hook implementations: ``@hookimpl def register_losses(register): ...``."""

__all__ = ["hookimpl", "__version__"]
