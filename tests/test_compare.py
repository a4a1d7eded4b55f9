"""`deepcoder compare`: the variants file and its checks, the report from synthetic
per-variant results, and (slow) two variants end to end on tiny random models."""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

from deepcoder_core.cli import cli
from deepcoder_core.compare import (
    VariantError,
    VariantResult,
    build_compare_report,
    load_variants,
    verdict,
    write_compare_report,
)
from deepcoder_core.compare.command import DEFAULT_VARIANTS, variant_configs
from deepcoder_core.evaluate import INTERVAL, group_metrics
from deepcoder_core.records import Trajectory

# ---------------------------------------------------------------------------- variants


def _variants(tmp_path, data):
    path = tmp_path / "variants.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def test_the_default_set_loads():
    variants = load_variants(DEFAULT_VARIANTS)
    assert list(variants.variants) == ["sad", "token_kd", "sft", "none"]
    assert variants.baseline == "none" and not variants.variants["none"].train
    assert variants.pairs() == [
        ("sad", "none"),
        ("token_kd", "none"),
        ("sft", "none"),
        ("sad", "token_kd"),
    ]


def test_both_variant_forms_and_the_implied_baseline(tmp_path):
    path = _variants(
        tmp_path,
        {
            "variants": {
                "focal_curriculum": ["loss.name=focal", "weighting.name=curriculum"],
                "long": {"set": ["training.max_steps=80"]},
                "base": {"train": False},
            }
        },
    )
    variants = load_variants(path)
    assert variants.variants["long"].overrides == ["training.max_steps=80"]
    assert variants.variants["long"].train
    assert variants.baseline == "base"  # the one untrained variant
    assert variants.contrasts == []


def test_a_variant_may_read_its_own_cache_format(tmp_path):
    from deepcoder_core.compare.command import _own_cache

    path = _variants(
        tmp_path,
        {
            "variants": {
                "sad": ["loss.name=kl"],
                "sad_sampled": ["loss.name=kl", "teacher_logits.format=sampled"],
                "none": {"train": False},
            }
        },
    )
    base, configs = variant_configs(None, (), load_variants(path))
    assert configs["sad_sampled"].teacher_logits.format == "sampled"
    assert _own_cache(configs["sad_sampled"], base)  # its own cache of the shared dataset
    assert not _own_cache(configs["sad"], base)  # the shared one
    refused = _variants(tmp_path, {"variants": {"x": ["teacher_logits.enabled=false"]}})
    with pytest.raises(VariantError, match="teacher_logits.enabled is shared"):
        load_variants(refused)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"variants": {"x": ["generation.limit=3"]}}, r"variant 'x': generation.limit is shared"),
        ({"variants": {"x": ["teacher.name=groq"]}}, r"variant 'x': teacher.name is shared"),
        (
            {"variants": {"x": ["loss.name"]}},
            r"variant 'x': 'loss.name': expected section.key=value",
        ),
        ({"variants": {"x": {"train": False, "set": ["loss.name=ce"]}}}, "takes no overrides"),
        ({"variants": {"x": {"sets": []}}}, r"variant 'x': unknown key 'sets'"),
        ({"variants": {"x": "loss.name=ce"}}, "expected a list of section.key=value"),
        ({"variants": {"a b": []}}, "variant name 'a b'"),
        ({"variants": {"teacher": []}}, "reserved"),
        ({"variants": {}}, "at least one name"),
        ({"variant": {"x": []}}, "unknown key 'variant'"),
        ({"variants": {"x": []}, "baseline": "y"}, "baseline 'y' is not a variant"),
        ({"variants": {"x": [], "y": []}, "contrasts": [["x", "z"]]}, r"contrast \['x', 'z'\]"),
    ],
)
def test_bad_variants_files_name_the_file_and_the_variant(tmp_path, data, message):
    path = _variants(tmp_path, data)
    with pytest.raises(VariantError, match=message) as caught:
        load_variants(path)
    assert str(path) in str(caught.value)


def test_bad_override_values_are_refused_before_any_work(tmp_path):
    path = _variants(
        tmp_path, {"variants": {"ok": ["loss.name=kl"], "broken": ["training.max_steps=0"]}}
    )
    with pytest.raises(VariantError, match=r"variants.yaml: variant 'broken': .*max_steps"):
        variant_configs(None, (), load_variants(path))


def test_unknown_plugin_in_a_variant_is_one_line_before_any_stage(tmp_path):
    path = _variants(tmp_path, {"variants": {"typo": ["weighting.name=reasoning_hevy"]}})
    out = tmp_path / "out"
    args = ["compare", "--variants", str(path), "--out", str(out), "--set", "student.path=x"]
    args += ["--set", "processing.tokenizer=qwen3"]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 2, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith(f"Error: {path}: variant 'typo': ") and "reasoning_heavy" in last
    assert not out.exists()  # nothing was run or written


