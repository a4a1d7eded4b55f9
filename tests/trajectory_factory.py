"""Synthetic agent data for the processing tests and benchmark.

``trajectory(i)`` builds a record following the Trajectory contract of `docs/architecture.md` and
interfaces.md (schema 1: messages as sent, steps with thought/action/observation/raw/reasoning);
``fireact(i)`` builds a FireAct/Alpaca record together with its true character spans.
Texts mix code fences, multi-byte characters and lines that look like markers inside code,
so detectors and the alignment are exercised where they can go wrong.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from deepcoder_core.protocols import Span, SpanType

SYSTEM = (
    "You solve coding problems step by step. Use this format:\n"
    "Thought: what to do next\nAction: one of [python, retrieve]\nAction Input: the input\n"
    "Observation: the result\n... (repeat)\nThought: I know the answer\n"
    "Final Answer: the complete solution in a ```python block"
)
PROBLEMS = [
    (
        "Write a function `add(a, b)` that returns the sum of two integers.",
        "def add(a, b):\n    return a + b",
    ),
    (
        "Write `count_vowels(s)` returning the number of vowels in s (accents count: é → 1).\n"
        "Example:\nInput: s = 'héllo'\nOutput: 2",
        "def count_vowels(s):\n    return sum(c in 'aeiouéèà' for c in s.lower())",
    ),
    (
        "Implement `two_sum(nums, target)` returning the indices of the two numbers that add "
        "up to target.\nInput: nums = [2, 7, 11, 15], target = 9\nOutput: [0, 1]",
        "def two_sum(nums, target):\n    seen = {}\n    for i, n in enumerate(nums):\n"
        "        if target - n in seen:\n            return [seen[target - n], i]\n"
        "        seen[n] = i",
    ),
    (
        "编写函数 `reverse_words(s)`：把句子里的单词顺序反转。 Example: 'a b' -> 'b a' 🙂",
        "def reverse_words(s):\n    return ' '.join(reversed(s.split()))",
    ),
]
THOUGHTS = [
    "I should first check the function on the example from the statement.",
    "The edge case with an empty input needs a test before I answer.",
    "Let me run a quick test to make sure the loop handles duplicates.",
    "The error says the name is not defined; I will define the helper first.",
    "Les accents comptent aussi — je dois tester « é » avec soin.",
    "I think a dictionary of seen values gives O(n) time here.",
]
REASONING = [
    "The user wants a function. Maybe a simple loop works.\nWait, what about negatives? Fine.",
    "Okay, two pointers won't work on unsorted input, so a hash map it is.",
]
OBSERVATIONS = [
    "3\n",
    'Traceback (most recent call last):\n  File "<input>", line 1, in <module>\n'
    "NameError: name 'helper' is not defined",
    "[0, 1]\nAll 3 checks passed.",
    "Output: 2 (expected 2)\n✓ ok",
    "Found 2 passages:\n1. dict.get(key, default) returns default when key is missing.",
]


def _code(rng: random.Random, solution: str) -> str:
    calls = ["print(add(1, 2))", "print(count_vowels('héllo'))", "print(two_sum([2, 7], 9))"]
    body = solution + "\n\n" + rng.choice(calls)
    if rng.random() < 0.3:
        body += "\nprint('Output: done')  # a marker-like line inside code"
    return body


def trajectory(
    i: int,
    *,
    steps: int | None = None,
    success: bool | None = None,
    think: bool | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """One Trajectory record (schema 1) as the generator writes it."""
    rng = random.Random(seed * 100_003 + i)
    prompt, solution = PROBLEMS[i % len(PROBLEMS)]
    n_steps = steps if steps is not None else rng.randint(1, 4)
    think = rng.random() < 0.25 if think is None else think
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]
    record_steps = []
    for k in range(n_steps):
        thought = rng.choice(THOUGHTS)
        reasoning = rng.choice(REASONING) if think else None
        if k == n_steps - 1:
            raw = f"Thought: {thought}\nFinal Answer:\n```python\n{solution}\n```"
            step = {"thought": thought, "action": None, "observation": None}
        else:
            if rng.random() < 0.25:
                tool, text = "retrieve", "how to use dict.get with a default"
                action = f"Action: retrieve\nAction Input: {text}"
            else:
                tool, text = "python", _code(rng, solution)
                action = f"Action: python\nAction Input:\n```python\n{text}\n```"
            observation = rng.choice(OBSERVATIONS)
            # some replies start without the "Thought:" label, as small models write them
            lead = f"Thought: {thought}" if rng.random() < 0.85 else thought
            raw = f"{lead}\n{action}"
            step = {
                "thought": thought,
                "action": {"tool": tool, "input": text},
                "observation": observation,
            }
        step.update({"raw": raw, "reasoning": reasoning})
        record_steps.append(step)
        messages.append({"role": "assistant", "content": raw})
        if step["observation"] is not None:
            messages.append({"role": "user", "content": f"Observation: {step['observation']}"})
    passed = rng.random() < 0.7 if success is None else success
    return {
        "schema": 1,
        "id": f"traj-{seed}-{i}",
        "problem_id": f"p{i % len(PROBLEMS)}",
        "sample": 0,
        "teacher": {"plugin": "replay", "model": "synthetic", "params": {"temperature": 0.7}},
        "messages": messages,
        "steps": record_steps,
        "final_answer": solution,
        "success": passed,
        "tests_passed": 3 if passed else 1,
        "tests_total": 3,
        "usage": {"prompt_tokens": 100 * n_steps, "completion_tokens": 60 * n_steps},
        "timing": {"seconds": 1.5, "steps": n_steps},
        "error": None,
        "category": ["math", "strings", "arrays", "strings"][i % 4],
        "difficulty": ["easy", "medium", "hard"][i % 3],
    }


QUESTIONS = [
    ("What is the capital of the country where the Eiffel Tower is?", "Paris"),
    ("Which river flows through Kraków, the former Polish capital?", "Vistula"),
    ("Who wrote 'Der Prozess' and in which city was he born?", "Franz Kafka, Prague"),
]


def fireact(i: int, *, seed: int = 0) -> tuple[dict[str, Any], tuple[Span, ...], str]:
    """A FireAct/Alpaca record, the true spans of its flat text, and that flat text
    (instruction, newline, output)."""
    rng = random.Random(seed * 7919 + i)
    question, answer = QUESTIONS[i % len(QUESTIONS)]
    instruction = f"Question: {question}"
    parts: list[tuple[str, SpanType]] = []
    numbered = rng.random() < 0.5
    for k in range(1, rng.randint(1, 3) + 1):
        n = f" {k}" if numbered else ""
        topic = rng.choice(["Eiffel Tower", "Kraków", "Franz Kafka", "Vistula"])
        parts.append(
            (f"Thought{n}: I need to search {topic} and find the answer.\n", SpanType.REASONING)
        )
        parts.append((f"Action{n}: search[{topic}]\n", SpanType.ACTION))
        parts.append(
            (
                f"Observation{n}: {topic} is in Europe — über 100 years old; see also 東京.\n",
                SpanType.OBSERVATION,
            )
        )
    parts.append((f"Thought: So the answer is {answer}.\n", SpanType.REASONING))
    parts.append((f"Action: finish[{answer}]", SpanType.ANSWER))
    output = "".join(text for text, _ in parts)
    flat = instruction + "\n" + output
    spans = [Span(0, len(instruction) + 1, SpanType.OTHER)]
    pos = len(instruction) + 1
    for text, kind in parts:
        spans.append(Span(pos, pos + len(text), kind))
        pos += len(text)
    record = {"instruction": instruction, "input": "", "output": output}
    return record, tuple(spans), flat


def write_jsonl(path: Path, records: list[Any]) -> Path:
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write((record if isinstance(record, str) else json.dumps(record)) + "\n")
    return path
