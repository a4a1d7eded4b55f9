"""``deepcoder eval``: models from flags, problem sets from flags and config, the command.

``--model``, ``--server`` and ``--teacher`` become named teacher specs (:func:`model_specs`);
``--problems`` (repeatable) become one list of problems with the set each came from
(:func:`load_eval_problems`); :func:`deepcoder_core.evaluate.evaluate` does the rest.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..config import config_options
from .run import EvalError, evaluate

if TYPE_CHECKING:
    from ..config import Config
    from ..problems import Problem


def _split_named(value: str) -> tuple[str | None, str]:
    """``name=value`` -> (name, value); a bare value (or a path/URL holding "=") -> (None, value)."""
    head, sep, tail = value.partition("=")
    if sep and head and "/" not in head and ":" not in head:
        return head, tail
    return None, value


def server_spec(url: str, thinking: bool | None) -> dict[str, Any]:
    """The ``openai`` teacher spec for a server URL; the model id comes from ``/v1/models``."""
    from urllib.parse import urlsplit

    from ..serve import served_model

    url = url.rstrip("/")
    if not url.endswith("/v1"):
        url += "/v1"
    parts = urlsplit(url)
    if not parts.hostname or not parts.port:
        raise EvalError(f"--server {url}: expected http://HOST:PORT[/v1]")
    model = served_model(parts.hostname, parts.port, "")
    if not model:
        raise EvalError(
            f"--server {url}: no answer from {url}/models; is the server running? "
            "(`deepcoder server status`)"
        )
    options: dict[str, Any] = {"base_url": url, "model": model}
    if thinking is not None:
        options["chat_template_kwargs"] = {"enable_thinking": thinking}
    return {"teacher": "openai", "options": options}


LOCAL_RUNTIME = {
    "hf": ("device", "dtype", "max_batch_size"),
    "ct2": ("device", "compute_type", "max_batch_size", "threads"),
}
"""The local engines a model folder can be evaluated with, and the options of the configured
teacher's engine that a model under evaluation runs with."""


def local_model_spec(config: Config, path: str, thinking: bool | None = None) -> dict[str, Any]:
    """The teacher spec of a local model folder: the configured teacher's local engine (``hf``
    or ``ct2``; ``hf`` for any other teacher), with its device, precision and batch size."""
    engine = config.teacher.name if config.teacher.name in LOCAL_RUNTIME else "hf"
    runtime = config.teacher.options if engine == config.teacher.name else {}
    options: dict[str, Any] = {
        "model": path,
        **{k: v for k, v in runtime.items() if k in LOCAL_RUNTIME[engine]},
    }
    if thinking is not None:
        options["chat_template_kwargs"] = {"enable_thinking": thinking}
    return {"teacher": engine, "options": options}


def model_specs(
    config: Config,
    local: Iterable[str],
    servers: Iterable[str],
    teachers: Iterable[str],
    thinking: bool | None,
) -> dict[str, dict[str, Any]]:
    """Named teacher specs from ``--model [NAME=]PATH``, ``--server [NAME=]URL``, ``--teacher [NAME=]PLUGIN``."""
    specs: dict[str, dict[str, Any]] = {}

    def add(name: str, spec: dict[str, Any]) -> None:
        if name in specs:
            raise EvalError(f"two models are named '{name}'; name them with NAME=...")
        specs[name] = spec

    for item in local:
        name, path = _split_named(item)
        name = name or Path(path).name or path
        if path.lower() not in ("smollm2", "default") and not Path(path).expanduser().exists():
            raise EvalError(f"--model {item}: folder {path} does not exist")
        add(name, local_model_spec(config, path, thinking))
    for index, item in enumerate(servers):
        name, url = _split_named(item)
        name = name or ("server" if index == 0 else f"server{index + 1}")
        add(name, server_spec(url, thinking))
    for item in teachers:
        name, plugin = _split_named(item)
        name = name or plugin
        options = dict(config.teacher.options) if plugin == config.teacher.name else {}
        add(name, {"teacher": plugin, "options": options})
    return specs


def load_eval_problems(
    config: Config, sources: Iterable[str]
) -> tuple[list[Problem], dict[str, str]]:
    """Problems of one or more sets (``bundled``, ``humaneval`` or a file; default
    ``eval.problems``), each selected by ``eval.split`` and ``eval.limit`` as
    :func:`~deepcoder_core.problems.resolve_problems` says. Returns the problems and
    id -> set name; an id in two sets is an EvalError."""
    from ..problems import resolve_problems

    problems: list[Problem] = []
    suite_of: dict[str, str] = {}
    for source in list(sources) or [config.eval.problems or "bundled"]:
        for problem in resolve_problems(source, config.eval.split, config.eval.limit):
            if problem.id in suite_of:
                raise EvalError(
                    f"problem id '{problem.id}' is in both {suite_of[problem.id]} and {source}"
                )
            suite_of[problem.id] = source
            problems.append(problem)
    return problems, suite_of