# ---------------------------------------------------------------------------- the report


def _trajectory(pid, sample, success, steps=1):
    step = {"thought": "t", "action": {"tool": "python", "input": "1"}, "observation_ok": True}
    return Trajectory.from_dict(
        {
            "id": f"{pid}#{sample}",
            "problem_id": pid,
            "sample": sample,
            "success": success,
            "steps": [step] * steps,
            "tests_passed": int(success),
            "tests_total": 1,
        }
    )


def _result(name, solved, heldout_divergence, train=True):
    problems = ["p1", "p2", "p3", "p4"]
    trajectories = [_trajectory(p, s, p in solved) for p in problems for s in range(2)]
    overall = group_metrics(trajectories, [1], lambda text: 1)
    evaluation = {
        "problems": {"source": "bundled", "count": 4},
        "samples": 2,
        "params": {"temperature": 0.2},
        "models": {name: {"overall": overall}},
    }
    # per example, per span number: [divergence x tokens, top1 x tokens, tokens]; reasoning only
    per_example = [
        {
            "problem_id": p,
            "totals": [
                [0, 0, 0],
                [heldout_divergence * 10, 5.0, 10.0],
                [0, 0, 0],
                [0, 0, 0],
                [0, 0, 0],
            ],
        }
        for p in problems
    ]
    heldout = {
        "divergence": "kl",
        "examples": 4,
        "spans": {
            "reasoning": {"divergence": heldout_divergence, "top1_agreement": 0.5, "tokens": 40}
        },
        "per_example": per_example,
    }
    return VariantResult(
        name=name,
        overrides=["weighting.name=reasoning_heavy"] if train else [],
        train=train,
        evaluation=evaluation,
        trajectories=trajectories,
        heldout=heldout,
        training={"steps": 4, "loss": {"first": 1.0, "last": 0.5}} if train else None,
        training_seconds=12.5 if train else None,
    )


