import deepcoder_loss_tvd
import torch

from deepcoder_core.plugins import PluginManager


def build(**options):
    manager = PluginManager()
    manager.add(deepcoder_loss_tvd, name="deepcoder-loss-tvd")
    return manager.build("loss", "tvd", **options)


P = torch.tensor([[0.7, 0.2, 0.1], [0.25, 0.25, 0.5]], dtype=torch.float64)
Q = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]], dtype=torch.float64)


def test_tvd_matches_the_formula_and_is_bounded():
    assert torch.allclose(build()(Q.log(), P.log()), 0.5 * (P - Q).abs().sum(-1))
    disjoint = torch.tensor([[1.0, 1e-30]], dtype=torch.float64).log()
    assert torch.allclose(build()(disjoint, disjoint.flip(-1)), torch.ones(1, dtype=torch.float64))
