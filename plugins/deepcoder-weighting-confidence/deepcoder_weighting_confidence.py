"""Confidence weighting: trust tokens as much as the span detector trusted their label.

    w = lambda[span_type] * confidence^power      (0 below ``min_confidence``)

Structural spans (from the agent's own steps) have confidence 1; heuristic ones less.
"""

from deepcoder_core import hookimpl, span_lambdas, span_weights


class Confidence:
    """Span lambdas scaled by the span detector's per-token confidence."""

    name = "confidence"

    def __init__(self, power=1.0, min_confidence=0.0, lambdas=None):
        self.power, self.min_confidence = float(power), float(min_confidence)
        self.lambdas = span_lambdas(lambdas, where="weighting.options.lambdas")

    def weights(self, batch, state):
        if "span_confidence" not in batch:
            raise ValueError(
                "confidence weighting needs span_confidence in the batch (process data with a span detector)"
            )
        confidence = batch["span_confidence"].float().clamp(0.0, 1.0)
        scale = confidence.pow(self.power) * (confidence >= self.min_confidence)
        return span_weights(batch["span_type"], self.lambdas) * scale


@hookimpl
def register_weightings(register):
    register("confidence", Confidence)
