"""The declared plugin API: plugins import only ``deepcoder_core``, and every name it declares
resolves without pulling heavy libraries in before they are used."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import deepcoder_core

ROOT = Path(__file__).resolve().parent.parent


def plugin_modules() -> list[Path]:
    found = []
    for folder in sorted((ROOT / "plugins").iterdir()):
        for path in folder.rglob("*.py"):
            if "tests" not in path.relative_to(folder).parts and ".egg-info" not in str(path):
                found.append(path)
    return found


def test_every_plugin_module_imports_only_the_declared_api():
    offenders = []
    modules = plugin_modules()
    assert len(modules) >= 26
    for path in modules:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                if node.module.startswith("deepcoder_core."):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.module}")
                elif node.module == "deepcoder_core":
                    unknown = [a.name for a in node.names if a.name not in deepcoder_core.__all__]
                    offenders += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in unknown]
            elif isinstance(node, ast.Import):
                offenders += [
                    f"{path.relative_to(ROOT)}:{node.lineno} {a.name}"
                    for a in node.names
                    if a.name.startswith("deepcoder_core.")
                ]
    assert offenders == []


def test_every_declared_name_resolves():
    for name in deepcoder_core.__all__:
        assert getattr(deepcoder_core, name) is not None, name


def test_importing_the_api_stays_light():
    code = (
        "import sys, deepcoder_core\n"
        "from deepcoder_core import hookimpl, Completion, TeacherError, Observation, SpanType\n"
        "print(sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
