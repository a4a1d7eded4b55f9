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
- metaclasses (``typing.ABCMeta``, ``typing.NamedTupleMeta``) and ``FunctionType`` are never
  handed out: calling one builds classes or functions with any dunder or any globals;
- writes (``obj.x = ...``, ``obj[k] = ...``, ``setattr``) change only what the code created:
  its own functions, classes and their instances, and builtin containers; a module's lists,
  dicts and sets are handed out as copies;
- library callables that write attributes of their arguments or generate source from them
  are wrapped (``WRAPPED``): ``functools.update_wrapper``/``wraps`` copy only the standard
  attributes onto the code's own function, ``total_ordering``/``abstractmethod`` change only
  the code's own classes and functions, ``dataclasses.dataclass``/``make_dataclass`` refuse
  field names that are not identifiers (their ``__init__``/``__repr__`` are generated source)
  and namespaces with private names, ``operator.setitem``/``delitem`` follow the write rule;
  the rest that only type checkers use (``typing.no_type_check``, ``dataclass_transform``)
  is refused.

``REVIEWED`` lists, for the modules whose callables take objects and act on them, every
public callable with its verdict; the tests fail when a new Python adds one unreviewed.
"""

from __future__ import annotations

import abc
import ast
import builtins
import collections
import dataclasses
import decimal
import functools
import importlib
import keyword
import operator
import random
import string
import sys
import types
import typing
from typing import Any

from RestrictedPython import compile_restricted_eval, compile_restricted_exec
from RestrictedPython.Guards import (
    guarded_iter_unpack_sequence,
    guarded_unpack_sequence,
    safe_builtins,
)
from RestrictedPython.PrintCollector import PrintCollector
from RestrictedPython.transformer import INSPECT_ATTRIBUTES

from deepcoder_core import PURE_MODULES, register_source, short_traceback

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
        typing.no_type_check: "typing.no_type_check",
        typing.no_type_check_decorator: "typing.no_type_check_decorator",
        typing.dataclass_transform: "typing.dataclass_transform",
        types.MethodDescriptorType: "typing.MethodDescriptorType",  # typing re-exports these
        types.MethodWrapperType: "typing.MethodWrapperType",
        types.WrapperDescriptorType: "typing.WrapperDescriptorType",
        types.FunctionType: "FunctionType",  # dataclasses.FunctionType
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
    if banned is not None or isinstance(value, string.Formatter | typing.ForwardRef):
        name = banned or type(value).__name__
        raise AttributeError(f"{name} is not allowed in the python tool")
    if isinstance(value, type) and issubclass(value, type):
        raise AttributeError(f"{where}: metaclasses are not available (use a class statement)")
    wrapped = WRAPPED.get(id(value))
    return value if wrapped is None else wrapped


def module_attribute(module: types.ModuleType, name: str) -> Any:
    _refuse_name(name)
    if module.__name__ not in ALLOWED_MODULES:
        raise AttributeError(f"module '{module.__name__}' is not available")
    try:
        value = getattr(module, name)
    except AttributeError:
        raise AttributeError(f"module '{module.__name__}' has no attribute '{name}'") from None
    if type(value) in (list, dict, set, bytearray):  # module state stays the module's
        value = type(value)(value)
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


# Objects of these types may be changed wherever they came from: builtin containers (their
# items only: they have no attribute dict) and decimal contexts (precision, rounding).
_WRITABLE = (
    list,
    dict,
    set,
    bytearray,
    collections.deque,
    collections.UserDict,
    collections.UserList,
    collections.ChainMap,
    decimal.Context,
)


def owned(obj: Any) -> bool:
    """Whether the sandboxed code may change ``obj``: it created it, or it is a plain container."""
    if isinstance(obj, types.FunctionType):
        return obj.__code__.co_filename == FILENAME  # a code object only our compiler makes
    if isinstance(obj, type):
        return obj.__module__ == SANDBOX_MODULE
    if isinstance(obj, _WRITABLE):
        return True
    return getattr(type(obj), "__module__", None) == SANDBOX_MODULE


def guarded_write(obj: Any) -> Any:
    """``_write_``: the object an attribute/item assignment or deletion may change."""
    if isinstance(obj, types.ModuleType | ModuleProxy):
        raise TypeError("modules are read-only in the python tool")
    if not owned(obj):
        raise TypeError(f"cannot change {_describe(obj)}: it was not created by this code")
    return obj


def _describe(obj: Any) -> str:
    if isinstance(obj, type | types.FunctionType | types.BuiltinFunctionType):
        return repr(obj)
    return f"a {type(obj).__module__}.{type(obj).__qualname__} object"


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


# ---------------------------------------------------------------------------- wrapped callables


def _require_owned(obj: Any, what: str) -> None:
    if not owned(obj):
        raise TypeError(f"{what} may only change what this code created, not {_describe(obj)}")


def safe_update_wrapper(
    wrapper: Any,
    wrapped: Any,
    assigned: Any = functools.WRAPPER_ASSIGNMENTS,
    updated: Any = functools.WRAPPER_UPDATES,
) -> Any:
    """``functools.update_wrapper`` onto the code's own function, standard attributes only."""
    _require_owned(wrapper, "functools.update_wrapper")
    if not (
        set(assigned) <= set(functools.WRAPPER_ASSIGNMENTS)
        and set(updated) <= set(functools.WRAPPER_UPDATES)
    ):
        raise TypeError(
            "functools.update_wrapper copies only the standard attributes here "
            f"(assigned ⊆ {functools.WRAPPER_ASSIGNMENTS}, updated ⊆ {functools.WRAPPER_UPDATES})"
        )
    module: Any = getattr(wrapper, "__module__", None)
    functools.update_wrapper(wrapper, wrapped, tuple(assigned), tuple(updated))
    if isinstance(wrapper, type):  # a class keeps its owner, or the write rule would lose it
        wrapper.__module__ = module
    return wrapper


