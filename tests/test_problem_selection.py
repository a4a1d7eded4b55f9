"""The one problem selection rule (`problems.resolve_problems`) and that generate, eval and run
all follow it: a problem with ``split: null`` belongs to every split, a split applies to
every set (bundled, HumanEval, a file), and the limit counts after the split."""

import dataclasses

import pytest
from click.testing import CliRunner

from deepcoder_core.cli import cli
from deepcoder_core.config import load_config
from deepcoder_core.evaluate import load_eval_problems
from deepcoder_core.pipeline import RunContext
from deepcoder_core.problems import (
    bundled_problems,
    filter_problems,
    in_split,
    resolve_problems,
    save_problems,
)

# One problem of each kind of split, in this file order.
SPLITS = {"t1": "train", "e1": "eval", "n1": None, "t2": "train", "n2": None}


@pytest.fixture
def problems_file(tmp_path):
    base = bundled_problems()[: len(SPLITS)]
    chosen = [
        dataclasses.replace(p, id=pid, split=split)
        for p, (pid, split) in zip(base, SPLITS.items(), strict=True)
    ]
    return save_problems(chosen, tmp_path / "mixed.jsonl")


def ids(problems):
    return [p.id for p in problems]


@pytest.mark.parametrize(
    ("problem_split", "asked", "expected"),
    [
        ("train", "train", True),
        ("train", "eval", False),
        (None, "train", True),  # split: null belongs to every split
        (None, "eval", True),
        ("eval", None, True),  # no split asked: every problem
    ],
)
def test_in_split(problem_split, asked, expected):
    problem = dataclasses.replace(bundled_problems()[0], split=problem_split)
    assert in_split(problem, asked) is expected


def test_a_file_is_filtered_like_the_bundled_set(problems_file):
    assert ids(resolve_problems(problems_file)) == list(SPLITS)
    assert ids(resolve_problems(problems_file, split="train")) == ["t1", "n1", "t2", "n2"]
    assert ids(resolve_problems(problems_file, split="eval")) == ["e1", "n1", "n2"]
    assert ids(resolve_problems(problems_file, split="eval", limit=2)) == ["e1", "n1"]
    held_out = resolve_problems("bundled", split="eval")
    assert held_out and all(p.split == "eval" for p in held_out)
    assert resolve_problems(None, split="eval", limit=3) == held_out[:3]
    humaneval = resolve_problems("humaneval", split="eval", limit=2)
    assert ids(humaneval) == ["HumanEval/0", "HumanEval/1"]
    assert resolve_problems("humaneval", split="train") == []
    # `deepcoder problems list --split` filters by the same rule
    loaded = resolve_problems(problems_file)
    assert filter_problems(loaded, split="eval") == resolve_problems(problems_file, split="eval")


def test_generate_eval_and_run_select_the_same_problems(problems_file, tmp_path, monkeypatch):
    settings = [
        f"generation.problems={problems_file}",
        "generation.split=eval",
        "generation.limit=2",
        f"eval.problems={problems_file}",
        "eval.split=eval",
        "eval.limit=2",
    ]
    config = load_config(None, settings, environ={})
    expected = ["e1", "n1"]

    run = RunContext(config, tmp_path / "run")
    assert ids(run.problems("generation")) == ids(run.problems("eval")) == expected

    problems, suite_of = load_eval_problems(config, [])
    assert ids(problems) == expected and set(suite_of.values()) == {str(problems_file)}

    seen = []

    def fake_generate(config, *, problems, out, **_):
        seen.append(ids(problems))
        out.write_text("")
        return {
            "trajectories": 0,
            "success": 0,
            "success_rate": None,
            "with_error": 0,
            "written_this_run": 0,
            "retries": 0,
        }

    monkeypatch.setattr("deepcoder_core.generate.generate", fake_generate)
    args = ["generate", "--out", str(tmp_path / "t.jsonl"), "--teacher", "replay"]
    result = CliRunner().invoke(cli, [*args, *(a for s in settings for a in ("--set", s))])
    assert result.exit_code == 0, result.output
    assert seen == [expected]


def test_eval_command_applies_eval_split_to_a_file(problems_file, tmp_path, monkeypatch):
    """Before, ``eval --problems FILE`` ignored eval.split unless --split was given."""
    seen = []

    def fake_evaluate(config, *, problems, **_):
        seen.append(ids(problems))
        return {"models": {}, "ks": [1]}

    monkeypatch.setattr("deepcoder_core.evaluate.command.evaluate", fake_evaluate)
    runner = CliRunner()
    args = ["eval", "--teacher", "replay", "--problems", str(problems_file), "--out", str(tmp_path)]
    for extra in ([], ["--split", "train", "--limit", "3"]):
        result = runner.invoke(cli, [*args, *extra])
        assert result.exit_code == 0, result.output
    assert seen == [["e1", "n1", "n2"], ["t1", "n1", "t2"]]  # eval.split defaults to eval
