"""Amari alpha-divergence (Amari, 1985; in the form of Cichocki & Amari, 2010, eq. 4):

    D_alpha(p || q) = (1 - sum_v p(v)^alpha q(v)^(1 - alpha)) / (alpha (1 - alpha))

p: teacher, q: student. alpha -> 1 gives KL(p || q), alpha -> 0 gives KL(q || p); the ends
are those limits. alpha = 0.5 is four times the squared Hellinger distance.
"""

from deepcoder_core import hookimpl


class Alpha:
    """Amari alpha-divergence between teacher and student."""

    name = "alpha"
    signals = ("distribution",)

    def __init__(self, alpha: float = 0.5):
        self.alpha = float(alpha)

    def __call__(self, student_logp, teacher_logp):
        a, p, q = self.alpha, teacher_logp, student_logp
        if a in (0.0, 1.0):
            first, second = (p, q) if a == 1.0 else (q, p)
            return (first.exp() * (first - second)).sum(-1)
        return (1.0 - (a * p + (1.0 - a) * q).exp().sum(-1)) / (a * (1.0 - a))


@hookimpl
def register_losses(register):
    register("alpha", Alpha)
