"""Value checks: ranges, choices and coercion, and :class:`ConfigError`, which they raise.

:class:`Range` and :class:`OneOf` ride on a field's type (``Count = Annotated[int,
Range(ge=1)]`` in :mod:`.schema`); :func:`build` walks a section's type hints, converts the
obvious cases (int -> float), checks every float is finite and in its range, and names the
key path in every error.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import reprlib
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any

from ..errors import DeepcoderError


class ConfigError(DeepcoderError, ValueError):
    """A configuration problem, with the source (file or variable) and the key path."""


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


@dataclass(frozen=True)
class Range:
    """The interval a number field must lie in (``None``: unbounded on that side)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    note: str = ""  # why, when the bound is not obvious

    def describe(self) -> str:
        low = self.gt if self.gt is not None else self.ge
        high = self.lt if self.lt is not None else self.le
        if low is not None and high is not None:
            left, right = "(" if self.gt is not None else "[", ")" if self.lt is not None else "]"
            return f"in {left}{_number(low)}, {_number(high)}{right}"
        if low is not None:
            return f"{'>' if self.gt is not None else '>='} {_number(low)}"
        assert high is not None, "a Range has at least one bound"
        return f"{'<' if self.lt is not None else '<='} {_number(high)}"

    def check(self, value: float, where: str, kind: str) -> None:
        inside = (
            (self.ge is None or value >= self.ge)
            and (self.gt is None or value > self.gt)
            and (self.le is None or value <= self.le)
            and (self.lt is None or value < self.lt)
        )
        if not inside:
            note = f" ({self.note})" if self.note else ""
            raise ConfigError(f"{where}: must be {kind} {self.describe()}, got {value!r}{note}")


@dataclass(frozen=True)
class OneOf:
    """The values a string field may take."""

    choices: tuple[str, ...]

    def check(self, value: str, where: str, kind: str) -> None:
        if value not in self.choices:
            close = difflib.get_close_matches(value, self.choices, n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(self.choices)}{hint}")


_short = reprlib.Repr()
_short.maxstring = _short.maxother = 80  # a value quoted in an error stays on one short line


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against a field's type, converting the obvious cases (int -> float)."""
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if value is None:  # a section whose keys are all commented out
            return hint()
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return build(hint, value, where)
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Annotated:
        base, *checks = args
        value = _coerce(value, base, where)
        for check in checks:
            check.check(value, where, "an integer" if base is int else "a number")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {_short.repr(value)}")
    if hint is Any:
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {_short.repr(value)}")
        return (
            [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)] if args else value
        )
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {_short.repr(value)}")
        return {k: _coerce(v, args[1], f"{where}.{k}") for k, v in value.items()} if args else value
    if hint is float and isinstance(value, int | str) and not isinstance(value, bool):
        try:
            value = float(value)
        except OverflowError:  # an int past 1e308
            raise ConfigError(
                f"{where}: must be a finite number, got {_short.repr(value)}"
            ) from None
        except ValueError:
            pass
    if hint is float and isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: must be a finite number, got {value!r}")
    if (
        isinstance(hint, type)
        and isinstance(value, hint)
        and not (hint is int and isinstance(value, bool))
    ):
        return value
    expected = getattr(hint, "__name__", str(hint))
    raise ConfigError(f"{where}: expected {expected}, got {_short.repr(value)}")


def build(cls: type, data: dict[str, Any], where: str) -> Any:
    """The dataclass ``cls`` built from ``data``, every value checked; errors name ``where.key``."""
    hints = typing.get_type_hints(cls, include_extras=True)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"{path}: unknown key{hint} (known: {', '.join(names)})")
        kwargs[key] = _coerce(value, hints[key], path)
    return cls(**kwargs)
