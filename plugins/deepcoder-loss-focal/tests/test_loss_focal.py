import deepcoder_loss_focal
import torch

from deepcoder_core import hookimpl, plugins
from deepcoder_core.plugins import PluginManager


class KL:
    signals = ("distribution",)

    def __call__(self, q, p):
        return (p.exp() * (p - q)).sum(-1)


class BaseLoss:
    """Stands in for the kl plugin, which this distribution only looks up by name."""

    @staticmethod
    @hookimpl
    def register_losses(register):
        register("kl", KL)


def build(**options):
    manager = PluginManager()
    manager.add(deepcoder_loss_focal, name="deepcoder-loss-focal")
    manager.add(BaseLoss(), name="kl-for-test")
    plugins.reset_plugin_manager(manager)
    return manager.build("loss", "focal", **options)


P = torch.tensor([[0.7, 0.2, 0.1], [0.25, 0.25, 0.5]], dtype=torch.float64)
Q = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]], dtype=torch.float64)


def test_focal_scales_the_base_divergence():
    kl = (P * (P / Q).log()).sum(-1)
    miss = 1 - Q.gather(-1, P.argmax(-1, keepdim=True)).squeeze(-1)
    assert torch.allclose(build(gamma=2.0)(Q.log(), P.log()), miss**2 * kl)
    assert torch.allclose(build(gamma=0.0)(Q.log(), P.log()), kl)
