"""Distillation: the loss engine (``engine``), its in-place kernels (``divergences``), span
weights (``weights``), the trainer (``train``) and teacher-logit sources (``teacher_logits``).

Import from the submodules; this package imports nothing heavy.
"""
