"""Span-lambda weighting of Structured Agent Distillation (Liu et al., 2025, "Structured
Agent Distillation for Large Language Model"): one lambda per span type,

    L = lambda_r L_reasoning + lambda_a L_action + lambda_ans L_answer

``reasoning_heavy`` starts from lambda_r = 2, ``action_heavy`` from lambda_a = 2 (others 1,
prompt and observation 0); ``lambdas`` overrides any of them.
"""

from functools import partial

from deepcoder_core import hookimpl, span_lambdas, span_weights

PRESETS = {
    "reasoning_heavy": {"reasoning": 2.0, "action": 1.0, "answer": 1.0},
    "action_heavy": {"reasoning": 1.0, "action": 2.0, "answer": 1.0},
}


class SpanLambda:
    """Fixed per-span-type weights (a preset, adjusted by ``lambdas``)."""

    def __init__(self, preset: str, lambdas: dict | None = None):
        self.name = preset
        base = span_lambdas(PRESETS[preset])
        self.lambdas = span_lambdas(lambdas, base, where="weighting.options.lambdas")

    def weights(self, batch, state):
        return span_weights(batch["span_type"], self.lambdas)


@hookimpl
def register_weightings(register):
    for preset, lambdas in PRESETS.items():
        register(preset, partial(SpanLambda, preset), description=f"span lambdas {lambdas}")
