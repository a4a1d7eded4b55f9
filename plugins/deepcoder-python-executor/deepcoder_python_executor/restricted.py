"""The RestrictedPython policy of the ``python`` tool; its runner executes inside the sandbox.

RestrictedPython rewrites the code at compile time (no names or attributes starting with
``_``, no ``exec``-like statements, every attribute read, item read, iteration, unpacking,
write, print, augmented assignment and ``*args`` call routed through a guard), and the
guards below decide at run time. It is a language filter, not a sandbox: this module only
ever runs in a forked, resource-limited sandbox child (``deepcoder_core.sandbox``).

What the guards add to RestrictedPython's own ``safer_getattr``:

- modules are handed out as read-only proxies, only for the allow-listed pure modules; a
  module reached through another module's attribute (``typing.sys``, ``json.codecs``) is
  refused, so is attribute access on a real module object that leaked some other way;
- callables that evaluate strings as code or read attributes by name are refused wherever
  they are found: ``string.Formatter``, ``str.format``/``format_map``,
  ``operator.attrgetter``/``methodcaller``, ``typing.get_type_hints``/``ForwardRef``,
  ``functools.singledispatch`` (it evaluates string annotations);
- ``AttributeError.obj`` (the object a failed lookup was made on) is never readable;
- writes (``obj.x = ...``, ``obj[k] = ...``, ``setattr``) may not target modules, or classes
  and functions that the sandboxed code did not define.
"""

from __future__ import annotations

import ast
import builtins
import collections
import importlib
import operator
import random
import string
import sys
import types
from typing import Any

from RestrictedPython import compile_restricted_eval, compile_restricted_exec
from RestrictedPython.Guards import (
    guarded_iter_unpack_sequence,
    guarded_unpack_sequence,
    safe_builtins,
)
from RestrictedPython.PrintCollector import PrintCollector
from RestrictedPython.transformer import INSPECT_ATTRIBUTES

from deepcoder_core.sandbox import PURE_MODULES, register_source, short_traceback

FILENAME = "<python>"
SANDBOX_MODULE = "__sandbox__"  # __module__ of every class and function the code defines

ALLOWED_MODULES = frozenset({*PURE_MODULES, "collections.abc"})

_FORMATTABLE = (str, collections.UserString)  # their .format() walks attributes by name
_REFUSED_NAMES = INSPECT_ATTRIBUTES | {"mro", "f_trace_lines", "f_trace_opcodes", "tb_lasti"}
_MISSING = object()


def _banned_objects() -> dict[int, str]:
    import functools
    import typing

    banned = {
        string.Formatter: "string.Formatter",
        operator.attrgetter: "operator.attrgetter",
        operator.methodcaller: "operator.methodcaller",
        typing.get_type_hints: "typing.get_type_hints",
        typing.ForwardRef: "typing.ForwardRef",
        functools.singledispatch: "functools.singledispatch",
        functools.singledispatchmethod: "functools.singledispatchmethod",
    }
    return {id(obj): name for obj, name in banned.items()}


_BANNED = _banned_objects()


class ModuleProxy:
    """Read-only view of an allowed module; every attribute goes through ``check_value``."""

    __slots__ = ("_deepcoder_name",)

    def __init__(self, name: str):
        object.__setattr__(self, "_deepcoder_name", name)

    def __getattr__(self, name: str) -> Any:
        module_name = object.__getattribute__(self, "_deepcoder_name")
        if name == "__name__":  # read by `from m import x` to word its ImportError
            return module_name
        return module_attribute(sys.modules[module_name], name)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("modules are read-only in the python tool")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("modules are read-only in the python tool")

    def __dir__(self) -> list[str]:
        module = sys.modules[object.__getattribute__(self, "_deepcoder_name")]
        return sorted(n for n in vars(module) if not n.startswith("_"))

    def __repr__(self) -> str:
        return f"<module '{object.__getattribute__(self, '_deepcoder_name')}'>"


def _refuse_name(name: Any) -> None:
    if type(name) is not str:
        raise TypeError("attribute name must be a str")
    if name.startswith("_"):
        raise AttributeError(f'"{name}" is not allowed: it starts with "_" (private)')
    if name in _REFUSED_NAMES:
        raise AttributeError(f'"{name}" is not allowed: it exposes interpreter internals')


