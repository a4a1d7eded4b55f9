"""On-policy distillation: the schedule, rollouts through the real sandbox, the scoring check."""

from __future__ import annotations

import json

import pytest

from deepcoder_core import models
from deepcoder_core.distill.on_policy import (
    TrainError,
    check_scorer,
    horizon,
    on_policy_count,
    on_policy_step,
    trim_rollouts,
)
from deepcoder_core.distill.teacher_logits import ScoringTeacher
from deepcoder_core.distill.train import train

from .test_train import make_config, metrics, qwen3_example, save_dataset, save_teacher

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.mark.parametrize(
    ("fraction", "expected"),
    [(0.0, []), (1.0, [1, 2, 3, 4, 5, 6]), (0.5, [2, 4, 6]), (1 / 3, [3, 6])],
)
def test_schedule_takes_exactly_the_share_of_steps(fraction, expected):
    chosen = [s for s in range(1, 7) if on_policy_step(s, fraction)]
    assert chosen == expected
    assert on_policy_count(6, fraction) == len(expected)


def test_horizon_grows_from_first_to_last_step(tmp_path):
    config = make_config(tmp_path, "training.max_steps=5", "training.on_policy.horizon=[2,6]")
    assert [horizon(config, s) for s in range(1, 6)] == [2, 3, 4, 5, 6]


def test_trim_rollouts_keeps_the_steps_up_to_the_checkpoint(tmp_path):
    path = tmp_path / "rollouts.jsonl"
    lines = [json.dumps({"id": f"r{s}", "on_policy": {"step": s}}) for s in (1, 2, 3)]
    path.write_text("\n".join(lines) + "\n" + '{"id": "cut", "on_pol')
    trim_rollouts(path, 2)
    assert [json.loads(x)["id"] for x in path.read_text().splitlines()] == ["r1", "r2"]


def test_a_teacher_that_cannot_score_is_named_before_training(tmp_path):
    class NoLogprobs:
        def score(self, token_ids, top_k=64):
            raise RuntimeError("400: logprobs are not supported")

    scorer = ScoringTeacher(NoLogprobs(), {"name": "groq", "model": "m", "hash": None})
    tokenizer = models.load_tokenizer(models.qwen3_tokenizer_path())
    with pytest.raises(TrainError, match="teacher 'groq' cannot score tokens.*400"):
        check_scorer(scorer, 8, tokenizer)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("on_policy")
    data = save_dataset([qwen3_example()] * 2, root / "data")
    teacher = save_teacher(root / "teacher", models.tiny_qwen3_config())
    return data, teacher


ROLLOUT = (
    "training.on_policy.rollouts=2",
    "agent.max_steps=2",
    "agent.max_new_tokens=16",
    "generation.limit=2",
)


def test_fraction_zero_is_off_policy_training_exactly(tmp_path, tiny):
    data, teacher = tiny
    model = models.tiny_qwen3_config()
    runs = []
    for name, extra in (("plain", ()), ("zero", ("training.on_policy.fraction=0", *ROLLOUT))):
        config = make_config(tmp_path, "training.max_steps=3", *extra, model=model)
        train(config, data=data, out=tmp_path / name, teacher=str(teacher), progress=False)
        runs.append(metrics(tmp_path / name))
    assert [r["loss"] for r in runs[0]] == [r["loss"] for r in runs[1]]
    assert not (tmp_path / "zero" / "rollouts.jsonl").exists()


