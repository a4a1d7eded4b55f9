"""Symmetric KL, Jeffreys' divergence (Jeffreys, 1946): both KL directions added.

J(p, q) = KL(p || q) + KL(q || p) = sum_v (p(v) - q(v)) (log p(v) - log q(v))
"""

from deepcoder_core import hookimpl


class SymmetricKL:
    """KL(teacher || student) + KL(student || teacher)."""

    name = "symmetric_kl"
    signals = ("distribution",)

    def __call__(self, student_logp, teacher_logp):
        return ((teacher_logp.exp() - student_logp.exp()) * (teacher_logp - student_logp)).sum(-1)


@hookimpl
def register_losses(register):
    register("symmetric_kl", SymmetricKL)
