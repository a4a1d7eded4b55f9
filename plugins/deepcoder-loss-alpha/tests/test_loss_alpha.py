import deepcoder_loss_alpha
import torch

from deepcoder_core.plugins import PluginManager


def build(**options):
    manager = PluginManager()
    manager.add(deepcoder_loss_alpha, name="deepcoder-loss-alpha")
    return manager.build("loss", "alpha", **options)


P = torch.tensor([[0.7, 0.2, 0.1], [0.25, 0.25, 0.5]], dtype=torch.float64)
Q = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]], dtype=torch.float64)


def test_alpha_matches_the_formula_and_its_limits():
    a = 0.3
    expected = (1 - (P**a * Q ** (1 - a)).sum(-1)) / (a * (1 - a))
    assert torch.allclose(build(alpha=a)(Q.log(), P.log()), expected)
    near_one = build(alpha=1 - 1e-6)(Q.log(), P.log())
    assert torch.allclose(near_one, build(alpha=1.0)(Q.log(), P.log()), atol=1e-5)
    assert torch.allclose(build(alpha=1.0)(Q.log(), P.log()), (P * (P / Q).log()).sum(-1))