@click.command("eval")
@click.option(
    "--model",
    "local",
    multiple=True,
    metavar="[NAME=]PATH",
    help="A local model folder (hf teacher); repeatable.",
)
@click.option(
    "--server",
    "servers",
    multiple=True,
    metavar="[NAME=]URL",
    help="An OpenAI-compatible server, e.g. http://127.0.0.1:30000/v1; repeatable.",
)
@click.option(
    "--teacher",
    "teachers",
    multiple=True,
    metavar="[NAME=]PLUGIN",
    help="A teacher plugin (the configured teacher's options apply to its name); repeatable.",
)
@click.option(
    "--problems",
    "sources",
    multiple=True,
    metavar="FILE|bundled|humaneval",
    help="Problem set (eval.problems; default bundled); repeat for several in one report.",
)
@click.option("--split", help="Only this split and problems naming none (eval.split).")
@click.option("--limit", type=int, help="Only the first N problems of each set (eval.limit).")
@click.option("-n", "--samples", type=int, help="Samples per problem (eval.samples).")
@click.option("--k", "ks", help="pass@k values, comma separated (eval.k), e.g. 1,5.")
@click.option(
    "--out", type=click.Path(file_okay=False), help="Report folder (default <paths.out>/eval)."
)
@click.option(
    "--teacher-trajectories",
    type=click.Path(exists=True, dir_okay=False),
    help="Teacher trajectories JSONL: adds agreement metrics.",
)
@click.option(
    "--reference",
    default="teacher",
    show_default=True,
    metavar="NAME",
    help="The model whose trajectories here are the others' agreement references "
    "(when --teacher-trajectories do not cover the problems).",
)
@click.option(
    "--thinking/--no-thinking",
    default=None,
    help="Qwen3 enable_thinking for --model/--server (default: the chat template's).",
)
@click.option("--temperature", type=float, help="Sampling temperature (eval.temperature).")
@config_options
@click.option("--quiet", is_flag=True, help="No progress lines.")
def eval_command(
    local: tuple[str, ...],
    servers: tuple[str, ...],
    teachers: tuple[str, ...],
    sources: tuple[str, ...],
    split: str | None,
    limit: int | None,
    samples: int | None,
    ks: str | None,
    out: str | None,
    teacher_trajectories: str | None,
    reference: str,
    thinking: bool | None,
    temperature: float | None,
    config_path: str | None,
    overrides: tuple[str, ...],
    quiet: bool,
) -> None:
    """Evaluate models as agents: pass@k, steps, tool errors, tokens, per difficulty and category.

    \b
    deepcoder eval --model runs/default/train/student --teacher hf -n 5 --k 1,5
    deepcoder eval --server http://127.0.0.1:30000/v1 --problems bundled --problems humaneval
    deepcoder eval --model base=runs/a/baseline --model distilled=runs/a/train/student \\
        --teacher teacher=hf    # agreement against the teacher's own trajectories here
    """
    from ..config import apply_sandbox, load_config
    from ..plugins import PluginError

    try:
        k_values = [int(k) for k in ks.split(",") if k.strip()] if ks else None
    except ValueError:
        raise EvalError(f"--k {ks}: expected comma-separated integers such as 1,5") from None
    flags = {
        "eval.samples": samples,
        "eval.k": k_values,
        "eval.temperature": temperature,
        "eval.split": split,
        "eval.limit": limit,
    }
    config = load_config(config_path, overrides, flags=flags)
    apply_sandbox(config)
    problems, suite_of = load_eval_problems(config, sources)
    specs = model_specs(config, local, servers, teachers, thinking)
    folder = Path(out) if out else Path(config.paths.out) / "eval"
    try:
        report = evaluate(
            config,
            models=specs,
            problems=problems,
            out=folder,
            teacher_trajectories=Path(teacher_trajectories) if teacher_trajectories else None,
            source=", ".join(dict.fromkeys(suite_of.values())),
            suite_of=suite_of,
            reference=reference,
            progress=not quiet,
        )
    except PluginError as exc:  # e.g. an unknown tool in tools.enabled
        raise EvalError(str(exc)) from None
    for name, model in report["models"].items():
        overall = model["overall"]
        scores = "  ".join(
            f"pass@{k} {overall[f'pass@{k}']:.3f}"
            for k in report["ks"]
            if overall.get(f"pass@{k}") is not None
        )
        click.echo(f"{name}: {scores}  steps {overall['mean_steps'] or 0:.2f}")
    click.echo(f"Report: {folder / 'report.md'}")
