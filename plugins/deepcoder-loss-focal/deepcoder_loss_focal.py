"""Focal divergence: a base divergence scaled per token by how badly the student misses the
teacher's choice, after the focal loss of Lin et al. (2017, "Focal Loss for Dense Object
Detection"):

    D_focal = (1 - q(argmax_v p(v)))^gamma * D_base(p || q)      p: teacher, q: student

Tokens the student already predicts well fade out; hard tokens keep their full weight.
The factor is differentiable, as in the focal loss.
"""

from deepcoder_core import hookimpl


class Focal:
    """(1 - q(teacher's top token))^gamma times a base divergence (default kl)."""

    name = "focal"
    signals = ("distribution",)

    def __init__(self, gamma: float = 2.0, base: str = "kl", **base_options):
        from deepcoder_core import build

        self.gamma, self.base = float(gamma), build("loss", base, **base_options)

    def __call__(self, student_logp, teacher_logp):
        top = teacher_logp.argmax(dim=-1, keepdim=True)
        miss = 1.0 - student_logp.gather(-1, top).squeeze(-1).exp()
        return miss.clamp_min(0.0) ** self.gamma * self.base(student_logp, teacher_logp)


@hookimpl
def register_losses(register):
    register("focal", Focal)
