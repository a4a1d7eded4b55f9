"""Curriculum: span lambdas that move over training, and SAD's easy-to-hard example order.

    w = lambda_start[s] + (lambda_end[s] - lambda_start[s]) * f(progress)
    f = progress (linear), (1 - cos(pi progress)) / 2 (cosine), or 1[progress >= 0.5] (step)

The default starts on reasoning alone and brings actions and answers in by the end.
``order(examples)`` sorts examples by complexity (Structured Agent Distillation, Liu et
al., 2025): complexity = a * reasoning tokens + b * action tokens + c * teacher entropy.
"""

import math

from deepcoder_core import hookimpl, span_lambdas, span_weights

SCHEDULES = {
    "linear": lambda x: x,
    "cosine": lambda x: (1 - math.cos(math.pi * x)) / 2,
    "step": lambda x: float(x >= 0.5),
}


class Curriculum:
    """Span lambdas interpolated over training progress; ``order`` sorts easy to hard."""

    name = "curriculum"

    def __init__(self, start=None, end=None, schedule="linear", a=1.0, b=1.0, c=1.0):
        if schedule not in SCHEDULES:
            raise ValueError(f"curriculum: schedule must be one of {', '.join(SCHEDULES)}")
        start = {"reasoning": 1.0, "action": 0.25, "answer": 0.25} if start is None else start
        self.start = span_lambdas(start, where="weighting.options.start")
        self.end = span_lambdas(end, where="weighting.options.end")
        self.schedule, self.a, self.b, self.c = SCHEDULES[schedule], a, b, c

    def weights(self, batch, state):
        f = self.schedule(state.progress)
        lambdas = {s: v + (self.end[s] - v) * f for s, v in self.start.items()}
        return span_weights(batch["span_type"], lambdas)

    def complexity(self, example):
        spans = [int(t) for t in example["span_type"]]
        entropy = float(example.get("teacher_entropy") or 0.0)
        return self.a * spans.count(1) + self.b * spans.count(2) + self.c * entropy

    def order(self, examples):
        scores = [self.complexity(e) for e in examples]
        return sorted(range(len(scores)), key=scores.__getitem__)


@hookimpl
def register_weightings(register):
    register("curriculum", Curriculum)
