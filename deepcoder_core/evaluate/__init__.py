"""Evaluation: run models as agents on problems, check their answers, report pass@k and more.

One job a module:

- :mod:`.metrics`: pure functions of trajectory records: :func:`pass_at_k`, the text
  measures, :func:`agreement` with a teacher's trajectory, the bootstrap intervals
  (:func:`bootstrap_interval`, :func:`paired_bootstrap_difference`), :func:`group_metrics`
  and :func:`model_report` (the definitions are in its docstring);
- :mod:`.run`: :func:`evaluate`, running every model with the agent and its schedules,
  resuming from its JSONL, and writing the report (``REPORT_SCHEMA``);
- :mod:`.report`: ``report.md`` and the PNG charts of a report;
- :mod:`.command`: ``deepcoder eval``: model specs from flags, problem sets, the command.
"""

from .command import eval_command, load_eval_problems, local_model_spec, model_specs, server_spec
from .metrics import (
    AGREEMENT_KEYS,
    INTERVAL_METRICS,
    TokenCounter,
    agreement,
    bootstrap_interval,
    format_stopped,
    group_metrics,
    interval_values,
    metric_intervals,
    model_report,
    normalize_code,
    paired_bootstrap_difference,
    paired_differences,
    pass_at_k,
    problem_mean,
    ratio,
    rouge_l,
    sample_mean,
    step_reasoning,
    token_f1,
    trajectory_measures,
    words,
)
from .report import DEFINITIONS, with_interval, write_charts, write_report_markdown
from .run import (
    INTERVAL,
    REPORT_SCHEMA,
    EvalError,
    choose_references,
    evaluate,
    reference_trajectories,
)

__all__ = [
    "AGREEMENT_KEYS",
    "DEFINITIONS",
    "INTERVAL",
    "INTERVAL_METRICS",
    "REPORT_SCHEMA",
    "EvalError",
    "TokenCounter",
    "agreement",
    "bootstrap_interval",
    "choose_references",
    "eval_command",
    "evaluate",
    "format_stopped",
    "group_metrics",
    "interval_values",
    "load_eval_problems",
    "local_model_spec",
    "metric_intervals",
    "model_report",
    "model_specs",
    "normalize_code",
    "paired_bootstrap_difference",
    "paired_differences",
    "pass_at_k",
    "problem_mean",
    "ratio",
    "reference_trajectories",
    "rouge_l",
    "sample_mean",
    "server_spec",
    "step_reasoning",
    "token_f1",
    "trajectory_measures",
    "with_interval",
    "words",
    "write_charts",
    "write_report_markdown",
]
