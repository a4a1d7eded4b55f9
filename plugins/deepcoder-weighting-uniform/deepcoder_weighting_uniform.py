"""Uniform weighting: every token the teacher wrote counts once.

    w = lambda[span_type]      lambda = 1 for reasoning, action, answer; 0 for prompt, observation

``lambdas`` overrides per span type, e.g. ``{observation: 1.0}`` to also learn tool outputs.
"""

from deepcoder_core import hookimpl, span_lambdas, span_weights


class Uniform:
    """Weight 1 on every teacher-written token (reasoning, action, answer)."""

    name = "uniform"

    def __init__(self, lambdas: dict | None = None):
        self.lambdas = span_lambdas(lambdas, where="weighting.options.lambdas")

    def weights(self, batch, state):
        return span_weights(batch["span_type"], self.lambdas)


@hookimpl
def register_weightings(register):
    register("uniform", Uniform)