def test_on_policy_steps_train_on_sandboxed_student_rollouts(tmp_path, tiny):
    data, teacher = tiny
    config = make_config(
        tmp_path,
        "training.max_steps=2",
        "training.on_policy.fraction=0.5",
        *ROLLOUT,
        model=models.tiny_qwen3_config(),
    )
    out = tmp_path / "out"
    summary = train(config, data=data, out=out, teacher=str(teacher), progress=False)
    lines = metrics(out)
    assert "on_policy_steps" not in lines[0]  # step 1 is offline
    assert lines[1]["on_policy_steps"] == 1
    for key in ("rollout/format_error_rate", "time/rollout", "time/scoring", "time/update"):
        assert key in lines[1]
    assert "tokens/observation" not in lines[1]  # observations are masked from the loss
    rollouts = [json.loads(x) for x in (out / "rollouts.jsonl").read_text().splitlines()]
    assert len(rollouts) == 2
    assert all(r["id"].startswith("step2/") and r["on_policy"]["step"] == 2 for r in rollouts)
    assert all(r["teacher"]["plugin"] == "student" for r in rollouts)
    assert summary["on_policy"]["steps"] == 1
    assert summary["on_policy"]["loss"] == "reverse_kl"
    assert (out / "plots" / "rollouts.png").is_file()


def test_reverse_kl_gradient_on_a_fixed_rollout_matches_float64(tmp_path, tiny):
    """A fixed rollout, labeled and teacher-scored by the rollout path, then the engine's
    reverse KL and its gradient against a float64 reference over the k ids + tail buckets."""
    import torch

    from deepcoder_core.distill.data import positions, topk_for_student
    from deepcoder_core.distill.divergences import TAIL_FLOOR
    from deepcoder_core.distill.engine import distill_loss
    from deepcoder_core.distill.on_policy import RolloutSource, RolloutStats
    from deepcoder_core.distill.teacher_logits import load_teacher
    from deepcoder_core.plugins import build

    from .trajectory_factory import trajectory

    _, teacher_path = tiny
    config = make_config(tmp_path, "training.on_policy.fraction=1", "training.on_policy.top_k=8")
    tokenizer = models.load_tokenizer(models.qwen3_tokenizer_path())
    source = RolloutSource(
        config,
        model=None,  # no decoding here: the rollout is given
        tokenizer=tokenizer,
        scorer=load_teacher(config, str(teacher_path)),
        weighting=build("weighting", "uniform"),
        out=tmp_path,
    )
    rows = source.label([trajectory(0, steps=2, success=False)])
    assert len(rows) == 1
    source.score(rows, RolloutStats())
    batch = source.collate(rows)
    keep = positions(batch)
    stored = batch["topk_stored"][keep]
    span = batch["span_type"][:, 1:][keep][stored]
    assert stored.any() and not (span == 3).any()  # observations are never scored
    vocab = models.tiny_qwen3_config()["vocab_size"]  # the teacher's own width: no filler ids
    rows_at = torch.arange(min(32, span.shape[0]))  # enough positions, float64 logits stay small
    span = span[rows_at]
    topk = topk_for_student(
        batch["topk_indices"][keep][stored][rows_at],
        batch["topk_logprobs"][keep][stored][rows_at],
        batch["topk_tail"][keep][stored][rows_at],
        vocab,
        vocab=vocab,
    )
    assert bool((topk.logprobs > float("-inf")).all())  # real teacher entries only
    torch.manual_seed(0)
    logits = torch.randn(span.shape[0], vocab, dtype=torch.float32, requires_grad=True)
    out = distill_loss(
        build("loss", "reverse_kl"),
        span_type=span,
        student_logits=logits,
        weights=torch.ones(span.shape[0]),
        teacher_topk=topk,
        temperature=1.0,
        chunk_size=64,
    )
    out.loss.backward()

    z = logits.detach().double().requires_grad_(True)
    q = torch.softmax(z, dim=-1)
    ids = topk.indices.long()
    q_k = q.gather(1, ids)
    q_tail = (1 - q_k.sum(-1)).clamp_min(TAIL_FLOOR)
    p_k = topk.logprobs.double().exp()
    p_tail = topk.tail_mass.double().clamp_min(TAIL_FLOOR)
    terms = torch.where(q_k > 0, q_k * (q_k.log() - p_k.log()), torch.zeros_like(q_k))
    reference = (terms.sum(-1) + q_tail * (q_tail.log() - p_tail.log())).mean()
    reference.backward()
    assert float(out.loss.detach()) == pytest.approx(float(reference.detach()), rel=1e-4)
    torch.testing.assert_close(logits.grad.double(), z.grad, rtol=1e-3, atol=1e-7)