def test_report_has_every_variant_interval_and_difference(tmp_path):
    path = _variants(
        tmp_path,
        {
            "variants": {"sad": [], "token_kd": [], "none": {"train": False}},
            "contrasts": [["sad", "token_kd"]],
        },
    )
    variants = load_variants(path)
    results = {
        "sad": _result("sad", {"p1", "p2", "p3", "p4"}, 0.1),
        "token_kd": _result("token_kd", {"p1", "p2"}, 0.3),
        "none": _result("none", set(), 0.9, train=False),
    }
    report = build_compare_report(
        variants,
        results,
        teacher=None,
        heldout_reason=None,
        config_path="c.yaml",
        interval=INTERVAL,
    )
    out = tmp_path / "report"
    write_compare_report(report, out)
    saved = json.loads((out / "report.json").read_text())
    assert list(saved["variants"]) == ["sad", "token_kd", "none"]
    for row in saved["variants"].values():
        for metric, cell in row["metrics"].items():
            assert cell["value"] is not None and len(cell["interval"]) == 2, metric
        assert row["heldout"]["spans"]["reasoning"]["divergence"]["interval"] is not None
    pairs = [(d["a"], d["b"]) for d in saved["differences"]]
    assert pairs == [("sad", "none"), ("token_kd", "none"), ("sad", "token_kd")]
    sad_none = saved["differences"][0]
    assert sad_none["pass@1"] == {"difference": 1.0, "interval": [1.0, 1.0], "excludes_zero": True}
    assert sad_none["heldout"]["reasoning"]["divergence"]["excludes_zero"] is True
    sad_kd = saved["differences"][2]
    assert sad_kd["pass@1"]["difference"] == 0.5
    assert sad_kd["pass@1"]["interval"][0] == 0.0  # resampling only p1, p2 gives no difference
    assert sad_kd["pass@1"]["excludes_zero"] is False
    text = (out / "report.md").read_text()
    assert (
        "pass@1: sad is higher than none (+1.000, 95% interval [1.000, 1.000], which excludes 0)"
        in text
    )
    assert "pass@1: no difference called between sad and token_kd" in text
    assert "| sad | weighting.name=reasoning_heavy | 1.000 [1.000, 1.000] |" in text
    for chart in saved["charts"]:
        assert (out / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(saved["charts"]) == {
        "rates.png",
        "steps.png",
        "heldout_divergence.png",
        "heldout_top1.png",
        "training_seconds.png",
    }


def test_no_chart_is_drawn_without_data(tmp_path):
    path = _variants(tmp_path, {"variants": {"a": {"train": False}, "b": {"train": False}}})
    results = {n: _result(n, {"p1"}, 0.5, train=False) for n in ("a", "b")}
    for result in results.values():
        result.heldout = None
    reason = "teacher 'groq' is not a model in this process"
    report = build_compare_report(
        load_variants(path),
        results,
        teacher=None,
        heldout_reason=reason,
        config_path=None,
        interval=INTERVAL,
    )
    out = tmp_path / "report"
    (out).mkdir()
    (out / "heldout_top1.png").write_bytes(b"old")  # a stale chart of an earlier report goes
    write_compare_report(report, out)
    assert report["charts"] == ["rates.png", "steps.png"]
    assert set(report["charts_skipped"]) == {
        "heldout_divergence.png",
        "heldout_top1.png",
        "training_seconds.png",
    }
    assert not (out / "heldout_top1.png").exists()
    text = (out / "report.md").read_text()
    assert f"Not measured: {reason}." in text
    assert "Not drawn: `training_seconds.png`, no variant was trained." in text
    assert report["differences"] == []  # no baseline: two untrained variants, none named


def test_verdict_words():
    called = {"difference": -0.25, "interval": [-0.5, -0.1], "excludes_zero": True}
    assert verdict("a", "b", "steps", called) == (
        "steps: a is lower than b (-0.250, 95% interval [-0.500, -0.100], which excludes 0)."
    )
    open_ = {"difference": 0.1, "interval": [-0.2, 0.3], "excludes_zero": False}
    assert "no difference called between a and b" in verdict("a", "b", "pass@1", open_)
    assert verdict("a", "b", "pass@1", None) == "pass@1: no data to compare a with b."


# ---------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_compare_two_variants_end_to_end_then_resume(tmp_path):
    """A tiny random teacher and student, 2 problems, a trained and an untrained variant."""
    from deepcoder_core import models
    from deepcoder_core.problems import bundled_problems

    teacher = tmp_path / "teacher"
    models.random_causal_lm(models.tiny_qwen3_config(), seed=1).save_pretrained(teacher)
    models.load_tokenizer(models.qwen3_tokenizer_path()).save_pretrained(teacher)
    problems = tmp_path / "problems.jsonl"
    chosen = [p for p in bundled_problems() if p.difficulty == "easy"][:2]
    problems.write_text("".join(json.dumps(p.to_dict()) + "\n" for p in chosen))
    config = {
        "teacher": {"name": "hf", "options": {"model": str(teacher)}},
        "student": {"init": {"from_teacher": None, "config": models.tiny_qwen3_config()}},
        "agent": {"max_steps": 2, "max_new_tokens": 24, "token_budget": 64},
        "tools": {"enabled": ["python"]},
        "generation": {"problems": str(problems), "split": None, "concurrency": 2},
        "processing": {"tokenizer": str(teacher), "successful_only": False, "min_tokens": 4},
        "teacher_logits": {"top_k": 8},
        "training": {"max_steps": 2, "gradient_accumulation_steps": 1, "save_steps": 1},
        "eval": {"problems": str(problems), "split": None, "k": [1]},
        "paths": {"cache": str(tmp_path / "cache")},
    }
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    variants = _variants(
        tmp_path,
        {"variants": {"sad": ["weighting.name=reasoning_heavy"], "none": {"train": False}}},
    )
    out = tmp_path / "cmp"
    args = ["compare", "--config", str(config_path), "--variants", str(variants), "--out", str(out)]
    first = CliRunner().invoke(cli, [*args, "--quiet"], catch_exceptions=False)
    assert first.exit_code == 0, first.output
    report = json.loads((out / "report.json").read_text())
    assert set(report["variants"]) == {"sad", "none"}
    for row in report["variants"].values():
        assert all(len(c["interval"]) == 2 for c in row["metrics"].values())
        assert row["agreement"]["trajectories"] == 2  # the teacher's own held-out trajectories
        assert row["heldout"]["spans"]  # scored against the teacher per span
    assert report["variants"]["sad"]["training_seconds"] > 0
    assert [(d["a"], d["b"]) for d in report["differences"]] == [("sad", "none")]
    assert (out / "variants" / "sad" / "train" / "student" / "config.json").exists()
    assert not (out / "variants" / "none" / "train").exists()
    for chart in report["charts"]:
        assert (out / chart).exists()

    again = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert again.exit_code == 0, again.output
    assert "train: up to date, skipped" in again.output  # a finished variant is not retrained
    assert again.output.count("up to date, skipped") == 6 + 2 + 3  # shared, none, sad
