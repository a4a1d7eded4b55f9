import deepcoder_weighting_confidence
import pytest
import torch

from deepcoder_core.plugins import PluginManager
from deepcoder_core.protocols import TrainingState


def build(name="confidence", **options):
    manager = PluginManager()
    manager.add(deepcoder_weighting_confidence, name="deepcoder-weighting-confidence")
    return manager.build("weighting", name, **options)


SPANS = torch.tensor([0, 1, 1, 2, 3, 4])


def test_confidence_scales_the_span_lambdas():
    batch = {"span_type": SPANS, "span_confidence": torch.tensor([1.0, 0.5, 1.0, 0.2, 1.0, 0.9])}
    w = build(power=2.0, min_confidence=0.3).weights(batch, TrainingState())
    assert w.tolist() == pytest.approx([0.0, 0.25, 1.0, 0.0, 0.0, 0.81])


def test_confidence_needs_the_column():
    with pytest.raises(ValueError, match="span_confidence"):
        build().weights({"span_type": SPANS}, TrainingState())
