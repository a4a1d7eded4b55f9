"""Skew KL divergence of DistiLLM (Ko et al., 2024, "DistiLLM: Towards Streamlined
Distillation for Large Language Models"), eqs. 4-5, p: teacher, q: student:

    SKL(alpha)  = KL(p || alpha p + (1 - alpha) q)
    SRKL(alpha) = KL(q || alpha q + (1 - alpha) p)      (reverse=True)

Mixing a little of the target into the other side keeps the gradient bounded when q -> 0.
"""

import math

from deepcoder_core import hookimpl


class SkewKL:
    """alpha-skew KL (or, with reverse=True, alpha-skew reverse KL)."""

    name = "skew_kl"
    signals = ("distribution",)

    def __init__(self, alpha: float = 0.1, reverse: bool = False):
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"skew_kl: alpha must be in [0, 1), got {alpha}")
        self.alpha, self.reverse = float(alpha), bool(reverse)

    def __call__(self, student_logp, teacher_logp):
        import torch

        p, q = (student_logp, teacher_logp) if self.reverse else (teacher_logp, student_logp)
        if self.alpha == 0.0:
            return (p.exp() * (p - q)).sum(-1)
        mix = torch.logaddexp(p + math.log(self.alpha), q + math.log1p(-self.alpha))
        return (p.exp() * (p - mix)).sum(-1)


@hookimpl
def register_losses(register):
    register("skew_kl", SkewKL)
