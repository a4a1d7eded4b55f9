"""Total variation distance (used for distillation by Wen et al., 2023, "f-Divergence
Minimization for Sequence-Level Knowledge Distillation"):

    TVD(p, q) = 1/2 sum_v |p(v) - q(v)|      p: teacher, q: student
"""

from deepcoder_core import hookimpl


class TVD:
    """Total variation distance between teacher and student."""

    name = "tvd"
    signals = ("distribution",)

    def __call__(self, student_logp, teacher_logp):
        return 0.5 * (teacher_logp.exp() - student_logp.exp()).abs().sum(-1)


@hookimpl
def register_losses(register):
    register("tvd", TVD)
