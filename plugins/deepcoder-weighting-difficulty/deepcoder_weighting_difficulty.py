"""Difficulty weighting: harder problems teach more.

    w = lambda[span_type] * factor[difficulty]      factor = easy 0.5, medium 1, hard 2

``difficulty`` is the per-token broadcast of the example's difficulty (0 easy, 1 medium,
2 hard); ``factors`` overrides by name.
"""

from deepcoder_core import hookimpl, span_lambdas, span_weights

LEVELS = ("easy", "medium", "hard")


class Difficulty:
    """Span lambdas scaled by the problem's difficulty."""

    name = "difficulty"

    def __init__(self, factors=None, lambdas=None):
        factors = {"easy": 0.5, "medium": 1.0, "hard": 2.0, **(factors or {})}
        unknown = set(factors) - set(LEVELS)
        if unknown:
            raise ValueError(
                f"weighting.options.factors: unknown level(s) {sorted(unknown)}; use {LEVELS}"
            )
        self.factors = [float(factors[level]) for level in LEVELS]
        self.lambdas = span_lambdas(lambdas, where="weighting.options.lambdas")

    def weights(self, batch, state):
        import torch

        if "difficulty" not in batch:
            raise ValueError(
                "difficulty weighting needs difficulty in the batch (0 easy, 1 medium, 2 hard)"
            )
        factor = torch.tensor(self.factors)[batch["difficulty"].long().clamp(0, 2)]
        return span_weights(batch["span_type"], self.lambdas) * factor


@hookimpl
def register_weightings(register):
    register("difficulty", Difficulty)
