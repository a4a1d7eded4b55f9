"""``accelerate launch`` with two CPU processes (gloo) matches one process on the same global batch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deepcoder_core import models

from .test_train import random_rows, save_dataset, save_teacher


def run_cli(tmp_path: Path, out: Path, processes: int, batch: int, data: Path, teacher: Path):
    config = {
        "loss": {"name": "kl"},
        "weighting": {"name": "uniform"},
        "student": {
            "tokenizer": "qwen3",
            "init": {
                "from_teacher": None,
                "config": models.tiny_qwen3_config(moe=True) | {"vocab_size": 512},
            },
        },
        "training": {
            "max_steps": 4,
            "batch_size": batch,
            "gradient_accumulation_steps": 2,
            "learning_rate": 0.01,
            "warmup_ratio": 0.0,
            "save_steps": 100,
            "report_to": [],
        },
    }
    path = tmp_path / f"config-{processes}.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
    }
    # --multi_gpu picks the torchrun launcher; the trainer falls back to gloo without a GPU.
    command = [sys.executable, "-m", "accelerate.commands.launch"]
    command += ["--multi_gpu"] if processes > 1 else ["--cpu"]
    command += ["--num_processes", str(processes), "--num_machines", "1", "--mixed_precision", "no"]
    command += ["--dynamo_backend", "no", "-m", "deepcoder_core", "train", "--data", str(data)]
    command += ["--out", str(out), "--teacher", str(teacher), "--config", str(path)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("accelerate") is None, reason="accelerate CLI not installed")
def test_two_processes_match_one(tmp_path):
    data = save_dataset(random_rows(8), tmp_path / "data")
    teacher = save_teacher(tmp_path / "teacher", models.tiny_qwen3_config() | {"vocab_size": 512})
    one = run_cli(tmp_path, tmp_path / "one", 1, 2, data, teacher)
    two = run_cli(tmp_path, tmp_path / "two", 2, 1, data, teacher)
    assert [r["step"] for r in two] == [1, 2, 3, 4]
    for a, b in zip(one, two, strict=True):
        # The router loss is taken per process batch, so the totals may differ slightly.
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-3)
        for span in ("reasoning", "action", "answer"):
            assert b[f"divergence/{span}"] == pytest.approx(a[f"divergence/{span}"], rel=1e-3)
            assert b[f"tokens/{span}"] == a[f"tokens/{span}"]  # both see the whole global batch
    assert "expert_load" in two[-1]
    print(json.dumps({"one_process": [r["loss"] for r in one], "two": [r["loss"] for r in two]}))