def check_value(value: Any, where: str) -> Any:
    """Refuse dangerous objects, and wrap modules, whatever path reached them."""
    if isinstance(value, types.ModuleType):
        if value.__name__ in ALLOWED_MODULES:
            return ModuleProxy(value.__name__)
        raise AttributeError(f"{where}: module '{value.__name__}' is not available")
    banned = _BANNED.get(id(value))
    if banned is not None or isinstance(value, string.Formatter):
        raise AttributeError(f"{banned or 'string.Formatter'} is not allowed in the python tool")
    return value


def module_attribute(module: types.ModuleType, name: str) -> Any:
    _refuse_name(name)
    if module.__name__ not in ALLOWED_MODULES:
        raise AttributeError(f"module '{module.__name__}' is not available")
    try:
        value = getattr(module, name)
    except AttributeError:
        raise AttributeError(f"module '{module.__name__}' has no attribute '{name}'") from None
    return check_value(value, f"{module.__name__}.{name}")


def guarded_getattr(obj: Any, name: str, default: Any = _MISSING) -> Any:
    """``_getattr_`` and the ``getattr`` builtin."""
    _refuse_name(name)
    if name in ("format", "format_map") and (
        isinstance(obj, _FORMATTABLE) or (isinstance(obj, type) and issubclass(obj, _FORMATTABLE))
    ):
        raise AttributeError(
            f"str.{name} is not allowed (format fields can read attributes); use an f-string"
        )
    if name == "obj" and isinstance(obj, AttributeError):
        raise AttributeError("AttributeError.obj is not allowed")
    try:
        if isinstance(obj, types.ModuleType):
            return module_attribute(obj, name)
        value = getattr(obj, name)
    except AttributeError as exc:
        if default is not _MISSING:
            return default
        raise AttributeError(str(exc)) from None  # a fresh error: no .obj, no frames
    return check_value(value, f"attribute {name!r}")


def guarded_hasattr(obj: Any, name: str) -> bool:
    try:
        guarded_getattr(obj, name)
    except AttributeError:
        return False
    return True


def guarded_getitem(obj: Any, index: Any) -> Any:
    return check_value(obj[index], "item")


def guarded_write(obj: Any) -> Any:
    """``_write_``: the object an attribute/item assignment or deletion may change."""
    if isinstance(obj, types.ModuleType | ModuleProxy):
        raise TypeError("modules are read-only in the python tool")
    if isinstance(obj, type | types.FunctionType | types.BuiltinFunctionType):
        if getattr(obj, "__module__", None) != SANDBOX_MODULE:
            raise TypeError(f"cannot change {obj!r}: it was not defined by this code")
    return obj


def guarded_setattr(obj: Any, name: str, value: Any) -> None:
    _refuse_name(name)
    setattr(guarded_write(obj), name, value)


def guarded_delattr(obj: Any, name: str) -> None:
    _refuse_name(name)
    delattr(guarded_write(obj), name)


def guarded_import(
    name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0
) -> Any:
    if level:
        raise ImportError("relative imports are not allowed")
    if name not in ALLOWED_MODULES:
        allowed = ", ".join(sorted(ALLOWED_MODULES))
        raise ImportError(f"import of '{name}' is not allowed; allowed modules: {allowed}")
    importlib.import_module(name)
    return ModuleProxy(name if fromlist else name.partition(".")[0])


def guarded_type(obj: Any, *rest: Any) -> Any:
    """One-argument ``type``; metaclasses stay hidden (calling one would build classes with any dunder)."""
    if rest:
        raise TypeError("type() with three arguments is not allowed; use a class statement")
    cls = type(obj)
    if cls is type:
        return guarded_type
    if issubclass(cls, type):
        raise TypeError(f"the type of {obj!r} (a metaclass) is not available")
    return cls


def safe_dir(obj: Any = _MISSING) -> list[str]:
    if obj is _MISSING:
        raise TypeError("dir() needs an argument here")
    return [n for n in dir(obj) if not n.startswith("_") and n not in _REFUSED_NAMES]


_INPLACE = {
    "+=": operator.iadd,
    "-=": operator.isub,
    "*=": operator.imul,
    "/=": operator.itruediv,
    "//=": operator.ifloordiv,
    "%=": operator.imod,
    "**=": operator.ipow,
    "<<=": operator.ilshift,
    ">>=": operator.irshift,
    "|=": operator.ior,
    "^=": operator.ixor,
    "&=": operator.iand,
    "@=": operator.imatmul,
}


def inplacevar(op: str, target: Any, value: Any) -> Any:
    return _INPLACE[op](target, value)


