import pytest

from deepcoder_core import plugins


@pytest.fixture(autouse=True)
def _fresh_plugin_manager():
    """Each test (core and plugins alike) sees plugins loaded afresh; no test can leak its own manager."""
    plugins.reset_plugin_manager()
    yield
    plugins.reset_plugin_manager()


@pytest.fixture
def one_thread():
    """Torch on one thread: tiny models run faster so, and far faster on a shared, busy CPU."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
