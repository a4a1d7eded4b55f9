import deepcoder_loss_wasserstein
import torch

from deepcoder_core.plugins import PluginManager


def build(**options):
    manager = PluginManager()
    manager.add(deepcoder_loss_wasserstein, name="deepcoder-loss-wasserstein")
    return manager.build("loss", "wasserstein", **options)


P = torch.tensor([[0.7, 0.2, 0.1], [0.25, 0.25, 0.5]], dtype=torch.float64)
Q = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]], dtype=torch.float64)


def test_wasserstein_ignores_token_order_and_vocabulary_size():
    loss = build()
    assert torch.allclose(loss(Q.log(), Q.flip(-1).log()), torch.zeros(2, dtype=torch.float64))
    sorted_p, sorted_q = P.sort(-1, descending=True).values, Q.sort(-1, descending=True).values
    assert torch.allclose(loss(Q.log(), P.log()), (sorted_p - sorted_q).abs().sum(-1))
    wider = torch.tensor([[0.5, 0.3, 0.1, 0.1]], dtype=torch.float64)
    got = loss(Q[:1].log(), wider.log())
    assert torch.allclose(got, torch.tensor([0.0 + 0.0 + 0.1 + 0.1], dtype=torch.float64))