def test_a_fake_sglang_server_scores_the_rollout_tokens(tmp_path, httpserver):
    """The rollout scoring path over SGLang's native /generate (input_top_logprobs)."""
    from werkzeug import Response

    from deepcoder_core.distill.on_policy import RolloutSource, RolloutStats
    from deepcoder_core.plugins import build

    from .trajectory_factory import trajectory

    calls = []

    def generate(request):
        body = json.loads(request.data)
        ids, k = body["input_ids"], body["top_logprobs_num"]
        calls.append(len(ids))

        def row(pos):  # the distribution of token `pos`: ids 10·pos + j
            return [[-0.1 * (j + 1) - 0.001 * pos, 10 * pos + j, "t"] for j in range(k)]

        meta = {
            "input_top_logprobs": [None] + [row(p) for p in range(1, len(ids))],
            "output_top_logprobs": [row(len(ids))],
        }
        return Response(
            json.dumps({"text": "x", "meta_info": meta}), content_type="application/json"
        )

    httpserver.expect_request("/generate", method="POST").respond_with_handler(generate)
    plugin = build("teacher", "openai", base_url=httpserver.url_for("/v1"), model="m")
    scorer = ScoringTeacher(plugin, {"name": "openai", "model": "m", "hash": None})
    config = make_config(tmp_path, "training.on_policy.fraction=1", "training.on_policy.top_k=3")
    tokenizer = models.load_tokenizer(models.qwen3_tokenizer_path())
    check_scorer(scorer, 3, tokenizer)  # the capability probe goes through the same endpoint
    source = RolloutSource(
        config,
        model=None,
        tokenizer=tokenizer,
        scorer=scorer,
        weighting=build("weighting", "uniform"),
        out=tmp_path,
    )
    rows = source.label([trajectory(1, steps=2, success=True)])
    source.score(rows, RolloutStats())
    batch = source.collate(rows)
    stored = batch["topk_stored"][0].nonzero().flatten()
    assert calls[-1] == len(rows[0]["input_ids"]) and stored.numel() > 0
    # position i predicts token i + 1: SGLang's entry i + 1
    expected = [[10 * (int(i) + 1) + j for j in range(3)] for i in stored]
    assert batch["topk_indices"][0, stored].tolist() == expected
    assert not batch["topk_stored"][0][batch["span_type"][0, 1:] == 3].any()


def test_a_killed_on_policy_run_resumes_without_repeating_or_losing_steps(
    tmp_path, tiny, monkeypatch
):
    from deepcoder_core.distill.trainer import DistillTrainer

    data, teacher = tiny
    overrides = (
        "training.max_steps=4",
        "training.save_steps=2",
        "training.on_policy.fraction=0.5",
        *ROLLOUT,
    )
    model = models.tiny_qwen3_config()

    def run(out, resume=False):
        config = make_config(tmp_path, *overrides, model=model)
        train(config, data=data, out=out, teacher=str(teacher), resume=resume, progress=False)

    def rollouts(out):
        lines = (out / "rollouts.jsonl").read_text().splitlines()
        return [
            (r["id"], r["on_policy"]["step"], r["final_answer"]) for r in map(json.loads, lines)
        ]

    run(tmp_path / "whole")
    original = DistillTrainer.end_window

    def killed_at_step_4(self):
        if self.state.global_step == 4:
            raise KeyboardInterrupt  # after step 4's rollouts were written, before its checkpoint
        original(self)

    cut = tmp_path / "cut"
    monkeypatch.setattr(DistillTrainer, "end_window", killed_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        run(cut)
    assert {step for _, step, _ in rollouts(cut)} == {2, 4}
    monkeypatch.setattr(DistillTrainer, "end_window", original)
    run(cut, resume=True)
    assert rollouts(cut) == rollouts(tmp_path / "whole")  # step 4 once, the same rollouts
    expected, resumed = metrics(tmp_path / "whole"), metrics(cut)
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    for a, b in zip(expected, resumed, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-6)
