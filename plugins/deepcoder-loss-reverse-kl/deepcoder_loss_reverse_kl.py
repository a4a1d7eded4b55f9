"""Reverse KL divergence (MiniLLM, Gu et al., 2024).

    KL(q || p) = sum_v q(v) (log q(v) - log p(v))      p: teacher, q: student

Mode-seeking: the student puts its mass where the teacher is confident, which suits small
students that cannot cover every teacher mode.
"""

from deepcoder_core import hookimpl, reverse_kl_


class ReverseKL:
    """Reverse KL(student || teacher)."""

    name = "reverse_kl"
    signals = ("distribution",)

    def __call__(self, student_logp, teacher_logp):
        return (student_logp.exp() * (student_logp - teacher_logp)).sum(-1)

    def value_and_grad(self, student_logp, teacher_logp, scratch):
        return reverse_kl_(student_logp, teacher_logp, scratch)


@hookimpl
def register_losses(register):
    register("reverse_kl", ReverseKL)
