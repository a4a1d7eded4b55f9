"""The ReAct text format, defined once: what the agent parses, the teachers stop at, and the
span detectors label.

A step reads ``Thought: ...`` then ``Action: <tool>`` with its input (a fenced block or an
``Action Input:`` line), or ``Final Answer:`` with the code; the teacher stops where the
tool's ``Observation:`` belongs. Models decorate the keywords (markdown quotes, headings,
bold) and may wrap reasoning in ``<think>`` blocks; the patterns below accept both, and
:func:`strip_thinking` is the one reading of thinking blocks that the agent's parser and the
teachers' :func:`~deepcoder_core.teachers.split_thinking` share.
"""

from __future__ import annotations

import re

STOP = ("Observation:",)  # the teacher stops where the tool's result belongs

THINK = re.compile(r"<think(?:ing)?>(.*?)(?:</think(?:ing)?>|\Z)", re.S | re.I)
THINK_CLOSE_ONLY = re.compile(r"^(.*?)</think(?:ing)?>", re.S | re.I)
MARK = r"^[ \t>#*_]*"  # markdown decoration before a keyword: quotes, headings, bold
AFTER = r"[ \t*_]*:[ \t*_]*"  # the colon, with bold markers on either side
OBSERVATION = re.compile(MARK + r"observation" + AFTER, re.I | re.M)
FINAL = re.compile(MARK + r"final[ \t_-]*answer" + AFTER, re.I | re.M)
ACTION = re.compile(MARK + r"action(?:[ \t]*\d+)?" + AFTER + r"(.*)$", re.I | re.M)
ACTION_INPUT = re.compile(MARK + r"action[ \t_-]*input(?:[ \t]*\d+)?" + AFTER, re.I | re.M)
THOUGHT = re.compile(r"\A\s*" + MARK + r"thought(?:[ \t]*\d+)?" + AFTER, re.I)
NEXT_PART = re.compile(MARK + r"(?:thought|action|final[ \t_-]*answer)\b[^:\n]{0,12}:", re.I | re.M)
FENCE = re.compile(r"```[ \t]*([\w+.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)
TOOL_CALL_TAG = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|\Z)", re.S)


def strip_thinking(text: str) -> tuple[str, list[str]]:
    """Text without its thinking blocks, and the blocks' non-empty contents, in order.

    A ``</think>`` with no opening tag (the chat template opened the block in the prompt, as
    Qwen3 thinking models and DeepSeek-R1 do) ends a block that began the text; an unclosed
    ``<think>`` (a reply cut by max_tokens) runs to the end.
    """
    thoughts = [m.group(1).strip() for m in THINK.finditer(text)]
    text = THINK.sub("", text)
    match = THINK_CLOSE_ONLY.match(text)
    if match:
        thoughts.insert(0, match.group(1).strip())
        text = text[match.end() :]
    return text, [t for t in thoughts if t]
