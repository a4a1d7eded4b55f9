"""Generalized Jensen-Shannon divergence of GKD (Agarwal et al., 2024, "On-Policy
Distillation of Language Models: Learning from Self-Generated Mistakes"), eq. 3:

    m = beta p + (1 - beta) q,   JSD(beta) = beta KL(p || m) + (1 - beta) KL(q || m)

p: teacher, q: student. JSD(beta) / beta -> KL(p || q) as beta -> 0 and
JSD(beta) / (1 - beta) -> KL(q || p) as beta -> 1, so the ends are defined as those limits:
beta = 0 is forward KL (teacher || student), beta = 1 is reverse KL (student || teacher),
as in TRL's ``generalized_jsd_loss``. beta = 0.5 is the symmetric JSD.
"""

import math

from deepcoder_core import hookimpl, jsd_, kl_, reverse_kl_


class JSD:
    """Generalized JSD(beta): 0 = forward KL, 0.5 = JSD, 1 = reverse KL."""

    name = "jsd"
    signals = ("distribution",)

    def __init__(self, beta: float = 0.5):
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"jsd: beta must be in [0, 1], got {beta}")
        self.beta = float(beta)
        self.scratch_buffers = 2 if 0.0 < beta < 1.0 else 1

    def __call__(self, student_logp, teacher_logp):
        import torch

        b, p, q = self.beta, teacher_logp, student_logp
        if b in (0.0, 1.0):
            first, second = (p, q) if b == 0.0 else (q, p)
            return (first.exp() * (first - second)).sum(-1)
        m = torch.logaddexp(p + math.log(b), q + math.log1p(-b))
        return b * (p.exp() * (p - m)).sum(-1) + (1 - b) * (q.exp() * (q - m)).sum(-1)

    def value_and_grad(self, student_logp, teacher_logp, *scratch):
        if self.beta == 0.0:
            return kl_(student_logp, teacher_logp, *scratch)
        if self.beta == 1.0:
            return reverse_kl_(student_logp, teacher_logp, *scratch)
        return jsd_(student_logp, teacher_logp, *scratch, beta=self.beta)


@hookimpl
def register_losses(register):
    register("jsd", JSD)
