"""Cross-entropy on the teacher's tokens: sequence-level distillation for black-box
teachers that return only text (Kim & Rush, 2016, "Sequence-Level Knowledge Distillation"):

    CE = -sum_v p(v) log q(v) = -log q(y)      p: one-hot on the teacher's token y

The engine gives the teacher's labels as a one-hot distribution, so the formula is the
general cross-entropy.
"""

from deepcoder_core import hookimpl


class CE:
    """Negative log-likelihood of the teacher's tokens under the student."""

    name = "ce"
    signals = ("labels",)

    def __call__(self, student_logp, teacher_logp):
        return -(teacher_logp.exp() * student_logp).sum(-1)


@hookimpl
def register_losses(register):
    register("ce", CE)
