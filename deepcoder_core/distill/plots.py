"""PNG plots of a training run, drawn from ``metrics.jsonl`` (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

from ..io import read_jsonl
from ..protocols import SPAN_NAMES
from .metrics import span_key


def plot_metrics(metrics: str | Path, out: str | Path) -> list[Path]:
    """``divergence_by_span.png`` (mean divergence per span type over steps), ``loss.png``
    (total loss and LR), and ``expert_load.png`` for MoE students. Returns the files written."""
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
    return written


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path
