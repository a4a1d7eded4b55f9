import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from deepcoder_core import hookimpl, plugins
from deepcoder_core.plugins import PluginError, PluginManager

from .helpers import make_distribution

THIRD_PARTY = """
from deepcoder_core import hookimpl

class Shout:
    '''Upper-cases its input.'''
    name = "shout"
    description = "upper-case"
    def __init__(self, suffix="!"):
        self.suffix = suffix
    def run(self, input, *, timeout=1.0, session=None):
        from deepcoder_core.protocols import Observation
        return Observation(input.upper() + self.suffix)

@hookimpl
def register_tools(register):
    register("shout", Shout)
"""

BROKEN = """
raise RuntimeError("this plugin is broken on purpose")
"""

MISSPELLED = """
from deepcoder_core import hookimpl

@hookimpl
def register_tool(register):
    register("x", object)
"""


def _entry_points(root: Path):
    return [
        ep
        for dist in metadata.distributions(path=[str(root)])
        for ep in dist.entry_points
        if ep.group == "deepcoder"
    ]


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A directory of throwaway installed distributions on sys.path."""
    root = tmp_path / "site"
    make_distribution(root, "deepcoder-shout", "deepcoder_shout", THIRD_PARTY, version="2.3")
    make_distribution(root, "deepcoder-broken", "deepcoder_broken", BROKEN)
    monkeypatch.syspath_prepend(str(root))
    return root


def test_installed_distribution_is_discovered_and_buildable(site):
    manager = PluginManager()
    manager.load_entry_points(_entry_points(site))
    info = manager.plugins["deepcoder-shout"]
    assert info.error is None and info.version == "2.3"
    assert info.hooks == ["register_tools"]
    entry = manager.lookup("tool", "shout")
    assert entry.plugin == "deepcoder-shout" and entry.version == "2.3"
    assert entry.description == "Upper-cases its input."
    assert manager.build("tool", "shout", suffix="?").run("hi", timeout=1).text == "HI?"


def test_broken_plugin_is_recorded_and_skipped(site):
    manager = PluginManager()
    manager.load_entry_points(_entry_points(site))
    assert (
        "RuntimeError: this plugin is broken on purpose"
        in manager.plugins["deepcoder-broken"].error
    )
    assert "shout" in manager.registry("tool")  # the others still load


def test_load_plugins_env_selects_and_empty_means_none(site, monkeypatch):
    monkeypatch.setenv("DEEPCODER_LOAD_PLUGINS", "deepcoder-shout")
    manager = PluginManager()
    manager.load_entry_points(_entry_points(site))
    assert list(manager.plugins) == ["deepcoder-shout"]

    monkeypatch.setenv("DEEPCODER_LOAD_PLUGINS", "")
    manager = PluginManager()
    manager.load_entry_points()
    assert manager.plugins == {}


def test_disable_plugins_env(site, monkeypatch):
    monkeypatch.setenv("DEEPCODER_DISABLE_PLUGINS", "deepcoder-broken")
    manager = PluginManager()
    manager.load_entry_points(_entry_points(site))
    assert "deepcoder-broken" not in manager.plugins


def test_duplicate_component_names_name_both_plugins():
    class A:
        @hookimpl
        def register_losses(self, register):
            register("kl", object)

    class B:
        @hookimpl
        def register_losses(self, register):
            register("kl", object)

    manager = PluginManager()
    manager.add(A(), name="plugin-a")
    manager.add(B(), name="plugin-b")
    with pytest.raises(
        PluginError, match="registered by two plugins: plugin-(a|b) and plugin-(b|a)"
    ):
        manager.registry("loss")


def test_one_plugin_registering_a_name_twice_is_named_once():
    class Twice:
        @hookimpl
        def register_losses(self, register):
            register("kl", object)
            register("kl", object)

    manager = PluginManager()
    manager.add(Twice(), name="twice")
    assert manager.registry("loss") == {}
    assert manager.plugins["twice"].error == "PluginError: plugin twice registers loss 'kl' twice"


def test_misspelled_hook_is_rejected(tmp_path):
    root = tmp_path / "site"
    make_distribution(root, "deepcoder-typo", "deepcoder_typo", MISSPELLED)
    sys.path.insert(0, str(root))
    try:
        manager = PluginManager()
        manager.load_entry_points(_entry_points(root))
    finally:
        sys.path.remove(str(root))
    assert "register_tool" in manager.plugins["deepcoder-typo"].error


def test_unknown_name_suggests_closest():
    class Losses:
        @hookimpl
        def register_losses(self, register):
            for name in ("focal", "kl", "jsd"):
                register(name, object)

    manager = PluginManager()
    manager.add(Losses(), name="losses")
    with pytest.raises(PluginError) as info:
        manager.lookup("loss", "fcoal")
    assert (
        str(info.value) == "unknown loss 'fcoal'; did you mean 'focal'? available: focal, jsd, kl"
    )


def test_bad_options_name_the_plugin():
    class Tools:
        @hookimpl
        def register_tools(self, register):
            register("t", lambda size=1: size)

    manager = PluginManager()
    manager.add(Tools(), name="tools-plugin")
    with pytest.raises(
        PluginError, match="tool 't' \\(plugin tools-plugin\\) rejected its options"
    ):
        manager.build("tool", "t", colour="red")


def test_a_hook_that_raises_is_its_plugins_error_and_the_others_still_load():
    class Broken:
        @hookimpl
        def register_losses(self, register):
            register("half", object)
            raise RuntimeError("a bug in the plugin")

    class Fine:
        @hookimpl
        def register_losses(self, register):
            register("kl", object)

    manager = PluginManager()
    manager.add(Broken(), name="broken-losses")
    manager.add(Fine(), name="fine-losses")
    assert list(manager.registry("loss")) == ["kl"]  # none of the broken plugin's entries
    info = manager.plugins["broken-losses"]
    assert info.error == "RuntimeError: a bug in the plugin" and "Traceback" in info.traceback


def test_registration_takes_a_description_and_nothing_else():
    class Meta:
        @hookimpl
        def register_teachers(self, register):
            register("t", object, remote=True)

    class Described:
        @hookimpl
        def register_teachers(self, register):
            register("d", object, description="a teacher")

    manager = PluginManager()
    manager.add(Meta(), name="meta-plugin")
    manager.add(Described(), name="described")
    assert list(manager.registry("teacher")) == ["d"]
    assert manager.lookup("teacher", "d").description == "a teacher"
    assert "only description= is read" in manager.plugins["meta-plugin"].error


def test_no_plugin_of_a_kind_says_how_to_install_the_standard_set():
    with pytest.raises(PluginError) as info:
        PluginManager().lookup("teacher", "hf")
    assert "no teacher plugin is installed" in str(info.value)
    assert "deepcoder[standard]" in str(info.value)


def _cli(*args, env_extra=None):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "deepcoder_core", *args], capture_output=True, text=True, env=env
    )


def test_cli_lists_third_party_and_broken_plugins(site):
    result = _cli("plugins", "--json", env_extra={"PYTHONPATH": str(site)})
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["deepcoder-shout"]["components"] == {"tool": ["shout"]}
    assert rows["deepcoder-shout"]["error"] is None
    assert "broken on purpose" in rows["deepcoder-broken"]["error"]
    assert not any(row["builtin"] for row in rows.values())  # built-ins need --all
    help_result = _cli("--help", env_extra={"PYTHONPATH": str(site)})
    assert help_result.returncode == 0 and "plugins" in help_result.stdout


def test_cli_all_lists_every_builtin_plugin_folder():
    result = _cli("plugins", "--all", "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    repo = Path(__file__).resolve().parents[1]
    folders = {p.name for p in (repo / "plugins").iterdir() if (p / "pyproject.toml").exists()}
    assert folders <= set(rows), f"not installed: {folders - set(rows)}"
    assert folders == set(plugins.BUILTIN_PLUGINS), "BUILTIN_PLUGINS must match plugins/"
    for name in folders:
        assert rows[name]["error"] is None, rows[name]["error"]
        assert rows[name]["components"], f"{name} registers nothing"


def test_cli_import_keeps_heavy_libraries_out():
    code = (
        "import sys, deepcoder_core.cli as c; c._add_plugin_commands(); "
        "from deepcoder_core.plugins import get_plugin_manager as g; m = g(); "
        "[m.registry(k) for k in ('teacher','tool','span_detector','loss','weighting')]; "
        "[c.cli.get_command(None, n) for n in c.COMMANDS]; "
        "heavy = [m for m in ('torch', 'transformers', 'datasets', 'groq', 'openai') if m in sys.modules]; "
        "print(heavy)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
