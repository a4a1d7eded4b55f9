"""``deepcoder compare``: does span-aware distillation make a better agent than the others?

One job a module:

- :mod:`.variants`: the variants file (``configs/compare.yaml``), read and checked;
- :mod:`.heldout`: per-span divergence and top-1 agreement of a student with the teacher on
  the teacher's own held-out trajectories;
- :mod:`.report`: ``report.json``, ``report.md`` and the side-by-side charts, with paired
  differences called only when their interval excludes 0;
- :mod:`.command`: the shared and per-variant stages, :func:`compare` and the command.
"""

from .command import CompareError, compare, compare_command
from .heldout import HELDOUT_DIVERGENCE, score_heldout
from .report import VariantResult, build_compare_report, verdict, write_compare_report
from .variants import VARIANT_KEYS, Variant, VariantError, VariantSet, load_variants

__all__ = [
    "HELDOUT_DIVERGENCE",
    "VARIANT_KEYS",
    "CompareError",
    "Variant",
    "VariantError",
    "VariantResult",
    "VariantSet",
    "build_compare_report",
    "compare",
    "compare_command",
    "load_variants",
    "score_heldout",
    "verdict",
    "write_compare_report",
]
