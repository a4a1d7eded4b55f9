"""The student: built from a folder, a pruned copy of the teacher or a random config; LoRA; MoE.

Three ways to get a student (``student`` config section), first match wins:

- ``path``: any causal-LM folder (or hub id);
- ``init.from_teacher.layers``: a layer-pruned copy of the teacher (DistilBERT-style
  initialisation, Sanh et al. 2019) -- the embedded default;
- ``init.config``: a small random model from a transformers config dict (tests).

LoRA (Hu et al. 2021, W + (alpha/r) B A) goes through PEFT; the trainer then saves only the
adapters, and ``deepcoder merge-lora`` folds them back into a plain model folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ..config import Config
from .errors import one_line_errors

LORA_BASE_DIR = "student-base"
"""Where a LoRA run keeps the base weights when the base is not a folder on disk already."""


def teacher_model_path(config: Config, teacher_path: str | Path | None = None) -> str:
    """The local teacher folder: an explicit path, else ``teacher.options.model`` (None: SmolLM2)."""
    from ..models import resolve_model_path

    if teacher_path is not None:
        return str(teacher_path)
    return resolve_model_path(config.teacher.options.get("model"), config.paths.cache)


def build_student(config: Config, *, teacher_path: str | Path | None = None) -> tuple[Any, Any]:
    """``(model, tokenizer)`` for training, in train mode, float32, on the CPU.

    The tokenizer is ``student.tokenizer`` when set, else the student folder's, else the
    teacher's (pruned and random students speak the teacher's vocabulary).
    """
    from .. import models

    section = config.student
    tokenizer_source: str | None = section.tokenizer
    if section.path:
        model = models.load_causal_lm(section.path)
        tokenizer_source = tokenizer_source or section.path
    elif section.init.from_teacher:
        layers = section.init.from_teacher.get("layers")
        if not isinstance(layers, list) or not all(isinstance(i, int) for i in layers):
            raise ValueError(
                "student.init.from_teacher.layers: expected a list of layer indices, "
                f"got {layers!r}"
            )
        source = teacher_model_path(config, teacher_path)
        teacher = models.load_causal_lm(source)
        model = models.prune_layers(teacher, layers)
        del teacher
        tokenizer_source = tokenizer_source or source
    elif section.init.config:
        model = models.random_causal_lm(section.init.config, seed=config.training.seed)
        tokenizer_source = tokenizer_source or teacher_model_path(config, teacher_path)
    else:
        raise ValueError(
            "student: set student.path, student.init.from_teacher.layers or student.init.config"
        )
    path = models.resolve_tokenizer_path(tokenizer_source, config.paths.cache)
    tokenizer = models.load_tokenizer(path, shared=True)
    configure_moe(model, section.router_aux_loss_coef)
    model.train()
    return model, tokenizer


def is_moe(model: Any) -> bool:
    """True for mixture-of-experts causal LMs (Qwen3-MoE, Mixtral, ...): they expose router logits."""
    config = getattr(model, "config", None)
    return any(
        getattr(config, key, None)
        for key in ("num_experts", "num_local_experts", "n_routed_experts")
    )


def configure_moe(model: Any, router_aux_loss_coef: float) -> None:
    """Ask an MoE student for its router logits, so the trainer can add the load-balancing loss."""
    if is_moe(model):
        model.config.output_router_logits = True
        model.config.router_aux_loss_coef = router_aux_loss_coef


def apply_lora(model: Any, config: Config) -> Any:
    """Wrap ``model`` with LoRA adapters on ``student.lora.target_modules`` (PEFT)."""
    from peft import LoraConfig, get_peft_model

    lora = config.student.lora
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in lora.target_modules if m not in present]
    if missing:
        raise ValueError(
            f"student.lora.target_modules: {missing} not found in the student "
            f"(linear layers include e.g. {sorted(n for n in present if n.endswith('proj'))[:8]})"
        )
    peft_config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, peft_config)


def save_lora_base(model: Any, tokenizer: Any, config: Config, out: Path) -> str:
    """The base a LoRA adapter refers to: ``student.path``, else the built base saved under ``out``."""
    if config.student.path and Path(config.student.path).expanduser().is_dir():
        return str(Path(config.student.path).expanduser().resolve())
    base = out / LORA_BASE_DIR
    if not (base / "config.json").exists():
        model.save_pretrained(base)
        tokenizer.save_pretrained(base)
    return str(base.resolve())


def merge_lora(adapter: str | Path, out: str | Path, *, base: str | Path | None = None) -> Path:
    """Load ``base`` (default: the adapter's recorded base) plus the adapter, merge, save a plain model."""
    from peft import PeftModel

    from .. import models

    adapter = Path(adapter)
    config_file = adapter / "adapter_config.json"
    if not config_file.exists():
        raise FileNotFoundError(
            f"{config_file}: not a LoRA adapter folder (no adapter_config.json)"
        )
    if base is None:
        base = json.loads(config_file.read_text())["base_model_name_or_path"]
    if not base or not Path(base).exists():
        raise FileNotFoundError(
            f"{config_file}: base model {base!r} not found; pass --base PATH to the base model folder"
        )
    model = models.load_causal_lm(base)
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    out = Path(out)
    merged.save_pretrained(out)
    tokenizer_source = adapter if (adapter / "tokenizer_config.json").exists() else Path(base)
    models.load_tokenizer(tokenizer_source).save_pretrained(out)
    return out


@click.command("merge-lora")
@click.option(
    "--adapter", required=True, type=click.Path(file_okay=False), help="LoRA adapter folder."
)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Merged model folder.")
@click.option("--base", type=click.Path(file_okay=False), help="Base model (default: recorded).")
def merge_lora_command(adapter: str, out: str, base: str | None) -> None:
    """Fold a LoRA adapter into its base model and save a plain causal-LM folder."""
    with one_line_errors():
        path = merge_lora(adapter, out, base=base)
    click.echo(f"merged model written to {path}")