def safe_wraps(
    wrapped: Any,
    assigned: Any = functools.WRAPPER_ASSIGNMENTS,
    updated: Any = functools.WRAPPER_UPDATES,
) -> Any:
    """``functools.wraps`` through ``safe_update_wrapper``."""
    return functools.partial(
        safe_update_wrapper, wrapped=wrapped, assigned=assigned, updated=updated
    )


def _owned_argument(function: Any, name: str) -> Any:
    """A decorator that sets attributes on its argument, for the code's own objects only."""

    def decorate(obj: Any, *args: Any, **kwargs: Any) -> Any:
        _require_owned(obj, name)
        return function(obj, *args, **kwargs)

    decorate.__name__ = decorate.__qualname__ = function.__name__
    decorate.__doc__ = function.__doc__
    return decorate


def _check_field_names(names: Any, where: str) -> None:
    for name in names:
        if type(name) is not str or not name.isidentifier() or keyword.iskeyword(name):
            raise TypeError(f"{where}: field name {name!r} is not an identifier")
        if name.startswith("_"):
            raise TypeError(f'{where}: field name {name!r} is not allowed: it starts with "_"')


def _inherited_fields(bases: Any) -> list[Any]:
    names = []
    for base in bases:
        for klass in getattr(base, "__mro__", ()):
            fields = klass.__dict__.get("__dataclass_fields__", {})
            names.extend(fields)
            names.extend(getattr(f, "name", None) for f in fields.values())
    return names


def safe_dataclass(cls: Any = None, /, **options: Any) -> Any:
    """``dataclasses.dataclass``, which generates ``__init__``/``__repr__``/... source from the
    field names: only for the code's own classes, with every field name an identifier."""

    def wrap(klass: Any) -> Any:
        _require_owned(klass, "dataclasses.dataclass")
        own = klass.__dict__.get("__annotations__", {})
        _check_field_names([*own, *_inherited_fields(klass.__mro__[1:])], "dataclasses.dataclass")
        return dataclasses.dataclass(klass, **options)

    return wrap if cls is None else wrap(cls)


def safe_make_dataclass(
    cls_name: Any, fields: Any, *, bases: Any = (), namespace: Any = None, **options: Any
) -> Any:
    """``dataclasses.make_dataclass`` with the same checks, and no private names in ``namespace``."""
    fields = list(fields)
    given = [f if isinstance(f, str) else f[0] for f in fields]
    _check_field_names([*given, *_inherited_fields(bases)], "dataclasses.make_dataclass")
    for key in namespace or {}:
        if type(key) is not str or key.startswith("_"):
            raise TypeError(f"dataclasses.make_dataclass: namespace name {key!r} is not allowed")
    cls = dataclasses.make_dataclass(
        cls_name, fields, bases=tuple(bases), namespace=namespace, **options
    )
    cls.__module__ = SANDBOX_MODULE  # the code made it, so the code may change it
    return cls


def safe_setitem(obj: Any, key: Any, value: Any) -> None:
    """``operator.setitem`` under the write rule."""
    guarded_write(obj)[key] = value


