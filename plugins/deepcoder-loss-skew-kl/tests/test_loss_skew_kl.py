import deepcoder_loss_skew_kl
import torch

from deepcoder_core.plugins import PluginManager


def build(**options):
    manager = PluginManager()
    manager.add(deepcoder_loss_skew_kl, name="deepcoder-loss-skew-kl")
    return manager.build("loss", "skew_kl", **options)


P = torch.tensor([[0.7, 0.2, 0.1], [0.25, 0.25, 0.5]], dtype=torch.float64)
Q = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]], dtype=torch.float64)


def test_skew_kl_and_skew_reverse_kl_match_the_formulas():
    a = 0.1
    m = a * P + (1 - a) * Q
    assert torch.allclose(build(alpha=a)(Q.log(), P.log()), (P * (P / m).log()).sum(-1))
    m = a * Q + (1 - a) * P
    got = build(alpha=a, reverse=True)(Q.log(), P.log())
    assert torch.allclose(got, (Q * (Q / m).log()).sum(-1))
