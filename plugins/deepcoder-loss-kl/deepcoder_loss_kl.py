"""Forward KL divergence, the classic distillation loss (Hinton et al., 2015).

    KL(p || q) = sum_v p(v) (log p(v) - log q(v))      p: teacher, q: student

Mode-covering: the student spreads mass over everything the teacher finds plausible.
"""

from deepcoder_core import hookimpl, kl_


class KL:
    """Forward KL(teacher || student)."""

    name = "kl"
    signals = ("distribution",)

    def __call__(self, student_logp, teacher_logp):
        return (teacher_logp.exp() * (teacher_logp - student_logp)).sum(-1)

    def value_and_grad(self, student_logp, teacher_logp, scratch):
        return kl_(student_logp, teacher_logp, scratch)


@hookimpl
def register_losses(register):
    register("kl", KL)
