"""Evaluation: run models as agents on problems, check their answers, report pass@k and more.

One job a module:

- :mod:`.metrics`: pure functions of trajectory records: :func:`pass_at_k`, the text
  measures, :func:`agreement` with a teacher's trajectory, :func:`group_metrics` and
  :func:`model_report` (the definitions are in its docstring);
- :mod:`.run`: :func:`evaluate`, running every model with the agent and its schedules,
  resuming from its JSONL, and writing the report (``REPORT_SCHEMA``);
- :mod:`.report`: ``report.md`` and the PNG charts of a report;
- :mod:`.command`: ``deepcoder eval``: model specs from flags, problem sets, the command.
"""

from .command import eval_command, load_eval_problems, model_specs, server_spec
from .metrics import (
    AGREEMENT_KEYS,
    TokenCounter,
    agreement,
    group_metrics,
    model_report,
    normalize_code,
    pass_at_k,
    rouge_l,
    step_reasoning,
    token_f1,
    trajectory_measures,
    words,
)
from .report import DEFINITIONS, write_charts, write_report_markdown
from .run import REPORT_SCHEMA, EvalError, evaluate, reference_trajectories

__all__ = [
    "AGREEMENT_KEYS",
    "DEFINITIONS",
    "REPORT_SCHEMA",
    "EvalError",
    "TokenCounter",
    "agreement",
    "eval_command",
    "evaluate",
    "group_metrics",
    "load_eval_problems",
    "model_report",
    "model_specs",
    "normalize_code",
    "pass_at_k",
    "reference_trajectories",
    "rouge_l",
    "server_spec",
    "step_reasoning",
    "token_f1",
    "trajectory_measures",
    "words",
    "write_charts",
    "write_report_markdown",
]
