import deepcoder_loss_ce
import torch

from deepcoder_core.plugins import PluginManager


def build(**options):
    manager = PluginManager()
    manager.add(deepcoder_loss_ce, name="deepcoder-loss-ce")
    return manager.build("loss", "ce", **options)


P = torch.tensor([[0.7, 0.2, 0.1], [0.25, 0.25, 0.5]], dtype=torch.float64)
Q = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]], dtype=torch.float64)


def test_ce_is_the_negative_log_likelihood_of_the_teacher_token():
    one_hot = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    got = build()(Q.log(), one_hot.clamp_min(1e-30).log())
    assert torch.allclose(got, -Q.log()[[0, 1], [0, 2]])
    assert build().signals == ("labels",)
