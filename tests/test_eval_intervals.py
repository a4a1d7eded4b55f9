"""Evaluation intervals and the new rates: the bootstrap against hand-computed and directly
computed cases, the paired difference, tool-call validity and format-stopped runs on
hand-built trajectories, and the teacher's own trajectories as agreement references."""

from __future__ import annotations

import json

import numpy as np
import pytest

from deepcoder_core.evaluate import (
    bootstrap_interval,
    evaluate,
    group_metrics,
    paired_bootstrap_difference,
    paired_differences,
    problem_mean,
    ratio,
    sample_mean,
)
from deepcoder_core.records import Trajectory

from .test_evaluate import PROBLEMS, _step, config  # noqa: F401  (config is a fixture)

# ---------------------------------------------------------------------------- bootstrap


def test_two_problems_one_sample_each_hand_computed():
    # Resamples of the problems (0, 1): (0,0) (0,1) (1,0) (1,1), each 1/4 -> means 0, .5, .5, 1.
    # The 2.5% and 97.5% quantiles are the smallest and largest: 0 and 1.
    assert bootstrap_interval([[0.0], [1.0]]) == (0.0, 1.0)
    # A 40% interval (30% and 70% quantiles) holds only the mean 1/2, which has mass 1/2.
    assert bootstrap_interval([[0.0], [1.0]], level=0.4) == (0.5, 0.5)


def test_samples_within_a_problem_are_resampled_too():
    # One problem, samples (0, 1): its resamples are 00, 01, 10, 11 -> 0, .5, .5, 1, as above.
    assert bootstrap_interval([[0.0, 1.0]], sample_mean) == (0.0, 1.0)
    assert bootstrap_interval([[0.0, 1.0]], sample_mean, level=0.4) == (0.5, 0.5)


def test_degenerate_cases():
    assert bootstrap_interval([[0.25, 0.25], [0.25]]) == (0.25, 0.25)
    assert bootstrap_interval([]) is None
    assert bootstrap_interval([[(0.0, 0.0)], [(0.0, 0.0)]], ratio) is None  # no denominator
    assert bootstrap_interval([[(1.0, 2.0)], [(0.0, 0.0)]], ratio) == (0.5, 0.5)


def test_seed_fixed_case_matches_a_direct_computation():
    """The documented draws (bootstrap_draws), done by hand with loops."""
    values = [[1.0, 0.0, 1.0], [0.0], [1.0, 1.0], [0.0, 1.0, 0.0, 0.0]]
    rounds, seed = 500, 7
    rng = np.random.default_rng(seed)
    problems = rng.integers(0, len(values), size=(rounds, len(values)))
    u = rng.random((rounds, len(values), max(len(v) for v in values)))
    stats = []
    for b in range(rounds):
        means = []
        for j, p in enumerate(problems[b]):
            n = len(values[p])
            draws = [values[p][int(np.floor(u[b, j, s] * n))] for s in range(n)]
            means.append(sum(draws) / n)
        stats.append(sum(means) / len(means))
    expected = tuple(np.quantile(stats, [0.025, 0.975]))
    got = bootstrap_interval(values, problem_mean, rounds=rounds, seed=seed)
    assert got == pytest.approx(expected, abs=1e-12)
    assert bootstrap_interval(values, problem_mean, rounds=rounds, seed=seed) == got  # reproducible
    assert bootstrap_interval(values, problem_mean, rounds=rounds, seed=seed + 1) != got


def test_paired_difference_cancels_what_the_problems_share():
    # Problems of very different difficulty, b a little worse than a on every one of them.
    base = [[0.1, 0.2], [0.9, 0.8], [0.5, 0.4], [0.0, 0.1]]
    a = [[v + 0.1 for v in vs] for vs in base]
    paired = paired_bootstrap_difference(a, base, sample_mean)
    assert paired["difference"] == pytest.approx(0.1)
    assert paired["interval"] == pytest.approx([0.1, 0.1])
    assert paired["excludes_zero"] is True
    # Unpaired, the problems' spread would swamp the 0.1.
    low, high = bootstrap_interval(a, sample_mean)
    assert high - low > 0.3
    same = paired_bootstrap_difference(base, base, sample_mean)
    assert same == {"difference": 0.0, "interval": [0.0, 0.0], "excludes_zero": False}
    with pytest.raises(ValueError, match="same problems and samples"):
        paired_bootstrap_difference([[1.0]], [[1.0, 0.0]])


def test_paired_difference_includes_zero_when_problems_disagree():
    a = [[1.0], [0.0], [1.0], [0.0]]
    b = [[0.0], [1.0], [1.0], [0.0]]
    result = paired_bootstrap_difference(a, b)
    assert result["difference"] == 0.0
    assert result["interval"][0] < 0 < result["interval"][1]
    assert result["excludes_zero"] is False


