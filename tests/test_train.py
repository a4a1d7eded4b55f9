"""Distillation training: tiny random students on CPU, a few steps each."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from deepcoder_core import hookimpl, models, plugins
from deepcoder_core.config import load_config
from deepcoder_core.distill import train as train_module
from deepcoder_core.distill.checkpoint import STATE_FILE, checkpoint_step, decode_state
from deepcoder_core.distill.train import TrainError, train
from deepcoder_core.distill.trainer import DistillTrainer

SMALL_VOCAB = 512


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def make_config(tmp_path: Path, *overrides: str, model: dict | None = None):
    config = load_config(
        None,
        [
            "loss.name=kl",
            "weighting.name=uniform",
            "training.learning_rate=0.01",
            "training.warmup_ratio=0",
            "training.lr_scheduler=constant",
            "training.gradient_accumulation_steps=1",
            "training.save_steps=1000",
            "training.report_to=[]",
            "student.tokenizer=qwen3",
            *overrides,
        ],
    )
    config.student.init.config = model or (models.tiny_qwen3_config() | {"vocab_size": SMALL_VOCAB})
    return config


def random_rows(count: int, vocab: int = SMALL_VOCAB, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        n = rng.randint(20, 28)
        types = [0] * 4 + [1] * 6 + [2] * 4 + [3] * 3 + [4] * (n - 17)
        rows.append(
            {
                "input_ids": [rng.randrange(10, vocab) for _ in range(n)],
                "attention_mask": [1] * n,
                "span_type": types,
                "span_confidence": [1.0] * n,
                "trajectory_id": f"t{i}",
                "problem_id": f"p{i % 2}",
                "difficulty": ["easy", "medium", "hard"][i % 3],
                "category": "math",
                "success": True,
            }
        )
    return rows


def save_dataset(rows: list[dict], path: Path) -> Path:
    from datasets import Dataset

    Dataset.from_list(rows).save_to_disk(str(path))
    return path


def save_teacher(path: Path, config: dict, seed: int = 1) -> Path:
    """A random teacher with a peaked distribution (large init), saved with the Qwen3 tokenizer."""
    teacher = models.random_causal_lm(config | {"initializer_range": 0.5}, seed=seed)
    teacher.save_pretrained(path)
    models.load_tokenizer(models.qwen3_tokenizer_path()).save_pretrained(path)
    return path


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def qwen3_example() -> dict:
    """One ReAct trajectory tokenized with the real Qwen3 tokenizer, span types per segment."""
    tokenizer = models.load_tokenizer(models.qwen3_tokenizer_path())
    segments = [
        (0, "<|im_start|>user\nWrite add(a, b).<|im_end|>\n<|im_start|>assistant\n"),
        (1, "Thought: adding two numbers is one expression; test it first.\n"),
        (2, "Action: python\n```python\nprint(1 + 2)\n```\n"),
        (3, "Observation: 3\n"),
        (4, "Final Answer:\n```python\ndef add(a, b):\n    return a + b\n```<|im_end|>"),
    ]
    ids, types = [], []
    for span, text in segments:
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += piece
        types += [span] * len(piece)
    return {
        "input_ids": ids,
        "attention_mask": [1] * len(ids),
        "span_type": types,
        "span_confidence": [1.0] * len(ids),
        "trajectory_id": "t0",
        "problem_id": "add",
        "difficulty": "easy",
        "category": "math",
        "success": True,
    }


@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
def test_qwen3_student_loss_falls_on_fixed_batch(tmp_path, moe):
    student = models.tiny_qwen3_config(moe=moe)
    data = save_dataset([qwen3_example()], tmp_path / "data")
    teacher = save_teacher(tmp_path / "teacher", models.tiny_qwen3_config())
    config = make_config(tmp_path, "training.max_steps=30", "training.batch_size=1", model=student)
    out = tmp_path / "run"
    summary = train(config, data=data, out=out, teacher=str(teacher), progress=False)

    records = metrics(out)
    assert [r["step"] for r in records] == list(range(1, 31))
    assert summary["signal"] == "online" and summary["moe"] is moe
    for span in ("reasoning", "action", "answer"):
        first, last = records[0][f"divergence/{span}"], records[-1][f"divergence/{span}"]
        assert last < 0.5 * first, (span, first, last)
    assert "divergence/observation" not in records[0]  # weight 0: no loss on tool output
    assert records[-1]["tokens_per_second"] > 0
    if moe:
        assert all(r["moe/aux_loss"] > 0 for r in records)
        assert len(records[-1]["expert_load"]) == student["num_experts"]
        assert sum(records[-1]["expert_load"]) == pytest.approx(1.0, abs=1e-3)
        assert (out / "plots" / "expert_load.png").exists()
    assert (out / "plots" / "divergence_by_span.png").stat().st_size > 1000
    assert (out / "config.yaml").exists()
    assert json.loads((out / "summary.json").read_text())["steps"] == 30
    reloaded = models.load_causal_lm(out / "student")
    assert reloaded.config.model_type == student["model_type"]


def test_resume_after_interrupt_equals_uninterrupted_run(tmp_path, monkeypatch):
    data = save_dataset(random_rows(4), tmp_path / "data")
    teacher = save_teacher(tmp_path / "teacher", models.tiny_qwen3_config() | {"vocab_size": 512})
    overrides = (
        "training.max_steps=6",
        "training.save_steps=3",
        "training.lr_scheduler=cosine",
        "weighting.name=adaptive",  # its running per-span losses must survive the restart
    )
    whole = tmp_path / "whole"
    train(
        make_config(tmp_path, *overrides),
        data=data,
        out=whole,
        teacher=str(teacher),
        progress=False,
    )

    original = DistillTrainer.end_window

    def interrupt_at_step_4(self):
        if self.state.global_step == 4:
            raise KeyboardInterrupt
        original(self)

    cut = tmp_path / "cut"
    monkeypatch.setattr(DistillTrainer, "end_window", interrupt_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        train(
            make_config(tmp_path, *overrides),
            data=data,
            out=cut,
            teacher=str(teacher),
            progress=False,
        )
    assert (cut / "checkpoints" / "checkpoint-3").is_dir()
    assert [r["step"] for r in metrics(cut)] == [1, 2, 3]
    monkeypatch.setattr(DistillTrainer, "end_window", original)
    config = make_config(tmp_path, *overrides)
    train(config, data=data, out=cut, teacher=str(teacher), resume=True, progress=False)

    expected, resumed = metrics(whole), metrics(cut)
    assert [r["step"] for r in resumed] == list(range(1, 7))
    for a, b in zip(expected, resumed, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-7)
        expected_reasoning = a["divergence/reasoning"]
        assert b["divergence/reasoning"] == pytest.approx(expected_reasoning, rel=1e-5, abs=1e-7)


def test_train_leaves_the_callers_config_unchanged(tmp_path):
    import copy

    import yaml

    data = save_dataset(random_rows(1), tmp_path / "data")
    student = save_teacher(tmp_path / "student", models.tiny_qwen3_config() | {"vocab_size": 512})
    config = make_config(tmp_path, "loss.name=ce", "training.max_steps=1")
    before = copy.deepcopy(config)
    train(config, data=data, out=tmp_path / "run", student=str(student), progress=False)
    assert config == before and config.student.path is None
    snapshot = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert snapshot["student"]["path"] == str(student)  # the run records what it trained


def test_lr_warmup_lasts_the_configured_share_of_the_steps(tmp_path):
    data = save_dataset(random_rows(1), tmp_path / "data")
    overrides = ("loss.name=ce", "training.max_steps=10", "training.lr_scheduler=linear")
    config = make_config(tmp_path, *overrides, "training.warmup_ratio=0.3")
    assert train_module.warmup_steps(config) == 3  # 0.3 x 10, not ceil(3.0000000000000004)
    train(config, data=data, out=tmp_path / "run", progress=False)
    rates = [r["learning_rate"] for r in metrics(tmp_path / "run")]  # what each step ran with
    peak = 0.01  # training.learning_rate in make_config
    assert rates[:4] == pytest.approx([0.0, peak / 3, 2 * peak / 3, peak])  # 3 warm-up steps
    assert all(a > b for a, b in zip(rates[3:], rates[4:], strict=False))  # then the decay
    assert train_module.warmup_steps(make_config(tmp_path, *overrides)) == 0


def test_gradient_accumulation_split_does_not_change_losses(tmp_path):
    data = save_dataset(random_rows(4), tmp_path / "data")
    teacher = save_teacher(tmp_path / "teacher", models.tiny_qwen3_config() | {"vocab_size": 512})
    runs = {}
    for batch, accumulation in [(2, 1), (1, 2)]:
        config = make_config(
            tmp_path,
            "training.max_steps=3",
            f"training.batch_size={batch}",
            f"training.gradient_accumulation_steps={accumulation}",
        )
        out = tmp_path / f"b{batch}"
        train(config, data=data, out=out, teacher=str(teacher), progress=False)
        runs[batch] = [r["loss"] for r in metrics(out)]
    assert runs[1] == pytest.approx(runs[2], rel=1e-4)


def test_labels_only_signal_trains_without_teacher(tmp_path):
    data = save_dataset(random_rows(1), tmp_path / "data")
    config = make_config(tmp_path, "loss.name=ce", "training.max_steps=15")
    summary = train(config, data=data, out=tmp_path / "run", progress=False)
    assert summary["signal"] == "labels" and summary["teacher"] is None
    assert summary["loss"]["last"] < 0.5 * summary["loss"]["first"]


def test_lora_saves_only_adapters_which_reload_and_merge(tmp_path):
    from peft import PeftModel

    from deepcoder_core.distill.student import merge_lora

    data = save_dataset(random_rows(2), tmp_path / "data")
    teacher = save_teacher(tmp_path / "teacher", models.tiny_qwen3_config() | {"vocab_size": 512})
    config = make_config(
        tmp_path, "training.max_steps=3", "student.lora.enabled=true", "student.lora.r=4"
    )
    out = tmp_path / "run"
    summary = train(config, data=data, out=out, teacher=str(teacher), progress=False)
    assert summary["trainable_parameters"] < summary["parameters"] / 2
    files = {p.name for p in (out / "student").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= files
    assert "model.safetensors" not in files
    base_path = json.loads((out / "student" / "adapter_config.json").read_text())[
        "base_model_name_or_path"
    ]
    assert Path(base_path) == (out / "student-base").resolve()

    ids = torch.tensor([random_rows(1, seed=5)[0]["input_ids"]])
    adapted = PeftModel.from_pretrained(models.load_causal_lm(base_path), str(out / "student"))
    base_logits = models.load_causal_lm(base_path)(ids).logits
    adapted_logits = adapted(ids).logits
    assert not torch.allclose(base_logits, adapted_logits)  # the adapters learned something
    merged = models.load_causal_lm(merge_lora(out / "student", tmp_path / "merged"))
    torch.testing.assert_close(merged(ids).logits, adapted_logits, rtol=1e-4, atol=1e-4)


def test_different_tokenizer_needs_a_vocab_agnostic_loss(tmp_path):
    data = save_dataset(random_rows(1), tmp_path / "data")
    teacher = tmp_path / "teacher"
    models.random_causal_lm(models.tiny_qwen3_config() | {"vocab_size": 512}).save_pretrained(
        teacher
    )
    other = models.load_tokenizer(models.qwen3_tokenizer_path())
    other.add_tokens(["<extra_token_for_the_test>"])
    other.save_pretrained(teacher)
    config = make_config(tmp_path, "training.max_steps=1")
    with pytest.raises(TrainError, match="tokenizer .* differs .* loss 'kl'"):
        train(config, data=data, out=tmp_path / "run", teacher=str(teacher), progress=False)


def test_other_tokenizer_aligns_token_boundaries_for_a_vocab_agnostic_loss(tmp_path):
    from deepcoder_core.distill.train import TokenAligner

    smol = models.load_tokenizer(models.default_teacher_path())
    qwen = models.load_tokenizer(models.qwen3_tokenizer_path())
    row = qwen3_example()
    pairs = TokenAligner(qwen, smol)([row], len(row["input_ids"]))
    aligned = pairs["aligned"][0]
    assert aligned.float().mean() > 0.6  # most boundaries are shared
    teacher_ids = pairs["teacher_input_ids"][0].tolist()
    for i in torch.nonzero(aligned).view(-1).tolist()[:20]:
        # Both sides predict the same next piece of text.
        student_next = qwen.decode(row["input_ids"][i + 1 : i + 2])
        teacher_next = smol.decode(teacher_ids[pairs["teacher_pos"][0, i] + 1])
        assert student_next.startswith(teacher_next) or teacher_next.startswith(student_next)

    teacher = tmp_path / "teacher"
    small = models.tiny_qwen3_config() | {"vocab_size": len(smol), "initializer_range": 0.5}
    models.random_causal_lm(small, seed=3).save_pretrained(teacher)
    smol.save_pretrained(teacher)
    data = save_dataset([row], tmp_path / "data")
    config = make_config(
        tmp_path, "loss.name=wasserstein", "training.max_steps=2", model=models.tiny_qwen3_config()
    )
    with pytest.warns(UserWarning, match="tokenizer differs"):
        summary = train(
            config, data=data, out=tmp_path / "run", teacher=str(teacher), progress=False
        )
    assert summary["signal"] == "aligned"
    first = metrics(tmp_path / "run")[0]
    assert 0 < first["tokens/reasoning"] <= row["span_type"].count(1)


def test_train_command_reports_a_missing_dataset_in_one_line(tmp_path):
    from click.testing import CliRunner

    from deepcoder_core.cli import cli

    result = CliRunner().invoke(
        cli, ["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "run")]
    )
    assert result.exit_code == 2
    assert "no processed dataset here" in result.output
    assert "Traceback" not in result.output


def test_train_command_refuses_two_teacher_signals_in_one_line(tmp_path):
    from click.testing import CliRunner

    from deepcoder_core.cli import cli

    args = ["train", "--data", str(tmp_path), "--out", str(tmp_path / "run")]
    args += ["--teacher", "hf", "--teacher-logits", str(tmp_path / "cache")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    assert "Error: give either --teacher (online) or --teacher-logits (cache)" in result.output
    assert "Traceback" not in result.output


def test_train_command_runs_from_a_config_file(tmp_path):
    import yaml
    from click.testing import CliRunner

    from deepcoder_core.cli import cli

    data = save_dataset(random_rows(2), tmp_path / "data")
    teacher = save_teacher(tmp_path / "teacher", models.tiny_qwen3_config() | {"vocab_size": 512})
    config = {
        "student": {
            "tokenizer": "qwen3",
            "init": {
                "from_teacher": None,
                "config": models.tiny_qwen3_config() | {"vocab_size": 512},
            },
        },
        "training": {"gradient_accumulation_steps": 1, "report_to": []},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    args = ["train", "--data", str(data), "--out", str(tmp_path / "run"), "--teacher", str(teacher)]
    args += ["--config", str(tmp_path / "config.yaml"), "--max-steps", "2", "--loss", "jsd"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "trained 2 steps (online signal)" in result.output
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["loss"]["name"] == "jsd"


# ---------------------------------------------------------------------------- save and resume


@pytest.fixture(scope="module")
def small_teacher(tmp_path_factory):
    return save_teacher(
        tmp_path_factory.mktemp("teacher") / "t", models.tiny_qwen3_config() | {"vocab_size": 512}
    )


def _save_then_resume(tmp_path, overrides, teacher=None):
    """Two steps with a checkpoint after each, then a resumed third; the saved states."""
    data = save_dataset(random_rows(2), tmp_path / "data")
    out = tmp_path / "run"
    for steps, resume in ((2, False), (3, True)):
        config = make_config(
            tmp_path, f"training.max_steps={steps}", "training.save_steps=1", *overrides
        )
        train(config, data=data, out=out, teacher=teacher, resume=resume, progress=False)
    assert [r["step"] for r in metrics(out)] == [1, 2, 3]
    checkpoints = out / "checkpoints"
    assert not list(checkpoints.rglob("*.pkl"))  # nothing a resume would have to unpickle
    return {
        checkpoint_step(p): json.loads((p / STATE_FILE).read_text())
        for p in checkpoints.glob("checkpoint-*")
    }


def _registered(kind: str) -> list[str]:
    plugins.reset_plugin_manager()
    try:
        return plugins.available(kind)
    finally:
        plugins.reset_plugin_manager()


@pytest.mark.parametrize(
    ("kind", "name"),
    [("weighting", n) for n in _registered("weighting")]
    + [("loss", n) for n in _registered("loss")],
)
def test_every_registered_component_survives_save_and_resume(
    tmp_path, monkeypatch, small_teacher, kind, name
):
    # Before: the curriculum weighting's schedule (a lambda) broke the pickled checkpoint.
    restored = {}  # component type -> (the state saved, the state once restored)
    original = train_module.restore_component

    def checked_restore(component, saved):
        original(component, saved)
        restored[type(component)] = (saved, train_module.component_state(component))

    monkeypatch.setattr(train_module, "restore_component", checked_restore)
    signals = getattr(plugins.build("loss", name), "signals", ()) if kind == "loss" else ()
    overrides = [f"{kind}.name={name}"] + (["loss.name=ce"] if kind == "weighting" else [])
    teacher = str(small_teacher) if "distribution" in signals else None
    states = _save_then_resume(tmp_path, overrides, teacher)
    assert set(states) == {2, 3}  # save_total_limit: 2
    weighting = type(plugins.build("weighting", name if kind == "weighting" else "uniform"))
    loss = type(plugins.build("loss", name if kind == "loss" else "ce"))
    assert restored[weighting] == (states[2]["weighting"],) * 2  # loaded back as saved
    assert restored[loss] == (states[2]["loss"],) * 2


class Counting:
    """A third-party weighting and loss with state of every kind a checkpoint must keep."""

    class Weighting:
        def __init__(self):
            self.observed = 0
            self.seen = {1: 0.0}  # int keys: JSON alone would turn them into strings
            self.last = (0, "none")
            self.total = torch.zeros(2, 3, dtype=torch.float64)
            self.rule = lambda x: x  # not data: rebuilt from the options

        def weights(self, batch, state):
            return (batch["span_type"] > 0).float()

        def observe(self, metrics, state):
            self.observed += 1
            self.seen[self.observed] = float(self.observed)
            self.last = (self.observed, "step")
            self.total += 1

    class Loss:
        signals = ("labels",)

        def __init__(self):
            self.calls = 0

        def __call__(self, student_logp, teacher_logp):
            self.calls += 1
            return -(teacher_logp.exp() * student_logp).sum(-1)

        def state_dict(self):
            return {"calls": self.calls}

        def load_state_dict(self, state):
            self.calls = state["calls"]

    @hookimpl
    def register_weightings(self, register):
        register("counting", Counting.Weighting)

    @hookimpl
    def register_losses(self, register):
        register("counting", Counting.Loss)


def test_third_party_state_continues_after_resume(tmp_path):
    plugins.get_plugin_manager().add(Counting(), name="deepcoder-counting")
    states = _save_then_resume(tmp_path, ["weighting.name=counting", "loss.name=counting"])
    saved = states[3]["weighting"]["attributes"]
    weighting = {key: decode_state(value) for key, value in saved.items()}
    # Restored at step 2 and observed once more; without the restore it would count 1.
    assert weighting["observed"] == 3 and weighting["seen"] == {1: 1.0, 2: 2.0, 3: 3.0}
    assert weighting["last"] == (3, "step") and "rule" not in weighting
    total = weighting["total"]
    assert total.dtype == torch.float64 and torch.equal(
        total, torch.full((2, 3), 3.0, dtype=torch.float64)
    )
    calls = {step: decode_state(states[step]["loss"]["state_dict"])["calls"] for step in (2, 3)}
    assert calls[3] > calls[2] > 0  # counted on from the checkpoint, not from zero


def test_a_state_no_checkpoint_can_hold_fails_before_training(tmp_path):
    class Opaque(Counting.Loss):
        def state_dict(self):
            return {"handle": object()}

    class Plugin:
        @hookimpl
        def register_losses(self, register):
            register("opaque", Opaque)

    plugins.get_plugin_manager().add(Plugin(), name="deepcoder-opaque")
    data = save_dataset(random_rows(1), tmp_path / "data")
    config = make_config(tmp_path, "loss.name=opaque", "training.max_steps=1")
    with pytest.raises(TrainError, match=r"Opaque.state_dict\(\) holds a object"):
        train(config, data=data, out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_train_command_with_curriculum_saves_and_resumes(tmp_path):
    from click.testing import CliRunner

    from deepcoder_core.cli import cli

    data = save_dataset(random_rows(2), tmp_path / "data")
    args = ["train", "--data", str(data), "--out", str(tmp_path / "run"), "--loss", "ce"]
    args += ["--weighting", "curriculum", "--set", "student.tokenizer=qwen3"]
    args += ["--set", f"student.init.config={json.dumps(models.tiny_qwen3_config())}"]
    args += ["--set", "training.save_steps=1", "--set", "training.report_to=[]"]
    args += ["--set", "training.gradient_accumulation_steps=1"]
    first = CliRunner().invoke(cli, [*args, "--max-steps", "2"])
    assert first.exit_code == 0, first.output
    resumed = CliRunner().invoke(cli, [*args, "--max-steps", "3", "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert "trained 3 steps (labels signal)" in resumed.output
