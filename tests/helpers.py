"""Test helpers: build throwaway plugin distributions that importlib.metadata really discovers."""

from __future__ import annotations

import textwrap
from pathlib import Path


def make_distribution(
    root: Path, dist: str, module: str, source: str, version: str = "1.0"
) -> Path:
    """Write ``module.py`` and a ``dist-info`` with a ``deepcoder`` entry point under ``root``.

    Put ``root`` on ``sys.path`` (or PYTHONPATH) and the plugin is an installed distribution.
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[deepcoder]\n{module} = {module}\n")
    return root
