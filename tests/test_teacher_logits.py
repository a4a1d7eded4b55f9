"""The sparse top-k teacher cache: contents, resume, fingerprints, and training from it."""

from __future__ import annotations

import json

import pytest
import torch

from deepcoder_core import models
from deepcoder_core.distill.teacher_logits import (
    CacheError,
    TeacherLogitsCache,
    cache_teacher_logits,
    load_processed,
)
from deepcoder_core.distill.train import train

from .test_train import (
    SMALL_VOCAB,
    make_config,
    metrics,
    random_rows,
    save_dataset,
    save_teacher,
)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def setup(tmp_path):
    data = save_dataset(random_rows(5), tmp_path / "data")
    teacher = save_teacher(tmp_path / "teacher", models.tiny_qwen3_config() | {"vocab_size": 512})
    config = make_config(tmp_path, "teacher_logits.shard_size=2", "teacher_logits.batch_size=2")
    return config, data, teacher


def test_cache_holds_the_teachers_top_k(tmp_path, setup):
    config, data, teacher = setup
    out = tmp_path / "cache"
    manifest = cache_teacher_logits(
        config, data=data, out=out, teacher=str(teacher), top_k=8, progress=False
    )
    assert manifest["complete"] and len(manifest["shards"]) == 3  # 5 examples, 2 per shard
    assert manifest["top_k"] == 8 and manifest["vocab_size"] == SMALL_VOCAB

    cache = TeacherLogitsCache(out)
    row = load_processed(data)[3]["input_ids"]
    indices, logprobs, tail = cache.example(3)
    assert indices.dtype == torch.int32 and indices.shape == (len(row) - 1, 8)
    model = models.load_causal_lm(teacher)
    logp = torch.log_softmax(model(torch.tensor([row])).logits[0, :-1].float(), -1)
    expected, expected_ids = torch.topk(logp, 8)
    assert torch.equal(indices.long(), expected_ids)
    torch.testing.assert_close(logprobs, expected, atol=2e-2, rtol=2e-3)  # stored as float16
    torch.testing.assert_close(tail, 1 - expected.exp().sum(-1), atol=1e-2, rtol=1e-2)


def test_cache_resumes_at_the_first_missing_shard(tmp_path, setup):
    config, data, teacher = setup
    out = tmp_path / "cache"
    cache_teacher_logits(config, data=data, out=out, teacher=str(teacher), top_k=4, progress=False)
    kept = out / "shard-00000.safetensors"
    before = kept.stat().st_mtime_ns
    (out / "shard-00001.safetensors").unlink()  # as if killed while writing shard 1
    manifest = cache_teacher_logits(
        config, data=data, out=out, teacher=str(teacher), top_k=4, progress=False
    )
    assert manifest["complete"] and (out / "shard-00001.safetensors").exists()
    assert kept.stat().st_mtime_ns == before  # finished shards are not recomputed


def test_stale_or_foreign_caches_are_refused(tmp_path, setup):
    config, data, teacher = setup
    out = tmp_path / "cache"
    cache_teacher_logits(config, data=data, out=out, teacher=str(teacher), top_k=4, progress=False)
    with pytest.raises(CacheError, match="another dataset, teacher or top_k"):
        cache_teacher_logits(
            config, data=data, out=out, teacher=str(teacher), top_k=8, progress=False
        )
    other = save_dataset(random_rows(5, seed=9), tmp_path / "other")
    with pytest.raises(CacheError, match="stale teacher-logit cache"):
        TeacherLogitsCache(out).check(load_processed(other))
    with pytest.raises(CacheError, match="stale"):
        train(config, data=other, out=tmp_path / "run", teacher_logits=out, progress=False)

    manifest = json.loads((out / "manifest.json").read_text())
    manifest["complete"] = False
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CacheError, match="incomplete"):
        TeacherLogitsCache(out)


def test_full_vocab_cache_gives_the_online_teachers_loss(tmp_path, setup):
    config, data, teacher = setup
    cache = tmp_path / "cache"
    cache_teacher_logits(
        config, data=data, out=cache, teacher=str(teacher), top_k=SMALL_VOCAB, progress=False
    )
    losses = {}
    for name, source in [
        ("online", {"teacher": str(teacher)}),
        ("cache", {"teacher_logits": cache}),
    ]:
        run_config = make_config(tmp_path, "training.max_steps=3", "training.batch_size=2")
        summary = train(run_config, data=data, out=tmp_path / name, progress=False, **source)
        assert summary["signal"] == ("online" if name == "online" else "topk")
        losses[name] = metrics(tmp_path / name)
    for online, cached in zip(losses["online"], losses["cache"], strict=True):
        assert cached["loss"] == pytest.approx(online["loss"], rel=2e-3)
        assert cached["divergence/action"] == pytest.approx(online["divergence/action"], rel=2e-3)


def test_teacher_logits_command(tmp_path, setup):
    from click.testing import CliRunner

    from deepcoder_core.cli import cli

    _, data, teacher = setup
    out = tmp_path / "cache"
    args = ["teacher-logits", "--data", str(data), "--teacher", str(teacher), "--out", str(out)]
    result = CliRunner().invoke(cli, [*args, "--top-k", "4"])
    assert result.exit_code == 0, result.output
    assert "top-4" in result.output and "5 examples" in result.output
    result = CliRunner().invoke(cli, [*args, "--top-k", "5"])
    assert result.exit_code == 2 and "another dataset, teacher or top_k" in result.output


def test_scoring_only_teacher_fills_the_same_cache(tmp_path, setup):
    """A teacher that only offers score() (a remote server) gives the white-box cache's top-k."""
    from deepcoder_core.distill.teacher_logits import topk_from_logits
    from deepcoder_core.protocols import TopK

    config, data, teacher_path = setup
    model = models.load_causal_lm(teacher_path)

    class RemoteTeacher:
        model = "remote-tiny"
        tokenizer = models.load_tokenizer(teacher_path)

        def score(self, token_ids, top_k):
            with torch.no_grad():
                logits = model(torch.tensor([token_ids])).logits[0]
            return TopK(*topk_from_logits(logits, top_k))

    remote = cache_teacher_logits(
        config, data=data, out=tmp_path / "remote", teacher=RemoteTeacher(), top_k=4, progress=False
    )
    assert remote["teacher"] == {"name": "object", "model": "remote-tiny", "hash": None}
    local = tmp_path / "local"
    cache_teacher_logits(
        config, data=data, out=local, teacher=str(teacher_path), top_k=4, progress=False
    )
    for index in range(5):
        a, b = (
            TeacherLogitsCache(tmp_path / "remote").example(index),
            TeacherLogitsCache(local).example(index),
        )
        assert torch.equal(a[0], b[0])
        torch.testing.assert_close(a[1], b[1], atol=1e-3, rtol=1e-3)
