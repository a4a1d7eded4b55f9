"""The Thought / Action / Observation agent that turns a teacher and tools into trajectories.

The loop follows ReAct (Yao et al. 2023, "ReAct: Synergizing Reasoning and Acting in Language
Models"): the teacher writes a ``Thought:``, then either an ``Action:`` with an
``Action Input:`` (the tool runs, its result comes back as an ``Observation:`` user message)
or a ``Final Answer:`` holding the solution in a python code block, which is checked against
the problem's tests. Bad teacher output never raises: it becomes a format hint to the
teacher, and at the end a recorded error.

- :mod:`.react`: reading one reply (:func:`parse_step`, :func:`tool_calls_from`,
  :func:`extract_code`); the patterns are in :mod:`deepcoder_core.react_format`.
- :mod:`.loop`: :class:`AgentRun` (one trajectory as a state machine), :func:`run_agent`,
  the system prompt and :func:`build_tools`; the record it writes is
  :class:`deepcoder_core.records.Trajectory`.
- :mod:`.schedule`: running many agents at once (:func:`run_agents`: threads for remote
  teachers, batched steps for local ones), shared by generation and evaluation.
"""

from ..react_format import STOP
from .loop import AgentRun, build_tools, problem_message, run_agent, system_prompt
from .react import ParsedStep, code_blocks, extract_code, parse_step, tool_calls_from
from .schedule import run_agents, run_batched, run_concurrent, teacher_error_text

__all__ = [
    "STOP",
    "AgentRun",
    "ParsedStep",
    "build_tools",
    "code_blocks",
    "extract_code",
    "parse_step",
    "problem_message",
    "run_agent",
    "run_agents",
    "run_batched",
    "run_concurrent",
    "system_prompt",
    "teacher_error_text",
    "tool_calls_from",
]
