"""Weighting strategies through the registry, and together with the loss engine."""

import pytest
import torch

from deepcoder_core.distill.engine import distill_loss
from deepcoder_core.distill.weights import span_lambdas
from deepcoder_core.plugins import available, build
from deepcoder_core.protocols import TrainingState, Weighting

NAMES = [
    "uniform",
    "reasoning_heavy",
    "action_heavy",
    "adaptive",
    "curriculum",
    "confidence",
    "difficulty",
]
SPANS = torch.tensor([0, 1, 2, 3, 4, 1, 2, 0])
BATCH = {
    "span_type": SPANS,
    "span_confidence": torch.full((8,), 0.9),
    "difficulty": torch.tensor([1, 1, 1, 1, 2, 2, 0, 0]),
}


def test_every_strategy_is_registered_and_follows_the_protocol():
    assert set(NAMES) <= set(available("weighting"))
    for name in NAMES:
        assert isinstance(build("weighting", name), Weighting)


@pytest.mark.parametrize("name", NAMES)
def test_no_loss_on_prompt_or_observation_tokens_by_default(name):
    state = TrainingState(step=3, total_steps=10)
    weights = build("weighting", name).weights(BATCH, state)
    assert weights.shape == (8,)
    assert not weights[(SPANS == 0) | (SPANS == 3)].any()
    assert (weights[(SPANS == 1) | (SPANS == 2) | (SPANS == 4)] > 0).all()


def test_span_lambdas_accept_names_and_numbers():
    lambdas = span_lambdas({"observation": 0.5, 1: 3.0, "4": 2.0})
    assert lambdas == {0: 0.0, 1: 3.0, 2: 1.0, 3: 0.5, 4: 2.0}
    with pytest.raises(ValueError, match="must be a number >= 0"):
        span_lambdas({"action": -1})


def test_weights_drive_the_engine_and_adaptive_learns_from_its_metrics():
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(8, 30, generator=g), torch.randn(8, 30, generator=g) * 3
    kl = build("loss", "kl")
    heavy = build("weighting", "reasoning_heavy").weights(BATCH, TrainingState())
    out = distill_loss(
        kl, span_type=SPANS, student_logits=student, teacher_logits=teacher, weights=heavy
    )
    values = kl(student.log_softmax(-1), teacher.log_softmax(-1))
    torch.testing.assert_close(out.loss, (heavy * values).sum() / heavy.sum())

    adaptive = build("weighting", "adaptive", momentum=0.0)
    adaptive.observe(out.metrics, TrainingState(step=1))
    weights = adaptive.weights(BATCH, TrainingState(step=1))
    spans = out.metrics["spans"]
    # after balancing, lambda_s * mean divergence_s is the same for every span type
    balanced = {
        s: float(weights[SPANS == n][0]) * spans[s]["divergence"]
        for n, s in [(1, "reasoning"), (2, "action"), (4, "answer")]
    }
    assert max(balanced.values()) == pytest.approx(min(balanced.values()), rel=1e-5)


def test_curriculum_orders_examples_for_the_trainer():
    curriculum = build("weighting", "curriculum", a=1.0, b=2.0, c=0.0)
    examples = [{"span_type": [1, 1, 1, 2]}, {"span_type": [1]}, {"span_type": [2, 2]}]
    assert curriculum.order(examples) == [1, 2, 0]


@pytest.mark.parametrize("name", available("weighting"))
def test_every_strategy_state_round_trips_through_json(name):
    # A checkpoint holds the state as JSON (no pickle): what comes back must weigh the same.
    import json

    from deepcoder_core.distill.train import component_state, restore_component

    state = TrainingState(step=3, total_steps=10)
    trained = build("weighting", name)
    if hasattr(trained, "observe"):
        metrics = {"spans": {"reasoning": {"divergence": 2.0}, "action": {"divergence": 0.5}}}
        trained.observe(metrics, state)
    saved = json.loads(json.dumps(component_state(trained)))
    fresh = build("weighting", name)
    restore_component(fresh, saved)
    assert component_state(fresh) == saved
    torch.testing.assert_close(fresh.weights(BATCH, state), trained.weights(BATCH, state))
