"""Per-token temperature adapted to the teacher's entropy, in the spirit of dynamic
temperature distillation (Wei & Bai, 2024, "Dynamic Temperature Knowledge Distillation"):

    h = H(p) / log K (normalized entropy),  T = t_min + (t_max - t_min) (1 - h)
    D = T^2 * D_base(softmax(log p / T) || softmax(log q / T))

A confident teacher (low entropy) is softened more, exposing the ranking of its
alternatives; an unsure one is left nearly as is. T carries no gradient.
"""

from deepcoder_core import hookimpl


class Adaptive:
    """Base divergence (default kl) at a per-token temperature from the teacher's entropy."""

    name = "adaptive"
    signals = ("distribution",)

    def __init__(self, t_min: float = 1.0, t_max: float = 4.0, base: str = "kl", **base_options):
        from deepcoder_core import build

        if not 0 < t_min <= t_max:
            raise ValueError(f"adaptive: need 0 < t_min <= t_max, got {t_min}, {t_max}")
        self.t_min, self.t_max = float(t_min), float(t_max)
        self.base = build("loss", base, **base_options)

    def __call__(self, student_logp, teacher_logp):
        import math

        entropy = -(teacher_logp.exp() * teacher_logp).sum(-1) / math.log(teacher_logp.shape[-1])
        t = (self.t_min + (self.t_max - self.t_min) * (1.0 - entropy.clamp(0, 1))).detach()
        student, teacher = (
            (x / t.unsqueeze(-1)).log_softmax(-1) for x in (student_logp, teacher_logp)
        )
        return t**2 * self.base(student, teacher)


@hookimpl
def register_losses(register):
    register("adaptive", Adaptive)
