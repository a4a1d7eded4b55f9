"""The variants file of ``deepcoder compare``: what to train, read and checked before any work.

Schema (YAML; ``configs/compare.yaml`` is the default set)::

    variants:                      # required: name -> overrides, or a mapping
      sad:      ["loss.name=kl", "weighting.name=reasoning_heavy"]
      token_kd: ["loss.name=kl", "weighting.name=uniform"]
      sft:      ["loss.name=ce", "weighting.name=uniform"]
      none:     {train: false}     # the undistilled student
      long:     {set: ["training.max_steps=80"]}   # mapping form: set (overrides), train
    baseline: none                 # optional: differences are taken against it
                                   # (default: the one variant with train: false)
    contrasts: [[sad, token_kd]]   # optional: more pairs [a, b], reported as a - b

An override is what ``--set`` takes (``section.key=value``, the value read as YAML), applied
after the config file, the environment and the command's own ``--set``. A variant may only
change what training depends on (:data:`VARIANT_KEYS`); the shared stages (generation,
processing, the teacher and its cache, the held-out evaluation) are the same for all, so a
key outside them is refused, naming the file and the variant.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ConfigError

# a variant may read its own teacher-logit cache (another format or size), built from the shared dataset
CACHE_KEYS = ("teacher_logits.format", "teacher_logits.top_k", "teacher_logits.samples")
VARIANT_KEYS = (
    "loss.",
    "weighting.",
    "training.",
    "student.lora.",
    "student.router_aux_loss_coef",
    *CACHE_KEYS,
)
"""Key prefixes a variant may override: the sections training reads, nothing upstream of it."""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
RESERVED = ("teacher",)  # the reference row of the report
_TOP_KEYS = ("variants", "baseline", "contrasts")
_VARIANT_FIELDS = ("set", "train")


class VariantError(ConfigError):
    """A variants file that cannot be used; the message names the file and the variant."""


@dataclass
class Variant:
    name: str
    overrides: list[str] = field(default_factory=list)
    train: bool = True  # False: the student as built, before distillation


@dataclass
class VariantSet:
    path: Path
    variants: dict[str, Variant]
    baseline: str | None
    contrasts: list[tuple[str, str]]

    def pairs(self) -> list[tuple[str, str]]:
        """Every ``(a, b)`` reported as ``a - b``: each variant against the baseline, then
        the contrasts."""
        pairs = [(n, self.baseline) for n in self.variants if self.baseline and n != self.baseline]
        return pairs + [c for c in self.contrasts if c not in pairs]


def _variant(path: Path, name: Any, value: Any) -> Variant:
    where = f"{path}: variant '{name}'"
    if not isinstance(name, str) or not _NAME.match(name):
        raise VariantError(
            f"{path}: variant name {name!r}: use letters, digits, '_', '.', '-' (a folder name)"
        )
    if name in RESERVED:
        raise VariantError(f"{where}: the name is reserved for the report's reference row")
    train = True
    if isinstance(value, dict):
        unknown = [k for k in value if k not in _VARIANT_FIELDS]
        if unknown:
            raise VariantError(f"{where}: unknown key {unknown[0]!r}; expected set or train")
        train = value.get("train", True)
        if not isinstance(train, bool):
            raise VariantError(f"{where}: train must be true or false, got {train!r}")
        value = value.get("set", [])
    if value is None:
        value = []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise VariantError(
            f"{where}: expected a list of section.key=value overrides or {{set: [...], train: bool}}"
        )
    if not train and value:
        raise VariantError(f"{where}: train: false takes no overrides (nothing is trained)")
    for item in value:
        key = item.split("=", 1)[0].strip()
        if "=" not in item:
            raise VariantError(f"{where}: {item!r}: expected section.key=value")
        if not key.startswith(VARIANT_KEYS):
            raise VariantError(
                f"{where}: {key} is shared by every variant (generation, processing, teacher "
                f"and evaluation run once); a variant may change only {', '.join(VARIANT_KEYS)}"
            )
    return Variant(name, list(value), train)


def load_variants(path: str | Path) -> VariantSet:
    """Read and check a variants file (module docstring)."""
    from ..config import read_yaml

    path = Path(path)
    data = read_yaml(path)  # a ConfigError names the file (and the line)
    unknown = [k for k in data if k not in _TOP_KEYS]
    if unknown:
        raise VariantError(f"{path}: unknown key {unknown[0]!r}; expected {', '.join(_TOP_KEYS)}")
    raw = data.get("variants")
    if not isinstance(raw, dict) or not raw:
        raise VariantError(f"{path}: 'variants' must map at least one name to its overrides")
    variants = {name: _variant(path, name, value) for name, value in raw.items()}
    untrained = [n for n, v in variants.items() if not v.train]
    baseline = data.get("baseline", untrained[0] if len(untrained) == 1 else None)
    if baseline is not None and baseline not in variants:
        raise VariantError(
            f"{path}: baseline {baseline!r} is not a variant ({', '.join(variants)})"
        )
    contrasts: list[tuple[str, str]] = []
    for pair in data.get("contrasts") or []:
        if (
            not isinstance(pair, list)
            or len(pair) != 2
            or any(p not in variants for p in pair)
            or pair[0] == pair[1]
        ):
            raise VariantError(
                f"{path}: contrast {pair!r}: expected [a, b], two different variants"
            )
        contrasts.append((pair[0], pair[1]))
    return VariantSet(path, variants, baseline, contrasts)
