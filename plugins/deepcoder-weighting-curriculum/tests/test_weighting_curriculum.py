import deepcoder_weighting_curriculum
import pytest
import torch

from deepcoder_core.plugins import PluginManager
from deepcoder_core.protocols import TrainingState


def build(name="curriculum", **options):
    manager = PluginManager()
    manager.add(deepcoder_weighting_curriculum, name="deepcoder-weighting-curriculum")
    return manager.build("weighting", name, **options)


SPANS = torch.tensor([0, 1, 1, 2, 3, 4])


def test_curriculum_moves_from_start_to_end_lambdas():
    weighting = build(start={"action": 0.0}, end={"action": 1.0})
    for step, action in [(0, 0.0), (5, 0.5), (10, 1.0), (20, 1.0)]:
        state = TrainingState(step=step, total_steps=10)
        assert weighting.weights({"span_type": SPANS}, state)[3] == pytest.approx(action)
    cosine = build(start={"action": 0.0}, end={"action": 1.0}, schedule="cosine")
    assert cosine.weights({"span_type": SPANS}, TrainingState(2, 10))[3] < 0.2


def test_order_is_easy_to_hard():
    examples = [
        {"span_type": [0, 1, 1, 1, 2, 2], "teacher_entropy": 0.5},  # 3 + 2 + 0.5
        {"span_type": [0, 1, 2], "teacher_entropy": 0.1},  # 1 + 1 + 0.1
        {"span_type": torch.tensor([1, 1, 2, 3, 3, 3])},  # 2 + 1
    ]
    assert build().order(examples) == [1, 2, 0]
    assert build(a=0.0, b=0.0, c=1.0).order(examples) == [2, 1, 0]
