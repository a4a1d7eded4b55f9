"""How many agents run at once, and how their teacher calls are made: the two schedules.

Generation and evaluation both hand their ``(problem, sample)`` jobs to :func:`run_agents`,
which starts an :class:`~deepcoder_core.agent.AgentRun` for each and picks the schedule by
what the teacher offers:

- :func:`run_concurrent` for remote teachers (Groq, OpenAI-compatible servers, replay): each
  agent runs in a thread of a pool of ``concurrency``, so that many requests are in flight;
- :func:`run_batched` for local teachers with ``complete_batch`` (``hf``): all active agents
  step together, one batched generate call per step, finished agents replaced at once.

A teacher error ends only its own trajectory (recorded as ``teacher error (<kind>): ...``);
a fatal :class:`~deepcoder_core.teachers.TeacherError` (bad key, unknown model) is raised to
the caller, which says what stopped (``GenerationError``, ``EvalError``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..teachers import TeacherError
from .loop import AgentRun, check_prefill

if TYPE_CHECKING:
    from ..config import AgentConfig
    from ..problems import Problem

Start = Callable[[Any, int], AgentRun]
"""``start(problem, sample)``: a new run."""
Record = Callable[[AgentRun], None]
"""``record(run)``: called in the caller's thread with each finished run (writes its line)."""


def teacher_error_text(exc: BaseException) -> str:
    """The ``error`` of a trajectory that a teacher failure ended."""
    kind = exc.kind if isinstance(exc, TeacherError) else type(exc).__name__
    return f"teacher error ({kind}): {exc}"


def _fatal(exc: BaseException) -> bool:
    return isinstance(exc, TeacherError) and exc.fatal


def run_agents(
    teacher: Any,
    jobs: Iterable[tuple[Problem, int]],
    record: Record,
    *,
    info: dict[str, Any],
    tools: dict[str, Any],
    agent: AgentConfig,
    concurrency: int,
    seed: int,
    id_prefix: str = "",
    failed_ids: set[str] | None = None,
    scaffold: bool = True,
    exclude: set[str] | None = None,
) -> None:
    """Run one agent per ``(problem, sample)`` of ``jobs`` to its end; batched if the teacher
    has ``complete_batch``, else threaded.

    ``info`` is the trajectories' ``teacher`` field; its ``params`` are the sampling params
    sent with every call. Trajectory ids are ``<id_prefix><problem_id>#<sample>``. The ids of
    runs a teacher error ended are added to ``failed_ids``. ``scaffold`` False: the agents act
    without ``agent.scaffold`` (students); ``exclude``: problem ids no exemplar may come from.
    """

    def start(problem: Problem, sample: int) -> AgentRun:
        trajectory_id = f"{id_prefix}{problem.id}#{sample}"
        return AgentRun(
            problem,
            info,
            tools,
            agent,
            sample=sample,
            trajectory_id=trajectory_id,
            scaffold=scaffold,
            exclude=exclude,
        )

    if scaffold:
        check_prefill(teacher, agent, info.get("plugin"))
    work = Work(
        teacher=teacher,
        pending=deque(jobs),
        start=start,
        record=record,
        params=info["params"],
        concurrency=concurrency,
        failed_ids=set() if failed_ids is None else failed_ids,
    )
    if callable(getattr(teacher, "complete_batch", None)):
        run_batched(work, seed=seed)
    else:
        run_concurrent(work)


@dataclass
class Work:
    """What a schedule drives: the teacher, the ``(problem, sample)`` jobs left, how to start
    a run and record a finished one, the sampling params, how many agents at once, and the
    set that collects the ids of runs a teacher error ended."""

    teacher: Any
    pending: deque
    start: Start
    record: Record
    params: dict[str, Any]
    concurrency: int
    failed_ids: set[str]


def run_concurrent(work: Work) -> None:
    """One thread per agent, ``concurrency`` at a time; records are written from this thread.

    A teacher with ``replays`` also gets ``key=(problem_id, sample, step)`` with each call.
    """
    keyed = bool(getattr(work.teacher, "replays", False))

    def drive(problem: Any, sample: int) -> AgentRun:
        run = work.start(problem, sample)
        while not run.done:
            extra = {"key": (problem.id, sample, len(run.steps))} if keyed else {}
            request = run.request()
            params = {**work.params, **request.params, **extra}
            try:
                completions = [
                    work.teacher.complete(request.messages, **params)
                    for _ in range(request.samples)
                ]
            except Exception as exc:  # any teacher fault is this trajectory's error
                if _fatal(exc):
                    raise
                work.failed_ids.add(run.id)
                run.fail(teacher_error_text(exc))
                break
            run.take(completions)
        run.finish()  # checks the answer here, in the agent's thread, not the writer's
        return run

    with ThreadPoolExecutor(max_workers=work.concurrency, thread_name_prefix="agent") as pool:
        running: set[Future[AgentRun]] = set()
        try:
            while work.pending or running:
                while work.pending and len(running) < work.concurrency:
                    running.add(pool.submit(drive, *work.pending.popleft()))
                finished, running = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    work.record(future.result())  # a fatal TeacherError is raised here
        finally:
            for future in running:
                future.cancel()


def run_batched(work: Work, *, seed: int) -> None:
    """All active agents step together: one ``complete_batch`` call per step of the batch.

    With skeleton decoding agents ask for different parts (a thought line, a code block) with
    different stops: one batched call per kind of part, each sample a row of it. Tools of a
    step run in a pool of ``min(8, concurrency)`` threads.
    """
    import torch

    torch.manual_seed(seed)  # sampling in one process: seed once, not per call
    active: list[Any] = []
    with ThreadPoolExecutor(
        max_workers=min(8, work.concurrency), thread_name_prefix="tool"
    ) as pool:
        while work.pending or active:
            while work.pending and len(active) < work.concurrency:
                active.append(work.start(*work.pending.popleft()))
            replies, error = _batched_replies(work, active)
            if replies is None:
                for run in active:
                    work.failed_ids.add(run.id)
                    run.fail(teacher_error_text(error))
            else:
                # Tools (the sandbox) run in parallel; the model is idle meanwhile anyway.
                list(pool.map(lambda rc: rc[0].take(rc[1]), zip(active, replies, strict=True)))
            finished = [run for run in active if run.done]
            active = [run for run in active if not run.done]
            for run in pool.map(lambda r: (r.finish(), r)[1], finished):
                work.record(run)


def _batched_replies(work: Work, active: list[Any]) -> tuple[list[Any] | None, Any]:
    """Each active run's replies to its request, from one ``complete_batch`` per group of
    requests with the same params; ``(None, error)`` if a non-fatal teacher fault hit."""
    requests = [run.request() for run in active]
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, request in enumerate(requests):
        groups.setdefault(request.key(), []).append(i)
    replies: list[list[Any]] = [[] for _ in active]
    for members in groups.values():
        params = {**work.params, **requests[members[0]].params}
        rows = [i for i in members for _ in range(requests[i].samples)]
        try:
            completions = work.teacher.complete_batch(
                [requests[i].messages for i in rows], **params
            )
        except Exception as exc:  # a local model fault fails this batch's trajectories only
            if _fatal(exc):
                raise
            return None, exc
        for i, completion in zip(rows, completions, strict=True):
            replies[i].append(completion)
    return replies, None
