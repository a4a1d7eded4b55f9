"""Distillation, one job per module:

- ``train``: the recipe and ``deepcoder train`` (config in, trained student out);
- ``trainer``: the ``transformers.Trainer`` subclass whose loss is the engine, its callbacks;
- ``data``: the processed dataset, padded batches and the teacher signal they carry;
- ``signals``: which teacher signal a loss can use and which one a run uses;
- ``checkpoint``: our state in each checkpoint (JSON), finding the one to resume;
- ``metrics``: the per-span metric names, defined once, and how they merge;
- ``engine``, ``divergences``, ``weights``: the loss engine, its in-place kernels, span weights;
- ``teacher_logits``: the white-box teacher, the top-k cache and ``deepcoder teacher-logits``;
- ``student``: building the student, LoRA, ``deepcoder merge-lora``; ``plots``: PNG curves;
- ``errors``: ``DistillError``, ``CacheError``, ``TrainError``.

Import from the submodules; this package imports nothing heavy (``engine`` and ``trainer``
bring torch, the others load it on first use).
"""
