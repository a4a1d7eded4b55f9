"""Adaptive weighting: balances span types from running averages of their divergences, so no
span type dominates (inverse-loss balancing, as in multi-task loss weighting, e.g. Dynamic
Weight Average, Liu et al., 2019, which also sets task weights from running losses):

    ema_s <- m ema_s + (1 - m) D_s            after each step (``observe``)
    w = lambda_s * mean_t(ema_t) / ema_s      clipped to [min_scale, max_scale] lambda_s

Before any step is observed the weights are the lambdas (``state.span_divergence_ema`` is
used when the trainer fills it instead).
"""

from deepcoder_core import SPAN_NAMES, hookimpl, span_lambdas, span_weights


class Adaptive:
    """Per-span weights inversely proportional to each span's running mean divergence."""

    name = "adaptive"

    def __init__(self, momentum=0.9, min_scale=0.1, max_scale=10.0, lambdas=None):
        self.momentum, self.min_scale, self.max_scale = momentum, min_scale, max_scale
        self.lambdas = span_lambdas(lambdas, where="weighting.options.lambdas")
        self.ema: dict[int, float] = {}

    def observe(self, metrics, state):
        by_name = {name: number for number, name in SPAN_NAMES.items()}
        for name, span in metrics.get("spans", {}).items():
            s, d = by_name[name], float(span["divergence"])
            self.ema[s] = (
                d if s not in self.ema else self.momentum * self.ema[s] + (1 - self.momentum) * d
            )

    def weights(self, batch, state):
        ema = {
            s: v for s, v in (self.ema or state.span_divergence_ema).items() if self.lambdas.get(s)
        }
        lambdas = dict(self.lambdas)
        if ema:
            mean = sum(ema.values()) / len(ema)
            for s, v in ema.items():
                scale = mean / v if v > 0 else self.max_scale
                lambdas[s] *= min(self.max_scale, max(self.min_scale, scale))
        return span_weights(batch["span_type"], lambdas)


@hookimpl
def register_weightings(register):
    register("adaptive", Adaptive)
