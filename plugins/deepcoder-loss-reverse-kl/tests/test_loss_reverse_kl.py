import deepcoder_loss_reverse_kl
import torch

from deepcoder_core.plugins import PluginManager


def build(**options):
    manager = PluginManager()
    manager.add(deepcoder_loss_reverse_kl, name="deepcoder-loss-reverse-kl")
    return manager.build("loss", "reverse_kl", **options)


P = torch.tensor([[0.7, 0.2, 0.1], [0.25, 0.25, 0.5]], dtype=torch.float64)
Q = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]], dtype=torch.float64)


def test_reverse_kl_matches_the_formula():
    expected = (Q * (Q / P).log()).sum(-1)
    assert torch.allclose(build()(Q.log(), P.log()), expected)


def test_fast_path_equals_autograd():
    loss = build()
    student = torch.randn(4, 7, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(4, 7, dtype=torch.float64).log_softmax(-1)
    values = loss(student.log_softmax(-1), teacher)
    (grad,) = torch.autograd.grad(values.sum(), student)
    buffers = [
        torch.empty(4, 7, dtype=torch.float64) for _ in range(getattr(loss, "scratch_buffers", 1))
    ]
    fast, fast_grad = loss.value_and_grad(
        student.detach().log_softmax(-1), teacher.clone(), *buffers
    )
    assert torch.allclose(fast, values) and torch.allclose(fast_grad, grad)
