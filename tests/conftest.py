import pytest

from deepcoder_core import plugins


@pytest.fixture(autouse=True)
def _fresh_plugin_manager():
    """Each test sees plugins loaded afresh; a test that installs its own manager cannot leak it."""
    plugins.reset_plugin_manager()
    yield
    plugins.reset_plugin_manager()
