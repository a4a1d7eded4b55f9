import deepcoder_weighting_span_lambda
import torch

from deepcoder_core.plugins import PluginManager
from deepcoder_core.protocols import TrainingState


def build(name="reasoning_heavy", **options):
    manager = PluginManager()
    manager.add(deepcoder_weighting_span_lambda, name="deepcoder-weighting-span-lambda")
    return manager.build("weighting", name, **options)


SPANS = torch.tensor([0, 1, 1, 2, 3, 4])


def test_presets_weight_their_span_twice():
    reasoning = build("reasoning_heavy").weights({"span_type": SPANS}, TrainingState())
    action = build("action_heavy").weights({"span_type": SPANS}, TrainingState())
    assert reasoning.tolist() == [0.0, 2.0, 2.0, 1.0, 0.0, 1.0]
    assert action.tolist() == [0.0, 1.0, 1.0, 2.0, 0.0, 1.0]


def test_lambdas_override_the_preset():
    w = build("action_heavy", lambdas={"action": 3, 4: 0.5}).weights({"span_type": SPANS}, None)
    assert w.tolist() == [0.0, 1.0, 1.0, 3.0, 0.0, 0.5]
