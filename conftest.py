import pytest

from deepcoder_core import plugins


@pytest.fixture(autouse=True)
def _fresh_plugin_manager():
    """Each test (core and plugins alike) sees plugins loaded afresh; no test can leak its own manager."""
    plugins.reset_plugin_manager()
    yield
    plugins.reset_plugin_manager()
