import deepcoder_weighting_uniform
import pytest
import torch

from deepcoder_core.plugins import PluginManager
from deepcoder_core.protocols import TrainingState


def build(name="uniform", **options):
    manager = PluginManager()
    manager.add(deepcoder_weighting_uniform, name="deepcoder-weighting-uniform")
    return manager.build("weighting", name, **options)


SPANS = torch.tensor([0, 1, 1, 2, 3, 4])


def test_uniform_skips_prompt_and_observation_tokens():
    w = build().weights({"span_type": SPANS}, TrainingState())
    assert w.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0, 1.0]


def test_uniform_lambdas_can_include_observations():
    w = build(lambdas={"observation": 0.5}).weights({"span_type": SPANS}, TrainingState())
    assert w.tolist() == [0.0, 1.0, 1.0, 1.0, 0.5, 1.0]
    with pytest.raises(ValueError, match="unknown span type 'thoughts'"):
        build(lambdas={"thoughts": 1.0})
