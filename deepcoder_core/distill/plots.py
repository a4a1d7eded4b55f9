"""PNG plots of a training run, drawn from ``metrics.jsonl`` (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

from ..io import read_jsonl
from ..protocols import SPAN_NAMES
from .metrics import span_key


def plot_metrics(metrics: str | Path, out: str | Path) -> list[Path]:
    """``divergence_by_span.png`` (mean divergence per span type over steps), ``loss.png``
    (total loss and LR), ``expert_load.png`` for MoE students, and for on-policy runs
    ``rollouts.png`` (rollout success, format- and tool-error rates, and the seconds of
    rollout, teacher scoring and update per logged step). Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [r for _, r in read_jsonl(metrics, errors=[])] if Path(metrics).exists() else []
    if not records:
        return []
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []

    fig, ax = plt.subplots(figsize=(7, 4))
    for span in SPAN_NAMES.values():
        key = span_key("divergence", span)
        points = [(r["step"], r[key]) for r in records if key in r]
        if points:
            ax.plot(*zip(*points, strict=True), marker=".", label=span)
    ax.set(
        xlabel="optimizer step",
        ylabel="mean divergence per token",
        title="Divergence per span type",
    )
    ax.grid(alpha=0.3)
    ax.legend()
    written.append(_save(fig, out / "divergence_by_span.png"))

    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [r["step"] for r in records]
    ax.plot(steps, [r["loss"] for r in records], color="black", label="loss")
    ax.set(xlabel="optimizer step", ylabel="weighted loss", title="Training loss")
    if any("learning_rate" in r for r in records):
        lr = ax.twinx()
        lr.plot(steps, [r.get("learning_rate", 0.0) for r in records], color="tab:gray", ls="--")
        lr.set_ylabel("learning rate")
    ax.grid(alpha=0.3)
    written.append(_save(fig, out / "loss.png"))

    loads = [(r["step"], r["expert_load"]) for r in records if "expert_load" in r]
    if loads:
        fig, ax = plt.subplots(figsize=(7, 4))
        steps = [s for s, _ in loads]
        for expert in range(len(loads[0][1])):
            ax.plot(steps, [load[expert] for _, load in loads], lw=1)
        ax.axhline(1 / len(loads[0][1]), color="black", ls=":", label="balanced")
        ax.set(xlabel="optimizer step", ylabel="share of routed tokens", title="Expert load")
        ax.legend()
        written.append(_save(fig, out / "expert_load.png"))

    rollouts = [r for r in records if r.get("on_policy_steps")]
    if rollouts:
        fig, (rates, seconds) = plt.subplots(1, 2, figsize=(11, 4))
        steps = [r["step"] for r in rollouts]
        for key in ("rollout/success", "rollout/format_error_rate", "rollout/tool_error_rate"):
            rates.plot(steps, [r[key] for r in rollouts], marker=".", label=key.split("/")[1])
        rates.set(xlabel="optimizer step", ylabel="share", title="Student rollouts", ylim=(0, 1))
        rates.legend()
        bottom = [0.0] * len(rollouts)
        for key in ("time/rollout", "time/scoring", "time/update"):
            values = [r.get(key, 0.0) for r in rollouts]
            seconds.bar(steps, values, bottom=bottom, label=key.split("/")[1])
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        seconds.set(xlabel="optimizer step", ylabel="seconds", title="Where an on-policy step goes")
        seconds.legend()
        written.append(_save(fig, out / "rollouts.png"))
    return written


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path
