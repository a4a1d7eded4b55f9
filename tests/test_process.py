"""`deepcoder process`: the whole stage on synthetic trajectories with the real Qwen3 tokenizer."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from deepcoder_core.cli import cli
from deepcoder_core.config import load_config
from deepcoder_core.models import qwen3_tokenizer_path
from deepcoder_core.process import ProcessError, fast_tokenizer, process, show_example
from deepcoder_core.protocols import SpanType

from .trajectory_factory import fireact, trajectory, write_jsonl

QWEN3 = str(qwen3_tokenizer_path())


@pytest.fixture(scope="module")
def tok():
    return fast_tokenizer(QWEN3)


def config(*overrides):
    return load_config(None, ["processing.agreement_sample=50", *overrides])


def run(tmp_path, records, *overrides, name="out", **kwargs):
    path = write_jsonl(tmp_path / f"{name}.jsonl", records)
    out = tmp_path / name
    summary = process(config(*overrides), trajectories=path, out=out, tokenizer=QWEN3, **kwargs)
    from datasets import load_from_disk

    return summary, load_from_disk(str(out)), out


def test_writes_the_dataset_contract_and_a_summary(tmp_path, tok):
    records = [trajectory(i, success=True) for i in range(12)]
    summary, data, out = run(tmp_path, records)
    assert data.column_names == [
        "input_ids",
        "attention_mask",
        "span_type",
        "span_confidence",
        "trajectory_id",
        "problem_id",
        "difficulty",
        "category",
        "success",
        "teacher_prefix",
        "teacher_prefix_replaces",
    ]
    assert str(data.features["input_ids"].feature.dtype) == "int32"
    assert str(data.features["span_type"].feature.dtype) == "int8"
    row = data[0]
    assert len(row["input_ids"]) == len(row["span_type"]) == len(row["span_confidence"])
    assert set(row["span_type"]) <= {0, 1, 2, 3, 4}
    assert row["trajectory_id"] == records[0]["id"] and row["difficulty"] == "easy"
    # the tokens are exactly the chat template rendering of the chat
    assert tok.decode(row["input_ids"]) == tok.apply_chat_template(
        _chat(records[0]), tokenize=False
    )
    saved = json.loads((out / "summary.json").read_text())
    assert saved == summary
    assert (out / "config.yaml").exists()
    assert summary["examples"] == 12 - summary["drops"].get("duplicate", 0)
    assert summary["formats"] == {"deepcoder": 12}
    assert summary["tokens"] == sum(len(r) for r in data["input_ids"])
    assert summary["span_ratios"]["action"] > 0.05 and summary["span_ratios"]["reasoning"] > 0.05
    assert sum(summary["span_tokens"].values()) == summary["tokens"]
    agreement = summary["agreement"]
    assert agreement["detectors"] == ["structured", "regex"] and agreement["agreement"] > 0.95


def _chat(record):
    chat = [dict(m) for m in record["messages"]]
    return chat


def test_bad_input_is_reported_by_line_and_the_rest_is_written(tmp_path):
    good = [trajectory(i, success=True, seed=3) for i in range(4)]
    no_steps = {**trajectory(9), "steps": []}
    no_messages = {k: v for k, v in trajectory(8).items() if k != "messages"}
    lines = [
        json.dumps(good[0]),
        "{not json",
        json.dumps(no_steps),
        json.dumps(good[1]),
        json.dumps(no_messages),
        json.dumps(["a", "list"]),
        json.dumps({**good[2], "pad": "x" * 5000}),
        json.dumps({"unknown": 1}),
        json.dumps(good[3]),
        json.dumps({"text": "lone \ud800 surrogate, escaped in JSON"}),
    ]
    path = tmp_path / "t.jsonl"
    with open(path, "wb") as handle:
        for line in lines:
            handle.write(line.encode() + b"\n")
        handle.write(b'{"text": "caf\xe9"}\n')  # latin-1, not UTF-8
        handle.write(b'{"text": "cut')  # a writer killed mid-line
    cfg = config("processing.max_record_bytes=4000")
    summary = process(cfg, trajectories=path, out=tmp_path / "out", tokenizer=QWEN3)
    bad = {entry["line"]: entry["reason"] for entry in summary["bad_input"]["lines"]}
    assert sorted(bad) == [2, 3, 5, 6, 7, 8, 10, 11, 12]
    assert "invalid JSON" in bad[2]
    assert "empty steps" in bad[3]
    assert "missing field 'messages'" in bad[5]
    assert "expected a JSON object" in bad[6]
    assert "too large" in bad[7]
    assert "unknown record format" in bad[8]
    assert "lone surrogate" in bad[10]
    assert "invalid UTF-8" in bad[11]
    assert "truncated" in bad[12]
    assert summary["bad_input"]["by_reason"] == {
        "empty_steps": 1,
        "invalid_json": 1,
        "invalid_utf8": 2,
        "missing_field": 1,
        "not_an_object": 1,
        "too_large": 1,
        "truncated_line": 1,
        "unknown_format": 1,
    }
    assert summary["records"]["read"] == 12
    assert summary["examples"] == 3  # lines 1, 4 and 9


def test_quality_filter_counts_every_drop(tmp_path):
    records = [trajectory(i, success=i % 2 == 0, seed=5) for i in range(8)]
    records.append(dict(records[0]))  # the same chat again
    summary, data, _ = run(
        tmp_path, records, "processing.successful_only=true", "processing.min_tokens=300"
    )
    assert summary["drops"]["unsuccessful"] == 4
    assert summary["drops"]["duplicate"] == 1
    kept = 8 - 4 - summary["drops"].get("too_short", 0)
    assert summary["examples"] == len(data) == kept
    assert all(data["success"])
    assert all(len(ids) >= 300 for ids in data["input_ids"])
    summary, data, _ = run(
        tmp_path, records, "processing.min_action_ratio=0.99", "processing.dedup=false", name="r"
    )
    assert summary["examples"] == 0 and summary["drops"]["low_action_ratio"] == 5
    assert "duplicate" not in summary["drops"]


def _long(n_steps=6):
    return [trajectory(i, steps=n_steps, think=False, success=True, seed=8) for i in range(4)]


def test_truncation_keeps_whole_steps(tmp_path, tok):
    summary, data, _ = run(tmp_path, _long(), "processing.max_length=420")
    assert summary["truncated"] >= 1
    for ids, types in zip(data["input_ids"], data["span_type"], strict=True):
        assert len(ids) <= 420
        text = tok.decode(ids)
        # ends after an observation turn: the next step (an assistant turn) was cut whole
        assert text.endswith("<|im_end|>\n")
        actions = text.count("\nAction: python") + text.count("\nAction: retrieve")
        assert actions == text.count("<|im_start|>user\nObservation: ") >= 1
        assert SpanType.ACTION in types


def test_overflow_drop(tmp_path):
    summary, data, _ = run(
        tmp_path, _long(), "processing.max_length=420", "processing.overflow=drop"
    )
    assert summary["drops"]["too_long"] == summary["records"]["read"] - len(data)
    assert all(len(ids) <= 420 for ids in data["input_ids"])


def test_overflow_split_repeats_the_prompt(tmp_path, tok):
    records = _long(8)
    summary, data, _ = run(
        tmp_path, records, "processing.max_length=460", "processing.overflow=split"
    )
    assert summary["split"] >= 1 and len(data) > len(records)
    ids_of = {}
    for row in data:
        assert len(row["input_ids"]) <= 460
        text = tok.decode(row["input_ids"])
        assert text.startswith("<|im_start|>system\nYou solve coding problems")
        ids_of.setdefault(row["trajectory_id"], []).append(text)
    parts = max(ids_of.values(), key=len)
    assert len(parts) >= 2
    assert "Final Answer:" in parts[-1] and "Final Answer:\n```" not in parts[0]


def test_fireact_file_with_regex(tmp_path, tok):
    made = [fireact(i, seed=2) for i in range(6)]
    summary, data, _ = run(tmp_path, [r for r, _, _ in made], fmt="fireact", detector="regex")
    assert summary["formats"] == {"fireact": len(data)}
    row = data[0]
    ids, types = np.array(row["input_ids"]), np.array(row["span_type"])
    answer = tok.decode(ids[types == SpanType.ANSWER])
    assert answer.startswith("Action: finish[")
    assert "Observation" in tok.decode(ids[types == SpanType.OBSERVATION])
    assert "Question:" in tok.decode(ids[types == 0])
    assert summary["agreement"]["agreement"] > 0.95  # structured reads ReAct text too


def test_other_formats_in_one_file(tmp_path):
    records = [
        trajectory(0, success=True),
        {
            "messages": [
                {"role": "user", "content": "2+3?"},
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [{"function": {"name": "python", "arguments": "print(2+3)"}}],
                },
                {"role": "tool", "content": "5"},
                {"role": "assistant", "content": "It is 5, which took a bit of careful work."},
            ]
        },
        {
            "conversations": [
                {"from": "human", "value": "hi"},
                {"from": "gpt", "value": "Thought: a\nAction: b"},
            ]
        },
        {"text": "Question: q\nThought: think hard about it\nFinal Answer: 42 is the answer"},
    ]
    summary, data, _ = run(tmp_path, records, "processing.min_tokens=4")
    assert summary["formats"] == {"deepcoder": 1, "openai": 1, "sharegpt": 1, "text": 1}
    assert len(data) == 4
    text_row = data[3]
    assert text_row["trajectory_id"] == "line-4"
    assert SpanType.ANSWER in text_row["span_type"] and SpanType.REASONING in text_row["span_type"]


def test_errors_are_one_line(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [trajectory(0)])
    with pytest.raises(ProcessError, match="no such trajectories file"):
        process(config(), trajectories=tmp_path / "none.jsonl", out=tmp_path / "o", tokenizer=QWEN3)
    with pytest.raises(ProcessError, match="unknown span detector 'regx'.*did you mean 'regex'"):
        process(config(), trajectories=path, out=tmp_path / "o", tokenizer=QWEN3, detector="regx")
    with pytest.raises(ProcessError, match="processing.overflow 'cut'"):
        process(config("processing.overflow=cut"), trajectories=path, out=tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_cli_process_and_show_example(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [trajectory(i, success=True) for i in range(3)])
    out = tmp_path / "data"
    runner = CliRunner()
    result = runner.invoke(
        cli,
        [
            "process",
            "--trajectories",
            str(path),
            "--tokenizer",
            QWEN3,
            "--out",
            str(out),
            "--detector",
            "regex",
            "--set",
            "processing.agreement_sample=0",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "examples" in result.output and "spans: other" in result.output
    result = runner.invoke(cli, ["show", "example", str(out), "--index", "1", "--markers"])
    assert result.exit_code == 0, result.output
    assert "⟦reasoning⟧Thought:" in result.output
    assert "⟦action⟧Action:" in result.output
    assert "⟦observation⟧Observation:" in result.output
    assert "⟦answer⟧Final Answer:" in result.output
    assert "\x1b[" not in result.output  # no colour when not a terminal
    colored = runner.invoke(cli, ["show", "example", str(out), "--color"])
    assert "\x1b[35m" in colored.output  # reasoning in magenta
    bad = runner.invoke(cli, ["show", "example", str(out), "--index", "99"])
    assert bad.exit_code != 0 and "out of range" in bad.output
    missing = runner.invoke(
        cli, ["process", "--trajectories", str(tmp_path / "x.jsonl"), "--out", str(out)]
    )
    assert missing.exit_code != 0 and "no such trajectories file" in missing.output
    assert "Traceback" not in missing.output


def test_show_example_text(tmp_path):
    _, _, out = run(tmp_path, [trajectory(0, success=True)])
    text = show_example(out, 0, markers=True)
    assert text.splitlines()[0].startswith("example 0 of 1: trajectory traj-0-0")
    assert "<|im_start|>system" in text


def _with_bad_lines(tmp_path, records):
    """A JSONL file with an invalid JSON line and a non-object line deep in the file."""
    path = write_jsonl(tmp_path / "mixed.jsonl", records)
    lines = path.read_text().splitlines(keepends=True)
    lines.insert(250, "{not json\n")
    lines.insert(120, "[1, 2]\n")
    path.write_text("".join(lines))
    return path


@pytest.mark.parametrize("num_proc", [2, 3])
def test_forked_workers_give_the_same_dataset_and_report(tmp_path, num_proc):
    path = _with_bad_lines(tmp_path, [trajectory(i, seed=9) for i in range(300)])
    cfg = config("processing.batch_size=32")
    one = process(cfg, trajectories=path, out=tmp_path / "one", tokenizer=QWEN3, num_proc=1)
    many = process(
        cfg, trajectories=path, out=tmp_path / "many", tokenizer=QWEN3, num_proc=num_proc
    )
    from datasets import load_from_disk

    data1, data2 = load_from_disk(str(tmp_path / "one")), load_from_disk(str(tmp_path / "many"))
    assert many["num_proc"] == num_proc and one["num_proc"] == 1
    assert data1["input_ids"] == data2["input_ids"]
    assert data1["span_type"] == data2["span_type"]
    assert data1["trajectory_id"] == data2["trajectory_id"]
    assert one["drops"] == many["drops"] and one["agreement"] == many["agreement"]
    assert one["bad_input"] == many["bad_input"]
    assert [b["line"] for b in many["bad_input"]["lines"]] == [121, 252]
    assert many["bad_input"]["by_reason"] == {"invalid_json": 1, "not_an_object": 1}


def _children() -> set[int]:
    import os
    from pathlib import Path

    tasks = Path(f"/proc/{os.getpid()}/task")
    return {int(p) for t in tasks.iterdir() for p in (t / "children").read_text().split()}


def test_a_failing_worker_fails_the_stage_and_keeps_the_old_output(tmp_path, monkeypatch):
    import os

    from deepcoder_core import process as stage

    path = write_jsonl(tmp_path / "t.jsonl", [trajectory(i, seed=2) for i in range(200)])
    cfg = config("processing.batch_size=32")
    process(cfg, trajectories=path, out=tmp_path / "out", tokenizer=QWEN3, num_proc=1)
    before = (tmp_path / "out" / "summary.json").read_text()
    parent, plain_run = os.getpid(), stage.Worker.run
    earlier = _children()  # other tests' helpers (sandbox pool, servers) may be running

    def run_failing_in_children(self, items):
        if os.getpid() != parent:
            raise RuntimeError("disk on fire")
        return plain_run(self, items)

    monkeypatch.setattr(stage.Worker, "run", run_failing_in_children)
    with pytest.raises(
        ProcessError, match="processing worker .* failed: RuntimeError: disk on fire"
    ):
        process(cfg, trajectories=path, out=tmp_path / "out", tokenizer=QWEN3, num_proc=2)
    assert (tmp_path / "out" / "summary.json").read_text() == before
    assert _children() <= earlier  # every worker was reaped


def test_a_record_from_the_real_agent(tmp_path, tok):
    """The generator's own records (AgentRun.finish) go through with exact spans."""
    agent = pytest.importorskip("deepcoder_core.agent")
    from deepcoder_core.config import AgentConfig
    from deepcoder_core.problems import bundled_problems

    problem = bundled_problems()[0]
    run_ = agent.AgentRun(problem, {"plugin": "t", "model": "m", "params": {}}, {}, AgentConfig())
    run_.advance(
        "<think>Check first.</think>\nThought: I will test it.\nAction: python\n"
        "Action Input:\n```python\nprint(1)\n```\nObservation: 1 (the teacher made this up)"
    )
    run_.advance("Thought: done\nFinal Answer:\n```python\ndef f():\n    return 1\n```")
    summary, data, _ = run(tmp_path, [run_.finish()], "processing.successful_only=false")
    # Qwen3's template drops the <think> block of turns before the last user message
    assert summary["examples"] == 1
    assert summary["template_missing_chars"] == len("<think>Check first.</think>\n")
    ids, types = np.array(data[0]["input_ids"]), np.array(data[0]["span_type"])
    assert tok.decode(ids[types == SpanType.ACTION]).startswith("Action: python")
    assert "made this up" not in tok.decode(ids)  # the chat keeps the reply cut at Observation:
    assert tok.decode(ids[types == SpanType.ANSWER]).startswith("Final Answer:")
    reasoning = tok.decode(ids[types == SpanType.REASONING])
    assert "Check first." not in reasoning and "Thought: I will test it." in reasoning


def test_privileged_exemplars_give_the_teacher_its_own_system_message(tmp_path, tok):
    plain, privileged = trajectory(0, success=True), trajectory(1, success=True)
    privileged["teacher_system"] = "You are the teacher. Examples: ... many worked examples ..."
    _, data, _ = run(tmp_path, [plain, privileged])
    rows = {row["trajectory_id"]: row for row in data}
    assert rows[plain["id"]]["teacher_prefix"] == []
    assert rows[plain["id"]]["teacher_prefix_replaces"] == 0
    row = rows[privileged["id"]]
    system = privileged["messages"][0]["content"]

    def tokens(text):
        rendered = tok.apply_chat_template([{"role": "system", "content": text}], tokenize=False)
        return tok(rendered, add_special_tokens=False).input_ids

    # the student's row starts with the plain system message; the teacher's with its own
    assert row["input_ids"][: row["teacher_prefix_replaces"]] == tokens(system)
    assert row["teacher_prefix"] == tokens(privileged["teacher_system"])
