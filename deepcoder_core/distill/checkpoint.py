"""What a training checkpoint holds besides the Trainer's own files, and finding one to resume.

The Trainer saves the model, optimizer, scheduler and RNG states in
``checkpoints/checkpoint-N/``. Ours is ``deepcoder_state.json`` next to them: the running
per-span divergences (``TrainingState.span_divergence_ema``) and the state of the loss and
the weighting (:func:`component_state`), as JSON, so resuming never runs code from a
checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..io import atomic_write_json, atomic_write_text
from ..protocols import TrainingState
from .errors import TrainError

STATE_FILE = "deepcoder_state.json"
PREFIX = "checkpoint-"


class _NotData(Exception):
    """A value a checkpoint cannot hold as data (a function, a model, an open file)."""


def encode_state(value: Any) -> Any:
    """Plain data and tensors as JSON, keeping what JSON would lose (int keys, tuples, dtypes)."""
    import torch

    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list):
        return [encode_state(v) for v in value]
    if isinstance(value, tuple):
        return {"tuple": [encode_state(v) for v in value]}
    if isinstance(value, dict):
        return {"dict": [[encode_state(k), encode_state(v)] for k, v in value.items()]}
    if isinstance(value, torch.Tensor):
        return {
            "tensor": value.detach().cpu().tolist(),
            "dtype": str(value.dtype).removeprefix("torch."),
            "shape": list(value.shape),
        }
    raise _NotData(type(value).__name__)


def decode_state(data: Any) -> Any:
    """The inverse of :func:`encode_state`; builds data and tensors only."""
    import torch

    if isinstance(data, list):
        return [decode_state(v) for v in data]
    if not isinstance(data, dict):
        return data
    if "tuple" in data:
        return tuple(decode_state(v) for v in data["tuple"])
    if "dict" in data:
        return {decode_state(k): decode_state(v) for k, v in data["dict"]}
    dtype = getattr(torch, str(data.get("dtype")), None)
    if not isinstance(dtype, torch.dtype):
        raise TrainError(f"checkpoint state: {data.get('dtype')!r} is not a torch dtype")
    return torch.tensor(data["tensor"], dtype=dtype).reshape(data["shape"])


def component_state(component: Any) -> dict[str, Any]:
    """What a loss or a weighting carries from step to step, encoded for a checkpoint.

    A component with ``state_dict()`` and ``load_state_dict(state)`` gives its own (numbers,
    strings, lists, dicts, tensors). Otherwise its attributes that are such data are kept;
    the others (functions, nested components) come from its options again on resume.
    """
    if callable(getattr(component, "state_dict", None)) and callable(
        getattr(component, "load_state_dict", None)
    ):
        try:
            return {"state_dict": encode_state(component.state_dict())}
        except _NotData as exc:
            raise TrainError(
                f"{type(component).__name__}.state_dict() holds a {exc}, which a checkpoint "
                "cannot store; return numbers, strings, lists, dicts and tensors only"
            ) from None
    attributes = {}
    for name, value in getattr(component, "__dict__", {}).items():
        try:
            attributes[name] = encode_state(value)
        except _NotData:
            continue  # rebuilt from the options
    return {"attributes": attributes}


def restore_component(component: Any, saved: dict[str, Any]) -> None:
    """Put a state from :func:`component_state` back into a freshly built component."""
    if "state_dict" in saved:
        component.load_state_dict(decode_state(saved["state_dict"]))
        return
    for name, value in saved.get("attributes", {}).items():
        setattr(component, name, decode_state(value))


def save_state(folder: Path, state: TrainingState, weighting: Any, loss_fn: Any) -> None:
    """Write ``folder/deepcoder_state.json``."""
    saved = {
        "span_divergence_ema": {str(k): v for k, v in state.span_divergence_ema.items()},
        "weighting": component_state(weighting),
        "loss": component_state(loss_fn),
    }
    atomic_write_json(folder / STATE_FILE, saved)


def load_state(folder: Path) -> dict[str, Any] | None:
    """``folder/deepcoder_state.json`` as saved (span numbers back to ints), or None."""
    path = folder / STATE_FILE
    if not path.exists():
        return None
    saved = json.loads(path.read_text())
    ema = saved.get("span_divergence_ema", {})
    saved["span_divergence_ema"] = {int(k): v for k, v in ema.items()}
    return saved


def checkpoint_step(folder: Path) -> int:
    return int(folder.name.removeprefix(PREFIX))


def latest_checkpoint(out: Path) -> Path | None:
    """The newest complete ``out/checkpoints/checkpoint-N``, or None."""
    # trainer_state.json is written last: a folder without it is a save cut short by a kill.
    folders = [
        p
        for p in (out / "checkpoints").glob(f"{PREFIX}*")
        if p.name.removeprefix(PREFIX).isdigit() and (p / "trainer_state.json").exists()
    ]
    return max(folders, key=checkpoint_step, default=None)


def trim_metrics(path: Path, step: int) -> None:
    """On resume, drop metric lines past the checkpoint: they are about to be recomputed."""
    from ..io import read_jsonl

    if not path.exists():
        return
    kept = [json.dumps(r) for _, r in read_jsonl(path, errors=[]) if r.get("step", 0) <= step]
    atomic_write_text(path, "".join(line + "\n" for line in kept))