# ---------------------------------------------------------------------------- rates


def _record(pid, sample, steps, success=False, error=None):
    return Trajectory.from_dict(
        {
            "id": f"{pid}#{sample}",
            "problem_id": pid,
            "sample": sample,
            "steps": steps,
            "success": success,
            "tests_passed": 1 if success else 0,
            "tests_total": 1,
            "error": error,
        }
    )


BAD_FORMAT = {"thought": "", "action": None, "observation_ok": False, "reasoning": None}


def test_tool_call_validity_and_format_stopped_rate_hand_built():
    records = [
        # 2 steps: a working call, then the final answer -> 1 valid of 2
        _record("a", 0, [_step("t", "python", "1"), _step("done")], success=True),
        # 3 steps: a failing call, a bad reply, a working call -> 1 valid of 3
        _record(
            "a", 1, [_step("t", "python", "1/0", ok=False), BAD_FORMAT, _step("t", "python", "2")]
        ),
        # 2 bad replies, then the loop stopped it
        _record(
            "b", 0, [BAD_FORMAT, BAD_FORMAT], error="stopped after 2 consecutive format errors"
        ),
        _record("b", 1, [_step("x")], error="no Final Answer after max_steps=1 steps"),
    ]
    metrics = group_metrics(records, [1], lambda text: len(text.split()))
    assert metrics["tool_call_validity"] == pytest.approx(2 / 8)  # 2 valid calls of 8 steps
    assert metrics["format_error_rate"] == pytest.approx(3 / 8)
    assert metrics["format_stopped_rate"] == 0.25
    intervals = metrics["intervals"]
    assert set(intervals) == {
        "pass@1",
        "tests_pass_rate",
        "format_error_rate",
        "tool_call_validity",
        "mean_steps",
        "format_stopped_rate",
    }
    for key, (low, high) in intervals.items():
        value = metrics[key]
        assert low <= value <= high, key
    # problem a: 1 valid of 2 and 1 of 3 steps; b: 0 of 3; resampling only b gives 0
    assert intervals["tool_call_validity"][0] == 0.0
    assert intervals["format_stopped_rate"] == [0.0, 0.75]


def test_paired_differences_pair_on_problem_and_sample():
    a = [_record("p", 0, [_step("x")], True), _record("q", 0, [_step("x")], True)]
    b = [_record("q", 0, [_step("x")], False), _record("p", 0, [_step("x")], False)]
    b.append(_record("r", 0, [_step("x")], True))  # only in b: not paired
    result = paired_differences(a, b)
    assert result["pairs"] == 2
    assert result["pass@1"] == {"difference": 1.0, "interval": [1.0, 1.0], "excludes_zero": True}
    assert result["mean_steps"]["excludes_zero"] is False


# ---------------------------------------------------------------------------- references


def test_teacher_evaluated_here_is_the_agreement_reference(config, tmp_path):  # noqa: F811
    """Training trajectories cover other problems: the teacher's own eval trajectories are
    the references, the teacher runs first and gets no agreement with itself."""
    training = tmp_path / "train.jsonl"
    training.write_text(json.dumps(_record("add", 0, [_step("x")]).to_dict()) + "\n")
    report = evaluate(
        config,
        models={"student": {"teacher": "batch"}, "teacher": {"teacher": "scripted"}},
        problems=PROBLEMS,
        out=tmp_path / "r",
        samples=1,
        ks=[1],
        teacher_trajectories=training,
        progress=False,
    )
    assert list(report["models"]) == ["student", "teacher"]  # the order asked for
    assert report["agreement_reference"] == {"kind": "model", "source": "teacher", "problems": 2}
    assert "agreement" not in report["models"]["teacher"]["overall"]
    agree = report["models"]["student"]["overall"]["agreement"]
    assert agree["trajectories"] == 2 and agree["answer_match"] == 1.0
    assert "agreement.png" in report["charts"]
    assert "against `teacher`'s own trajectories" in (tmp_path / "r" / "report.md").read_text()

    # Teacher trajectories that cover every problem stay the references.
    covering = tmp_path / "r" / "trajectories" / "teacher.jsonl"
    again = evaluate(
        config,
        models={"student": {"teacher": "batch"}, "teacher": {"teacher": "scripted"}},
        problems=PROBLEMS,
        out=tmp_path / "s",
        samples=1,
        ks=[1],
        teacher_trajectories=covering,
        progress=False,
    )
    assert again["agreement_reference"]["kind"] == "file"
    assert again["models"]["teacher"]["overall"]["agreement"]["trajectories"] == 2
