"""The sparse top-k teacher cache: contents, resume, fingerprints, and training from it."""

from __future__ import annotations

import json

import pytest
import torch

from deepcoder_core import models
from deepcoder_core.distill.teacher_cache import TeacherLogitsCache
from deepcoder_core.distill.teacher_logits import CacheError, cache_teacher_logits, load_processed
from deepcoder_core.distill.train import train

from .test_train import (
    SMALL_VOCAB,
    make_config,
    metrics,
    random_rows,
    save_dataset,
    save_teacher,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture
def setup(tmp_path):
    data = save_dataset(random_rows(5), tmp_path / "data")
    teacher = save_teacher(tmp_path / "teacher", models.tiny_qwen3_config() | {"vocab_size": 512})
    config = make_config(tmp_path, "teacher_logits.shard_size=2", "teacher_logits.batch_size=2")
    return config, data, teacher


def test_cache_holds_the_teachers_top_k_at_the_positions_that_train(tmp_path, setup):
    config, data, teacher = setup
    out = tmp_path / "cache"
    manifest = cache_teacher_logits(
        config, data=data, out=out, teacher=str(teacher), top_k=8, progress=False
    )
    assert manifest["complete"] and len(manifest["shards"]) == 3  # 5 examples, 2 per shard
    assert manifest["top_k"] == 8 and manifest["vocab_size"] == SMALL_VOCAB
    assert manifest["format"] == "topk" and manifest["spans"] == ["reasoning", "action", "answer"]

    cache = TeacherLogitsCache(out)
    example = load_processed(data)[3]
    row, types = example["input_ids"], torch.tensor(example["span_type"])
    indices, logprobs, tail = cache.example(3)
    assert indices.dtype == torch.int32 and indices.shape == (len(row) - 1, 8)
    stored = torch.isin(types[1:], torch.tensor([1, 2, 4]))  # position i predicts token i + 1
    assert torch.equal(~torch.isnan(tail), stored)
    assert (indices[~stored] == -1).all() and torch.isneginf(logprobs[~stored]).all()
    assert manifest["positions"] == sum(
        int(torch.isin(torch.tensor(t[1:]), torch.tensor([1, 2, 4])).sum())
        for t in load_processed(data)["span_type"]
    )
    model = models.load_causal_lm(teacher)
    logp = torch.log_softmax(model(torch.tensor([row])).logits[0, :-1].float(), -1)[stored]
    expected, expected_ids = torch.topk(logp, 8)
    assert torch.equal(indices[stored].sort(-1).values.long(), expected_ids.sort(-1).values)
    exact = torch.cat([expected.exp(), 1 - expected.exp().sum(-1, keepdim=True)], -1)
    got = torch.cat([logprobs[stored].exp(), tail[stored, None]], -1)
    # the same ids in the same (most likely first) order, within the sqrt-domain quantizer
    order = expected_ids.argsort(-1)
    kept = indices[stored].long().argsort(-1)
    exact_by_id = torch.cat([exact[:, :-1].gather(1, order), exact[:, -1:]], -1)
    got_by_id = torch.cat([got[:, :-1].gather(1, kept), got[:, -1:]], -1)
    torch.testing.assert_close(got_by_id.sqrt(), exact_by_id.sqrt(), atol=2.5 / 255, rtol=0)
    kl = (exact_by_id * (exact_by_id.clamp_min(1e-30).log() - got_by_id.log())).sum(-1)
    assert float(kl.max()) <= manifest["codec"]["kl_bound"]


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
    with pytest.raises(CacheError, match="another dataset, teacher, format, k"):
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
    assert result.exit_code == 2 and "another dataset, teacher, format, k" in result.output


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
            TeacherLogitsCache(tmp_path / "remote").rows(index),
            TeacherLogitsCache(local).rows(index),
        )
        assert torch.equal(a.positions, b.positions)
        assert torch.equal(a.indices.sort(-1).values, b.indices.sort(-1).values)
        torch.testing.assert_close(a.logprobs.exp(), b.logprobs.exp(), atol=2e-2, rtol=0)


def test_sampled_cache_stores_draws_and_trains(tmp_path, setup):
    config, data, teacher = setup
    sampled = make_config(
        tmp_path,
        "teacher_logits.format=sampled",
        "teacher_logits.samples=6",
        "teacher_logits.shard_size=2",
        "loss.temperature=2.0",
        "training.max_steps=2",
    )
    out = tmp_path / "sampled"
    manifest = cache_teacher_logits(
        sampled, data=data, out=out, teacher=str(teacher), progress=False
    )
    assert manifest["format"] == "sampled" and manifest["k"] == 6
    assert manifest["temperature"] == 2.0 and manifest["top_k"] is None
    again = cache_teacher_logits(
        sampled, data=data, out=tmp_path / "again", teacher=str(teacher), progress=False
    )
    cache = TeacherLogitsCache(out)
    for index in range(5):
        rows = cache.rows(index)
        assert torch.equal(rows.indices, TeacherLogitsCache(tmp_path / "again").rows(index).indices)
        assert torch.allclose(rows.logprobs.exp().sum(-1), torch.ones(len(rows.positions)))
        assert (rows.tail_mass == 0).all()
    assert again["fingerprint"] == manifest["fingerprint"]  # draws are seeded by it

    summary = train(sampled, data=data, out=tmp_path / "run", teacher_logits=out, progress=False)
    assert summary["signal"] == "topk" and summary["finite"]
    colder = make_config(tmp_path, "loss.temperature=1.0", "training.max_steps=1")
    with pytest.raises(CacheError, match="drawn at temperature 2.0"):
        train(colder, data=data, out=tmp_path / "cold", teacher_logits=out, progress=False)


