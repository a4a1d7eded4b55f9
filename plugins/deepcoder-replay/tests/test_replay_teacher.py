"""The replay teacher: a recorded generation re-runs to the same trajectories without the teacher."""

import deepcoder_replay
import pytest

from deepcoder_core.agent import run_agent
from deepcoder_core.config import load_config
from deepcoder_core.generate import generate
from deepcoder_core.io import read_jsonl
from deepcoder_core.plugins import PluginError, PluginManager
from deepcoder_core.problems import bundled_problems
from deepcoder_core.protocols import Completion, Usage
from deepcoder_core.teachers import TeacherError

PROBLEMS = bundled_problems()[:3]


class Recorder:
    """Writes a different thought per (problem, sample), so a mix-up would show."""

    model = "recorded-model"

    def __init__(self):
        self.counter = 0

    def complete(self, messages, **params):
        prompt = next(m["content"] for m in messages if m["role"] == "user")
        problem = next(p for p in PROBLEMS if p.prompt.strip() in prompt)
        steps = sum(m["role"] == "assistant" for m in messages)
        self.counter += 1
        if steps == 0:
            text = f"Thought: idea {self.counter}\nAction: search\nAction Input: {problem.id}"
        else:
            text = f"Thought: done {self.counter}\nFinal Answer:\n```python\n{problem.canonical_solution}\n```"
        return Completion(text=text, reasoning=f"r{self.counter}", usage=Usage(5, 5))


@pytest.fixture
def recorded(tmp_path):
    cfg = load_config(overrides=["tools.enabled=[]", "generation.samples_per_problem=2"])
    path = tmp_path / "recorded.jsonl"
    generate(cfg, problems=PROBLEMS, out=path, teacher=Recorder(), progress=False)
    return cfg, path


def steps_by_pair(path):
    return {
        (r["problem_id"], r["sample"]): [(s["raw"], s["reasoning"]) for s in r["steps"]]
        for _, r in read_jsonl(path)
    }


def test_regeneration_replays_every_step(recorded, tmp_path):
    cfg, path = recorded
    manager = PluginManager()
    manager.add(deepcoder_replay, name="deepcoder-replay")
    teacher = manager.build("teacher", "replay", trajectories=str(path))
    assert teacher.model == "replay:recorded-model" and len(teacher) == 12
    again = tmp_path / "again.jsonl"
    summary = generate(cfg, problems=PROBLEMS, out=again, teacher=teacher, progress=False)
    assert steps_by_pair(again) == steps_by_pair(path)
    assert summary["success"] == 6 and summary["with_error"] == 0


def test_without_a_key_the_message_history_finds_the_step(recorded):
    cfg, path = recorded
    teacher = deepcoder_replay.ReplayTeacher(trajectories=path)
    record = run_agent(teacher, PROBLEMS[1], {}, cfg.agent)
    original = [r for _, r in read_jsonl(path) if r["problem_id"] == PROBLEMS[1].id]
    assert [s["raw"] for s in record["steps"]] in [[s["raw"] for s in r["steps"]] for r in original]


def test_a_missing_recording_is_a_clear_error(recorded):
    _, path = recorded
    teacher = deepcoder_replay.ReplayTeacher(trajectories=path)
    with pytest.raises(
        TeacherError, match=f"no recorded completion for problem x sample 0 step 0 in {path}"
    ):
        teacher.complete([{"role": "user", "content": "unknown"}], key=("x", 0, 0))
    with pytest.raises(PluginError, match="does not exist"):
        deepcoder_replay.ReplayTeacher(trajectories=path.parent / "nope.jsonl")
    with pytest.raises(PluginError, match="needs a recording"):
        deepcoder_replay.ReplayTeacher()
