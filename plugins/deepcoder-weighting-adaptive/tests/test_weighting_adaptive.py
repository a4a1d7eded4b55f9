import deepcoder_weighting_adaptive
import pytest
import torch

from deepcoder_core.plugins import PluginManager
from deepcoder_core.protocols import TrainingState


def build(name="adaptive", **options):
    manager = PluginManager()
    manager.add(deepcoder_weighting_adaptive, name="deepcoder-weighting-adaptive")
    return manager.build("weighting", name, **options)


SPANS = torch.tensor([0, 1, 1, 2, 3, 4])


def test_adaptive_gives_the_lagging_span_more_weight():
    weighting = build(momentum=0.0)
    assert weighting.weights({"span_type": SPANS}, TrainingState()).tolist() == [0, 1, 1, 1, 0, 1]
    spans = {
        "reasoning": {"divergence": 1.0},
        "action": {"divergence": 4.0},
        "answer": {"divergence": 1.0},
        "observation": {"divergence": 9.0},
    }
    weighting.observe({"spans": spans}, TrainingState())
    w = weighting.weights({"span_type": SPANS}, TrainingState())
    assert w.tolist() == pytest.approx([0, 2.0, 2.0, 0.5, 0, 2.0])
    # balanced: every span's weighted divergence is now the same
    assert 2.0 * 1.0 == pytest.approx(0.5 * 4.0)


def test_adaptive_reads_the_trainers_running_losses():
    state = TrainingState(span_divergence_ema={1: 2.0, 2: 2.0, 4: 8.0})
    w = build().weights({"span_type": SPANS}, state)
    assert w.tolist() == pytest.approx([0, 2.0, 2.0, 2.0, 0, 0.5])
