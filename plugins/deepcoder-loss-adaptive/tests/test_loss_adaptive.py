import deepcoder_loss_adaptive
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
    manager.add(deepcoder_loss_adaptive, name="deepcoder-loss-adaptive")
    manager.add(BaseLoss(), name="kl-for-test")
    plugins.reset_plugin_manager(manager)
    return manager.build("loss", "adaptive", **options)


P = torch.tensor([[0.7, 0.2, 0.1], [0.25, 0.25, 0.5]], dtype=torch.float64)
Q = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]], dtype=torch.float64)


def test_adaptive_softens_confident_teachers_more():
    uniform = torch.full((1, 3), 1 / 3, dtype=torch.float64)
    loss = build(t_min=1.0, t_max=3.0)
    assert torch.allclose(
        loss(Q[:1].log(), uniform.log()), (uniform * (uniform / Q[:1]).log()).sum(-1)
    )
    peaked = torch.tensor([[1.0, 1e-12, 1e-12]], dtype=torch.float64)
    peaked = peaked / peaked.sum()
    t = 3.0 - 2.0 * (-(peaked * peaked.log()).sum() / torch.log(torch.tensor(3.0)))
    p_t = (peaked.log() / t).softmax(-1)
    q_t = (Q[:1].log() / t).softmax(-1)
    expected = t**2 * (p_t * (p_t / q_t).log()).sum(-1)
    assert torch.allclose(loss(Q[:1].log(), peaked.log()), expected)
