import deepcoder_weighting_difficulty
import pytest
import torch

from deepcoder_core.plugins import PluginManager
from deepcoder_core.protocols import TrainingState


def build(name="difficulty", **options):
    manager = PluginManager()
    manager.add(deepcoder_weighting_difficulty, name="deepcoder-weighting-difficulty")
    return manager.build("weighting", name, **options)


SPANS = torch.tensor([0, 1, 1, 2, 3, 4])


def test_difficulty_scales_by_level():
    batch = {"span_type": SPANS, "difficulty": torch.tensor([2, 0, 1, 2, 2, 2])}
    assert build().weights(batch, TrainingState()).tolist() == [0.0, 0.5, 1.0, 2.0, 0.0, 2.0]
    w = build(factors={"hard": 3.0}).weights(batch, TrainingState())
    assert w.tolist() == [0.0, 0.5, 1.0, 3.0, 0.0, 3.0]
    with pytest.raises(ValueError, match="unknown level"):
        build(factors={"expert": 4.0})