def apply(function: Any, *args: Any, **kwargs: Any) -> Any:
    return function(*args, **kwargs)


class Output:
    """Where printed text goes: the sandbox's captured stdout, or nowhere during a replay."""

    target: Any = None


class SandboxPrint(PrintCollector):
    """``_print_``: RestrictedPython's collector (for ``printed``) that also echoes to stdout."""

    limit = 100_000
    size = 0

    def write(self, text: str) -> None:
        if self.size < self.limit:
            self.txt.append(text)
            self.size += len(text)
        if Output.target is not None:
            Output.target.write(text)


_EXTRA_BUILTINS = (
    "all any ascii bin bytearray bytes classmethod dict enumerate filter format frozenset "
    "iter list map max min next object print property reversed set sorted staticmethod sum "
    "super tuple zip NotImplemented Ellipsis RecursionError ModuleNotFoundError "
    "StopAsyncIteration ExceptionGroup BaseExceptionGroup"
).split()


def make_builtins() -> dict[str, Any]:
    namespace = dict(safe_builtins)
    for name in _EXTRA_BUILTINS:
        namespace[name] = getattr(builtins, name)
    namespace.update(
        __import__=guarded_import,
        getattr=guarded_getattr,
        hasattr=guarded_hasattr,
        setattr=guarded_setattr,
        delattr=guarded_delattr,
        type=guarded_type,
        dir=safe_dir,
    )
    return namespace


def make_globals() -> dict[str, Any]:
    """A fresh namespace for one session, every guard wired."""
    return {
        "__builtins__": make_builtins(),
        "__name__": SANDBOX_MODULE,
        "__metaclass__": type,
        "_getattr_": guarded_getattr,
        "_getitem_": guarded_getitem,
        "_getiter_": iter,
        "_iter_unpack_sequence_": guarded_iter_unpack_sequence,
        "_unpack_sequence_": guarded_unpack_sequence,
        "_write_": guarded_write,
        "_print_": SandboxPrint,
        "_inplacevar_": inplacevar,
        "_apply_": apply,
    }


class Refused(Exception):
    """RestrictedPython refused to compile the code."""


def compile_cell(source: str) -> tuple[Any, Any]:
    """(statements code, last-expression code or None); Refused with the compiler's reasons."""
    try:
        tree = ast.parse(source, FILENAME)
    except SyntaxError as exc:
        raise Refused(f"SyntaxError: {exc.msg} (line {exc.lineno})") from None
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        uses_print = any(
            isinstance(n, ast.Name) and n.id == "print" for n in ast.walk(tree.body[-1])
        )
        if not uses_print:  # print() is a statement to RestrictedPython's collector
            last = ast.Expression(tree.body.pop().value)
    result = compile_restricted_exec(tree, FILENAME)
    errors = list(result.errors)
    value_code = None
    if last is not None:
        value = compile_restricted_eval(last, FILENAME)
        errors.extend(value.errors)
        value_code = value.code
    if errors:
        raise Refused("RestrictedPython refused the code:\n" + "\n".join(f"  {e}" for e in errors))
    return result.code, value_code


def run_cell(payload: dict[str, Any], limits: dict[str, Any]) -> dict[str, Any]:
    """Sandbox runner: replay the session's earlier cells silently, then run the new one."""
    random.seed(payload.get("seed", 0))
    namespace = make_globals()
    Output.target = None
    for i, cell in enumerate(payload.get("history", [])):
        try:
            statements, value_code = compile_cell(cell)
            exec(statements, namespace)
            if value_code is not None:
                eval(value_code, namespace)
        except Exception as exc:  # deterministic replay should not fail; say so if it does
            return {"status": "error", "error": f"replaying earlier call {i + 1} failed: {exc}"}
    source = payload["code"]
    register_source(FILENAME, source)
    Output.target = sys.stdout
    try:
        statements, value_code = compile_cell(source)
    except Refused as exc:
        return {"status": "error", "error": str(exc)}
    try:
        exec(statements, namespace)
        value = eval(value_code, namespace) if value_code is not None else None
        text = None if value is None else repr(value)
    except BaseException as exc:  # the code's failure is its observation
        namespace.clear()
        return {"status": "error", "error": short_traceback(exc, [FILENAME])}
    out: dict[str, Any] = {"status": "ok"}
    if text is not None:
        out["value"] = text[: limits["max_output_chars"]]
    return out