def test_span_set_follows_the_weighting_and_training_refuses_what_is_missing(tmp_path, setup):
    config, data, teacher = setup
    default = tmp_path / "default"
    cache_teacher_logits(config, data=data, out=default, teacher=str(teacher), progress=False)
    wants_observation = make_config(
        tmp_path, 'weighting.options={"lambdas": {"observation": 1.0}}', "training.max_steps=1"
    )
    with pytest.raises(CacheError, match="also weights observation"):
        train(wants_observation, data=data, out=tmp_path / "r1", teacher_logits=default)
    wider = cache_teacher_logits(
        wants_observation, data=data, out=tmp_path / "wide", teacher=str(teacher), progress=False
    )
    assert wider["spans"] == ["reasoning", "action", "observation", "answer"]
    answer_only = make_config(tmp_path, "teacher_logits.spans=[answer]")
    narrow = cache_teacher_logits(
        answer_only, data=data, out=tmp_path / "narrow", teacher=str(teacher), progress=False
    )
    assert narrow["spans"] == ["answer"] and narrow["positions"] < wider["positions"]
    assert len({narrow["fingerprint"], wider["fingerprint"]}) == 2


def test_a_weight_on_a_position_the_cache_lacks_stops_training(tmp_path, setup):
    """A weighting the span probe misjudges (it weights observations of low confidence only)
    is caught by the trainer, batch by batch."""
    from deepcoder_core import hookimpl, plugins, span_weights

    class Doubtful:
        def weights(self, batch, state):
            doubt = (batch["span_confidence"] < 0.9).float()
            return span_weights(batch["span_type"], {1: 1.0, 2: 1.0, 4: 1.0, 3: 0.0}) + doubt

    class Plugin:
        @hookimpl
        def register_weightings(self, register):
            register("doubtful", Doubtful)

    plugins.get_plugin_manager().add(Plugin(), name="deepcoder-doubtful")
    _, _, teacher = setup
    rows = random_rows(2)
    for row in rows:
        row["span_confidence"] = [0.5 if t == 3 else 1.0 for t in row["span_type"]]
    data = save_dataset(rows, tmp_path / "doubt")
    config = make_config(tmp_path, "weighting.name=doubtful", "training.max_steps=1")
    cache = tmp_path / "cache"
    manifest = cache_teacher_logits(config, data=data, out=cache, teacher=str(teacher))
    assert "observation" not in manifest["spans"]
    with pytest.raises(CacheError, match="span type observation have weight > 0"):
        train(config, data=data, out=tmp_path / "run", teacher_logits=cache, progress=False)


def test_corrupt_or_old_caches_are_refused_naming_the_file(tmp_path, setup):
    config, data, teacher = setup
    out = tmp_path / "cache"
    cache_teacher_logits(config, data=data, out=out, teacher=str(teacher), progress=False)
    shard = out / "shard-00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:-40])
    cache = TeacherLogitsCache(out)
    cache.rows(0)  # other shards still read
    with pytest.raises(CacheError, match="shard-00001.safetensors: unreadable shard"):
        cache.rows(2)

    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps(manifest)[:-5])
    with pytest.raises(CacheError, match="manifest.json: unreadable manifest"):
        TeacherLogitsCache(out)
    manifest_path.write_text(json.dumps(manifest | {"schema": 1}))
    with pytest.raises(CacheError, match="schema-1 cache.*delete the folder and re-run"):
        TeacherLogitsCache(out)
    with pytest.raises(CacheError, match="schema-1 cache"):
        cache_teacher_logits(config, data=data, out=out, teacher=str(teacher), progress=False)


def test_privileged_rows_are_scored_with_the_teachers_own_prefix(tmp_path, setup):
    config, _, teacher = setup
    rows = random_rows(2)
    plain = rows[0]["input_ids"][:4]  # the row's "system message": its first 4 tokens (type 0)
    prefix = [11, 12, 13, 14, 15, 16, 17]  # what the teacher read instead
    for row in rows:
        row["input_ids"][:4] = plain
        row["teacher_prefix"], row["teacher_prefix_replaces"] = [], 0
    rows[1]["teacher_prefix"], rows[1]["teacher_prefix_replaces"] = prefix, 4
    data = save_dataset(rows, tmp_path / "privileged")
    out = tmp_path / "cache"
    cache_teacher_logits(config, data=data, out=out, teacher=str(teacher), top_k=8, progress=False)
    cache = TeacherLogitsCache(out)
    model = models.load_causal_lm(teacher)
    for index, view in ((0, rows[0]["input_ids"]), (1, prefix + rows[1]["input_ids"][4:])):
        indices, _, tail = cache.example(index)
        stored = ~torch.isnan(tail)
        shift = len(view) - len(rows[index]["input_ids"])
        logits = model(torch.tensor([view])).logits[0, shift:-1].float()
        expected = torch.topk(logits[stored], 8).indices.sort(-1).values
        assert torch.equal(indices[stored].long().sort(-1).values, expected)
    # the plain row's top-k is not what the privileged view gives
    privileged = model(torch.tensor([prefix + rows[0]["input_ids"][4:]])).logits[0, 3:-1]
    indices, _, tail = cache.example(0)
    stored = ~torch.isnan(tail)
    other = torch.topk(privileged[stored].float(), 8).indices.sort(-1).values
    assert not torch.equal(indices[stored].long().sort(-1).values, other)
