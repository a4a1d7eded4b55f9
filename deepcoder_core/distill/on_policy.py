"""On-policy distillation: batches of the student's own agent trajectories, graded by the teacher.

Off-policy training reads the teacher's trajectories; at test time the student meets the
states its own mistakes lead to, and over agent steps those compound. With
``training.on_policy.fraction`` = λ > 0, a share λ of the optimizer steps instead trains on
fresh *rollouts*: the current student runs the ReAct agent with the real tools (in the
sandbox), the rollouts are span-labeled by the same processing worker as offline data, and
the teacher scores every student token (top-k plus tail, as in the cache). The loss
(``on_policy.loss``, reverse KL by default) then pulls the student's distribution at its
own tokens towards the teacher's:

    L = sum_t w_t * KL(q_t || p_t) / sum_t w_t,    x ~ q (the student's samples)

- GKD (Agarwal et al., ICLR 2024): a share λ of student-generated sequences.
- MiniLLM (Gu et al. 2024), on-policy distillation of Qwen3's small models and Thinking
  Machines (2025): per-token reverse KL on the student's samples.

Which steps are on-policy is a fixed schedule, no random draw: step ``s`` (1-based) is on
policy when ``floor(s·λ) > floor((s-1)·λ)``, so λ = 0 never is (today's training exactly),
λ = 1 always is, and λ = 1/2 takes every second step. Observations are masked as offline
(weight 0). Gates (``on_policy.gate``), for tool-using agents where a bad call cascades:

- ``tool_error``: no loss after the first failed tool call (the states that follow are the
  failure's, not the task's);
- ``divergence`` (after SOD, 2026): each agent step weighted by its estimated reverse KL
  ``mean_t (log q(x_t) - log p(x_t))`` relative to the rollout batch's mean, clipped to
  [1/4, 4], so the steps where the student strays most weigh most.

``on_policy.horizon: [first, last]`` grows ``agent.max_steps`` linearly over training (after
TCOD, 2026). Rollouts are appended to ``<out>/rollouts.jsonl`` as trajectory records with an
``on_policy`` field (step, teacher's mean log-probability of the student's tokens per span);
a resumed run drops the lines past its checkpoint and redoes those steps with the same seeds.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Config
from ..io import JsonlWriter, atomic_write_text, jsonl_lines
from ..protocols import SPAN_NAMES, SpanType
from .cache_spans import stored_positions, stored_spans
from .errors import CacheError, TrainError
from .signals import check_signal
from .teacher_logits import (
    Scoring,
    ScoringTeacher,
    WhiteBoxTeacher,
    load_teacher,
    score_examples,
    teacher_view,
)

ROLLOUTS = "rollouts.jsonl"
GATE_CLIP = (0.25, 4.0)  # the divergence gate's step weights relative to the batch mean


def on_policy_step(step: int, fraction: float) -> bool:
    """Whether optimizer step ``step`` (1-based) trains on fresh rollouts: exactly a share
    ``fraction`` of the steps, evenly spread."""
    return math.floor(step * fraction + 1e-9) > math.floor((step - 1) * fraction + 1e-9)


def on_policy_count(step: int, fraction: float) -> int:
    """How many of steps 1..``step`` are on-policy (the index of the step's rollout round)."""
    return math.floor(step * fraction + 1e-9)


def horizon(config: Config, step: int) -> int:
    """``agent.max_steps`` for the rollouts of ``step``: linear from ``horizon[0]`` to
    ``horizon[1]`` over ``training.max_steps`` (``agent.max_steps`` without a horizon)."""
    op = config.training.on_policy
    if op.horizon is None:
        return config.agent.max_steps
    first, last = op.horizon
    total = config.training.max_steps
    share = (step - 1) / (total - 1) if total > 1 else 1.0
    return max(1, round(first + (last - first) * share))


def trim_rollouts(path: Path, step: int) -> None:
    """Keep the rollouts of steps ``<= step`` (the checkpoint a run resumes from), atomically."""
    if not path.exists():
        return
    kept = []
    for _, raw in jsonl_lines(path, errors=[]):  # a line cut by the kill: its step runs again
        try:
            record = json.loads(raw)
        except ValueError:
            continue
        if int((record.get("on_policy") or {}).get("step", step + 1)) <= step:
            kept.append(raw.decode("utf-8").rstrip("\n") + "\n")
    atomic_write_text(path, "".join(kept))


@dataclass
class RolloutStats:
    """One on-policy step's rollouts: counts and seconds (summed over steps between logs)."""

    rollouts: int = 0
    success: int = 0
    steps: int = 0
    tool_calls: int = 0
    tool_errors: int = 0
    format_errors: int = 0
    rows: int = 0
    rollout_seconds: float = 0.0
    scoring_seconds: float = 0.0
    on_policy_steps: int = 0
    gated_tokens: int = 0
    teacher_logprob: dict[str, list[float]] = field(default_factory=dict)  # span -> [sum, n]

    def add(self, other: RolloutStats) -> None:
        for f in dataclasses.fields(self):
            if f.name == "teacher_logprob":
                for span, (total, n) in other.teacher_logprob.items():
                    mine = self.teacher_logprob.setdefault(span, [0.0, 0])
                    mine[0] += total
                    mine[1] += n
            else:
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def logs(self) -> dict[str, float]:
        """The ``rollout/*`` and ``time/*`` entries of a metrics line."""
        if not self.on_policy_steps:
            return {}
        out = {
            "on_policy_steps": self.on_policy_steps,
            "rollout/success": round(self.success / max(1, self.rollouts), 4),
            "rollout/steps": round(self.steps / max(1, self.rollouts), 3),
            "rollout/format_error_rate": round(self.format_errors / max(1, self.steps), 4),
            "rollout/tool_error_rate": round(self.tool_errors / max(1, self.tool_calls), 4),
            "rollout/rows": self.rows,
            "rollout/gated_tokens": self.gated_tokens,
            "time/rollout": round(self.rollout_seconds, 3),
            "time/scoring": round(self.scoring_seconds, 3),
        }
        for span, (total, n) in self.teacher_logprob.items():
            out[f"rollout/teacher_logprob/{span}"] = round(total / max(1, n), 5)
        return out


class RolloutSource:
    """Fresh on-policy batches: student rollouts in the sandbox, span-labeled, teacher-scored.

    ``model``/``tokenizer``: the student being trained (decoded as it is, in eval mode, at
    each on-policy step); ``scorer``: a white-box teacher or one with ``score()``.
    """

    def __init__(
        self,
        config: Config,
        *,
        model: Any,
        tokenizer: Any,
        scorer: WhiteBoxTeacher | ScoringTeacher,
        weighting: Any,
        out: Path,
    ) -> None:
        from ..agent import build_tools
        from ..problems import resolve_problems
        from ..process.settings import Settings

        self.config = config
        self.model = model
        self.tokenizer = tokenizer
        self.scorer = scorer
        self.out = out
        op = config.training.on_policy
        self.fraction = op.fraction
        self.count = op.rollouts or (
            config.training.batch_size * config.training.gradient_accumulation_steps
        )
        source = op.problems or config.generation.problems
        self.problems = resolve_problems(source, "train", config.generation.limit)
        if not self.problems:
            raise TrainError(f"on-policy: no training problems in {source or 'bundled'}")
        self.tools = build_tools(config)
        # every rollout is trained on, failed or short: the offline filters do not apply
        settings = Settings.from_config(config)
        self.settings = dataclasses.replace(
            settings,
            successful_only=False,
            min_tokens=1,
            min_reasoning_ratio=0.0,
            min_action_ratio=0.0,
            agreement_sample=0,
            overflow="truncate",
        )
        self.spans = stored_spans(config, weighting)
        self.scoring = Scoring("topk", op.top_k)

    def due(self, step: int) -> bool:
        return on_policy_step(step, self.fraction)

    # ------------------------------------------------------------------ one step
    def batches(self, step: int, micro_batches: int) -> tuple[list[dict[str, Any]], RolloutStats]:
        """``micro_batches`` padded batches of this step's rollouts (fewer when rollouts give
        fewer rows; none when no rollout gave a row) and what happened."""
        stats = RolloutStats(on_policy_steps=1)
        started = time.perf_counter()
        records = self.rollout(step)
        stats.rollout_seconds = time.perf_counter() - started
        self._count(records, stats)
        started = time.perf_counter()
        rows = self.label(records)
        if rows:
            self.score(rows, stats)
        stats.scoring_seconds = time.perf_counter() - started
        stats.rows = len(rows)
        self._save(step, records, rows)
        if not rows:
            return [], stats
        size = max(1, math.ceil(len(rows) / micro_batches))
        return [self.collate(rows[i : i + size]) for i in range(0, len(rows), size)], stats

    def rollout(self, step: int) -> list[dict[str, Any]]:
        """The student's trajectories for this step: ``count`` agents, batched, real tools."""
        import torch

        from ..agent import run_agents
        from ..agent.loop import exemplar_prompt
        from ..plugins import build
        from ..react_format import STOP

        cfg = self.config
        round_ = on_policy_count(step, self.fraction) - 1
        jobs = []
        for i in range(self.count):
            k = round_ * self.count + i
            jobs.append((self.problems[k % len(self.problems)], k // len(self.problems)))
        agent = dataclasses.replace(cfg.agent, max_steps=horizon(cfg, step))
        params: dict[str, Any] = {
            "temperature": cfg.training.on_policy.temperature,
            "top_p": 1.0,  # the student's own distribution: what the loss is an expectation over
            "max_new_tokens": cfg.agent.max_new_tokens,
            "stop": list(STOP),
        }
        info = {"plugin": "student", "model": "on-policy student", "params": params}
        # a new decoder each round: its shared-prefix KV cache belongs to these weights
        student = build(
            "teacher",
            "hf",
            loaded=(self.model, self.tokenizer),
            max_batch_size=self.count,
            max_new_tokens=cfg.agent.max_new_tokens,
        )
        records: list[dict[str, Any]] = []
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.random.fork_rng(devices=[]):  # the Trainer's RNG stream stays its own
                run_agents(
                    student,
                    jobs,
                    lambda run: records.append(run.finish()),
                    info=info,
                    tools=self.tools,
                    agent=agent,
                    concurrency=self.count,
                    seed=(cfg.training.seed * 1_000_003 + step) % 2**32,
                    id_prefix=f"step{step}/",
                    scaffold=False,
                )
        finally:
            self.model.train(was_training)
        by_problem = {p.id: p for p in self.problems}
        for record in records:
            # the teacher grades with the context it acts in (privileged exemplars), as offline
            if cfg.agent.scaffold.privileged:
                problem = by_problem[record["problem_id"]]
                record["teacher_system"] = exemplar_prompt(problem, self.tools, cfg.agent)
        records.sort(key=lambda r: r["id"])  # finishing order depends on timing; ids do not
        return records

    def label(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The rollouts as training rows, by the processing worker that makes offline data."""
        from ..process.worker import get_worker

        if not records:
            return []
        columns = get_worker(self.settings).run([(i, i, r) for i, r in enumerate(records)])
        rows = []
        for i, reason in enumerate(columns["_drop"]):
            if reason:
                continue
            row = {name: columns[name][i] for name in columns if not name.startswith("_")}
            row["_index"] = columns["_index"][i]
            row["_failed_step"] = failed_steps(records[row["_index"]])
            rows.append(row)
        return rows

    def score(self, rows: list[dict[str, Any]], stats: RolloutStats) -> None:
        """Attach the teacher's top-k at the weighted positions of each row (``topk``) and the
        gate's per-token factors (``gate``)."""
        ids = [list(map(int, r["input_ids"])) for r in rows]
        where = [stored_positions(np.asarray(r["span_type"]), self.spans) for r in rows]
        prefixes = [(list(r["teacher_prefix"]), int(r["teacher_prefix_replaces"])) for r in rows]
        teacher_rows, teacher_where = teacher_view(ids, where, prefixes)
        try:
            entries = score_examples(self.scorer, teacher_rows, teacher_where, self.scoring)
        except (CacheError, TrainError):
            raise
        except Exception as exc:
            raise TrainError(
                f"on-policy: teacher '{self.scorer.identity['name']}' failed to score the "
                f"rollouts: {exc}"
            ) from exc
        gate = self.config.training.on_policy.gate
        student_logp = self._student_logprobs(ids, where) if gate == "divergence" else None
        for n, (row, at, entry) in enumerate(zip(rows, where, entries, strict=True)):
            indices, logprobs, tail = entry
            row["topk"] = (at, indices, logprobs, tail)
            token = np.asarray(ids[n])[at + 1]
            taken = _logprob_of(token, indices.numpy(), logprobs.numpy(), tail.numpy())
            spans = np.asarray(row["span_type"])[at + 1]
            for number in np.unique(spans):
                name = SPAN_NAMES[int(number)]
                chosen = taken[spans == number]
                total = stats.teacher_logprob.setdefault(name, [0.0, 0])
                total[0] += float(chosen.sum())
                total[1] += int(chosen.size)
            row["_teacher_logprob"] = taken
            row["gate"] = np.ones(len(ids[n]), dtype=np.float32)
            row["_step"] = _step_index(np.asarray(row["span_type"]))  # read by both gates
        if gate == "tool_error":
            self._gate_after_tool_error(rows, stats)
        elif gate == "divergence":
            assert student_logp is not None
            self._gate_by_divergence(rows, where, student_logp)

    def collate(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """A padded batch as the offline Collator makes it, with the teacher's rows attached."""
        import torch

        from .data import DIFFICULTY, Collator

        examples = [
            {
                "input_ids": r["input_ids"],
                "attention_mask": r["attention_mask"],
                "span_type": r["span_type"],
                "span_confidence": r["span_confidence"],
                "index": -1,  # not a dataset row
                "difficulty": DIFFICULTY.get(str(r.get("difficulty", "medium")).lower(), 1),
                "success": int(bool(r.get("success", True))),
            }
            for r in rows
        ]
        batch = Collator(0)(examples)
        length = batch["input_ids"].shape[1]
        k = self.scoring.k
        out = {
            "topk_indices": torch.full((len(rows), length - 1, k), -1, dtype=torch.long),
            "topk_logprobs": torch.full((len(rows), length - 1, k), float("-inf")),
            "topk_tail": torch.zeros(len(rows), length - 1),
            "topk_stored": torch.zeros(len(rows), length - 1, dtype=torch.bool),
            "gate": torch.zeros(len(rows), length),
            "on_policy": torch.ones(len(rows), dtype=torch.bool),
        }
        for i, row in enumerate(rows):
            at, indices, logprobs, tail = row["topk"]
            at = torch.as_tensor(at, dtype=torch.long)
            w = indices.shape[1]
            out["topk_indices"][i, at, :w] = indices.long()
            out["topk_logprobs"][i, at, :w] = logprobs.float()
            out["topk_tail"][i, at] = tail.float()
            out["topk_stored"][i, at] = True
            out["gate"][i, : len(row["gate"])] = torch.as_tensor(row["gate"])
        batch.update(out)
        return batch

    # ------------------------------------------------------------------ helpers
    def _count(self, records: list[dict[str, Any]], stats: RolloutStats) -> None:
        from ..evaluate.metrics import trajectory_measures
        from ..records import Trajectory

        for record in records:
            measures = trajectory_measures(Trajectory.from_dict(record), lambda s: 0)
            stats.rollouts += 1
            stats.success += int(bool(record.get("success")))
            stats.steps += measures["steps"]
            stats.tool_calls += measures["tool_calls"]
            stats.tool_errors += measures["tool_errors"]
            stats.format_errors += measures["format_errors"]

    def _save(self, step: int, records: list[dict[str, Any]], rows: list[dict[str, Any]]) -> None:
        """Append the step's rollouts with the teacher's scores of each (``deepcoder show
        trajectory`` reads them)."""
        scores: dict[int, dict[str, Any]] = {}
        for row in rows:
            taken = row["_teacher_logprob"]
            spans = np.asarray(row["span_type"])[row["topk"][0] + 1]
            per_span = {
                SPAN_NAMES[int(n)]: {
                    "tokens": int((spans == n).sum()),
                    "mean_logprob": round(float(taken[spans == n].mean()), 5),
                }
                for n in np.unique(spans)
            }
            scores[int(row["_index"])] = per_span
        with JsonlWriter(self.out / ROLLOUTS) as writer:
            for i, record in enumerate(records):
                summary = {
                    "step": step,
                    "trained": i in scores,
                    "teacher": scores.get(i, {}),
                    "teacher_plugin": self.scorer.identity.get("name"),
                }
                writer.write({**record, "on_policy": summary})

    def _student_logprobs(self, ids: list[list[int]], where: list[np.ndarray]) -> list[Any]:
        """The student's log-probability of its own token at each scored position (no grad)."""
        import torch

        out = []
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                for row, at in zip(ids, where, strict=True):
                    x = torch.tensor([row])
                    logits = self.model(input_ids=x.to(self.model.device)).logits[0].float()
                    logp = torch.log_softmax(logits, dim=-1).cpu()
                    pos = torch.as_tensor(at, dtype=torch.long)
                    out.append(logp[pos, x[0, pos + 1]].numpy())
        finally:
            self.model.train(was_training)
        return out

    def _gate_after_tool_error(self, rows: list[dict[str, Any]], stats: RolloutStats) -> None:
        """Weight 0 after the observation of the first failed tool call."""
        for row in rows:
            failed = row["_failed_step"]
            if failed is not None:
                after = row["_step"] > failed
                row["gate"][after] = 0.0
                stats.gated_tokens += int(after.sum())

    def _gate_by_divergence(
        self, rows: list[dict[str, Any]], where: list[np.ndarray], student_logp: list[Any]
    ) -> None:
        """Each agent step's weight: its mean ``log q - log p`` over the batch's mean step."""
        per_step: list[tuple[int, int, float]] = []  # (row, step, divergence)
        for n, (row, at) in enumerate(zip(rows, where, strict=True)):
            step = row["_step"][at + 1]
            estimate = student_logp[n] - row["_teacher_logprob"]
            for s in np.unique(step):
                per_step.append((n, int(s), float(estimate[step == s].mean())))
        if not per_step:
            return
        mean = float(np.mean([d for _, _, d in per_step]))
        if mean <= 0:
            return  # no step diverges on average: nothing to reweight by
        for n, s, d in per_step:
            rows[n]["gate"][rows[n]["_step"] == s] = float(np.clip(d / mean, *GATE_CLIP))


def _logprob_of(token: Any, indices: Any, logprobs: Any, tail: Any) -> Any:
    """The teacher's log-probability of each sampled token: its top-k entry, or for a token
    outside the top-k the log of the tail mass (an upper bound)."""
    hit = indices == token[:, None]
    inside = hit.any(axis=1)
    values = np.where(hit, logprobs, 0.0).sum(axis=1)
    outside = np.log(np.maximum(tail, 1e-12))
    return np.where(inside, values, outside).astype(np.float64)


def _step_index(span_type: Any) -> Any:
    """Per token: the agent step it belongs to, counting the observations before it."""
    observation = span_type == int(SpanType.OBSERVATION)
    starts = observation & ~np.concatenate([[False], observation[:-1]])
    return np.cumsum(starts) - starts  # an observation belongs to the step that called for it


def build_rollout_source(
    config: Config,
    *,
    model: Any,
    tokenizer: Any,
    weighting: Any,
    signal: Any,
    out: Path,
) -> tuple[RolloutSource | None, Any]:
    """The rollout source and the on-policy loss, or ``(None, None)`` when λ = 0.

    Checks before training starts that the teacher can score the student's tokens (the
    online teacher, the configured white-box teacher, or a server with ``score()``) and that
    the loss takes distributions, with one line naming what is missing.
    """
    from ..plugins import build

    op = config.training.on_policy
    if op.fraction <= 0:
        return None, None
    name = op.loss or config.loss.name
    loss_fn = build("loss", name)
    try:
        check_signal(loss_fn, {"distribution"})
    except Exception as exc:
        raise TrainError(f"training.on_policy.loss: {exc}") from None
    if signal.kind == "aligned":
        raise TrainError(
            "on-policy distillation needs a teacher with the student's tokenizer (it scores "
            "the student's own tokens); this teacher's tokenizer differs"
        )
    scorer = signal.teacher
    if scorer is None:
        try:
            scorer = load_teacher(config)
        except CacheError as exc:
            raise TrainError(
                f"on-policy distillation needs a teacher that scores the student's tokens: {exc}"
            ) from None
    check_scorer(scorer, op.top_k, tokenizer)
    source = RolloutSource(
        config, model=model, tokenizer=tokenizer, scorer=scorer, weighting=weighting, out=out
    )
    return source, loss_fn


def check_scorer(scorer: Any, top_k: int, tokenizer: Any) -> None:
    """One short score before training: a teacher that cannot give log-probabilities (Groq
    answers 400 for them) or reads other tokens stops here, named, instead of at the first
    on-policy step."""
    name = scorer.identity.get("name")
    theirs = getattr(scorer, "tokenizer", None)
    if theirs is not None and theirs.get_vocab() != tokenizer.get_vocab():
        raise TrainError(
            f"on-policy: teacher '{name}' has another tokenizer than the student; it scores the "
            "student's own token ids, so both must share one vocabulary"
        )
    if isinstance(scorer, WhiteBoxTeacher):
        return
    try:
        scorer.plugin.score([0, 1], top_k)
    except Exception as exc:
        raise TrainError(
            f"on-policy: teacher '{name}' cannot score tokens (top-{top_k} log-probabilities "
            f"of given token ids): {exc}"
        ) from None


def failed_steps(record: dict[str, Any]) -> int | None:
    """Among a trajectory's steps with an observation, the index of the first failed tool call."""
    with_observation = [s for s in record.get("steps", []) if s.get("observation") is not None]
    for i, step in enumerate(with_observation):
        if step.get("action") and step.get("observation_ok") is False:
            return i
    return None


__all__ = [
    "ROLLOUTS",
    "RolloutSource",
    "RolloutStats",
    "build_rollout_source",
    "check_scorer",
    "horizon",
    "on_policy_count",
    "on_policy_step",
    "trim_rollouts",
]
