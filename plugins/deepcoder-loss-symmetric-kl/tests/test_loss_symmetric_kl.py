import deepcoder_loss_symmetric_kl
import torch

from deepcoder_core.plugins import PluginManager


def build(**options):
    manager = PluginManager()
    manager.add(deepcoder_loss_symmetric_kl, name="deepcoder-loss-symmetric-kl")
    return manager.build("loss", "symmetric_kl", **options)


P = torch.tensor([[0.7, 0.2, 0.1], [0.25, 0.25, 0.5]], dtype=torch.float64)
Q = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]], dtype=torch.float64)


def test_symmetric_kl_is_both_directions_and_symmetric():
    expected = (P * (P / Q).log()).sum(-1) + (Q * (Q / P).log()).sum(-1)
    loss = build()
    assert torch.allclose(loss(Q.log(), P.log()), expected)
    assert torch.allclose(loss(P.log(), Q.log()), expected)
