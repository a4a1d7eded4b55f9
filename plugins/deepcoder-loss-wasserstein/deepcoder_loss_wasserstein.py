"""Universal Logit Distillation loss (Boizard et al., 2024, "Towards Cross-Tokenizer
Distillation: the Universal Logit Distillation Loss for LLMs"), eq. 6:

    ULD(p, q) = sum_i |p_sorted(i) - q_sorted(i)|

the 1-D Wasserstein distance between the probability vectors sorted in decreasing order,
the shorter padded with zeros. It never pairs token ids, so teacher and student
vocabularies may differ (``vocab_agnostic``).
"""

from deepcoder_core import hookimpl


class Wasserstein:
    """Sorted-probability Wasserstein distance (ULD); works across tokenizers."""

    name = "wasserstein"
    signals = ("distribution",)
    vocab_agnostic = True

    def __call__(self, student_logp, teacher_logp):
        import torch.nn.functional as F

        p = teacher_logp.exp().sort(dim=-1, descending=True).values
        q = student_logp.exp().sort(dim=-1, descending=True).values
        width = max(p.shape[-1], q.shape[-1])
        p, q = F.pad(p, (0, width - p.shape[-1])), F.pad(q, (0, width - q.shape[-1]))
        return (p - q).abs().sum(-1)


@hookimpl
def register_losses(register):
    register("wasserstein", Wasserstein)