def safe_delitem(obj: Any, key: Any) -> None:
    """``operator.delitem`` under the write rule."""
    del guarded_write(obj)[key]


WRAPPED = {
    id(original): replacement
    for original, replacement in (
        (functools.update_wrapper, safe_update_wrapper),
        (functools.wraps, safe_wraps),
        (
            functools.total_ordering,
            _owned_argument(functools.total_ordering, "functools.total_ordering"),
        ),
        (abc.abstractmethod, _owned_argument(abc.abstractmethod, "abstractmethod")),  # typing's
        (typing.final, _owned_argument(typing.final, "typing.final")),
        (
            typing.runtime_checkable,
            _owned_argument(typing.runtime_checkable, "typing.runtime_checkable"),
        ),
        (dataclasses.dataclass, safe_dataclass),
        (dataclasses.make_dataclass, safe_make_dataclass),
        (operator.setitem, safe_setitem),
        (operator.delitem, safe_delitem),
    )
}

# Every public callable of the modules whose callables take objects and act on them, with
# its verdict. "banned": never handed out; "wrapped": replaced (WRAPPED); "harmless": builds
# new objects or reads its arguments, never writes attributes of objects it was given nor
# runs source built from them (collections.namedtuple generates source, from names it
# checks are identifiers). The other allowed modules (math, re, itertools, heapq, bisect,
# json, statistics, fractions, decimal, random, collections.abc) compute on values only.
REVIEWED = {
    "functools": {
        "banned": "singledispatch singledispatchmethod",
        "wrapped": "update_wrapper wraps total_ordering",
        "harmless": "GenericAlias RLock cache cached_property cmp_to_key get_cache_token "
        "lru_cache namedtuple partial partialmethod recursive_repr reduce",
    },
    "dataclasses": {
        "banned": "FunctionType",
        "wrapped": "dataclass make_dataclass",
        "harmless": "Field FrozenInstanceError GenericAlias InitVar asdict astuple field "
        "fields is_dataclass replace",
    },
    "operator": {
        "banned": "attrgetter methodcaller",
        "wrapped": "setitem delitem",
        "harmless": "abs add and_ call concat contains countOf eq floordiv ge getitem gt iadd "
        "iand iconcat ifloordiv ilshift imatmul imod imul index indexOf inv invert ior ipow "
        "irshift is_ is_not isub itemgetter itruediv ixor le length_hint lshift lt matmul mod "
        "mul ne neg not_ or_ pos pow rshift sub truediv truth xor",
    },
    "string": {"banned": "Formatter", "wrapped": "", "harmless": "Template capwords"},
    "collections": {
        "banned": "",
        "wrapped": "",
        "harmless": "ChainMap Counter OrderedDict UserDict UserList UserString defaultdict "
        "deque namedtuple",
    },
    "typing": {
        "banned": "ForwardRef get_type_hints no_type_check no_type_check_decorator "
        "dataclass_transform MethodDescriptorType MethodWrapperType WrapperDescriptorType "
        "ABCMeta NamedTupleMeta",
        "wrapped": "abstractmethod final runtime_checkable",
        "harmless": "AbstractSet Annotated Any AsyncContextManager AsyncGenerator AsyncIterable "
        "AsyncIterator Awaitable BinaryIO ByteString Callable ChainMap ClassVar Collection "
        "Concatenate Container ContextManager Coroutine Counter DefaultDict Deque Dict Final "
        "FrozenSet Generator Generic GenericAlias Hashable IO ItemsView Iterable Iterator "
        "KeysView List Literal LiteralString Mapping MappingView Match MutableMapping "
        "MutableSequence MutableSet NamedTuple Never NewType NoReturn NotRequired Optional "
        "OrderedDict ParamSpec ParamSpecArgs ParamSpecKwargs Pattern Protocol Required "
        "Reversible Self Sequence Set Sized SupportsAbs SupportsBytes SupportsComplex "
        "SupportsFloat SupportsIndex SupportsInt SupportsRound Text TextIO Tuple Type TypeAlias "
        "TypeGuard TypeVar TypeVarTuple TypedDict Union Unpack ValuesView assert_never "
        "assert_type cast clear_overloads defaultdict get_args get_origin get_overloads io "
        "is_typeddict overload re reveal_type",
    },
    "json": {
        "banned": "",
        "wrapped": "",
        "harmless": "JSONDecodeError JSONDecoder JSONEncoder detect_encoding dump dumps load loads",
    },
}


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
            expression = tree.body.pop()
            assert isinstance(expression, ast.Expr)
            last = ast.Expression(expression.value)
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
