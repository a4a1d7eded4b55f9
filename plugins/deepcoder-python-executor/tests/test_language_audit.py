"""The allow-list audit: library callables that write attributes of other objects or generate
source, reached from an allowed module.

The attacks run the tool's runner *in this process*, with no OS boundary around it, so a
broken guard shows as a file written in this test's folder or a changed module: the
language layer is tested on its own, and the sandbox is not what makes these pass.
"""

from __future__ import annotations

import decimal
import importlib
import types

import pytest
from deepcoder_python_executor import restricted

LIMITS = {"max_output_chars": 4000}


def run_here(code: str) -> dict:
    with decimal.localcontext():  # the code may set this thread's context: keep ours
        return restricted.run_cell({"code": code, "history": [], "seed": 0}, LIMITS)


def test_every_public_callable_of_the_reviewed_modules_has_a_verdict():
    for module_name, verdicts in restricted.REVIEWED.items():
        module = importlib.import_module(module_name)
        public = {
            name
            for name in dir(module)
            if not name.startswith("_")
            and callable(getattr(module, name))
            and not isinstance(getattr(module, name), types.ModuleType)
        }
        listed = [name for names in verdicts.values() for name in names.split()]
        assert len(listed) == len(set(listed)), f"{module_name}: a name with two verdicts"
        assert set(listed) == public, (
            f"{module_name}: unreviewed {sorted(public - set(listed))}, "
            f"gone {sorted(set(listed) - public)}"
        )


def test_banned_and_wrapped_names_are_what_the_code_gets():
    for module_name, verdicts in restricted.REVIEWED.items():
        module = importlib.import_module(module_name)
        for name in verdicts["banned"].split():
            with pytest.raises(AttributeError, match="not allowed|not available"):
                restricted.module_attribute(module, name)
        for name in verdicts["wrapped"].split():
            got = restricted.module_attribute(module, name)
            assert (
                got is not getattr(module, name)
                and got is restricted.WRAPPED[id(getattr(module, name))]
            ), f"{module_name}.{name}"


# Each: code that, with the guard broken, writes MARKER or changes library state; and a
# fragment of the refusal. {marker} is a path in this test's folder.
ATTACKS = {
    # the reported escapes
    "update-wrapper-globals": (
        "import functools, json\ndef g():\n    pass\n"
        "functools.update_wrapper(g, json.dumps, assigned=(), updated=('__globals__',))\n"
        "def h():\n    open('{marker}', 'w').write('x')\nh()",
        "copies only the standard attributes",
    ),
    "dataclass-field-name-injection": (
        "import dataclasses\nfld = dataclasses.field(default=0)\n"
        "C = dataclasses.make_dataclass('C', [('a', int, fld)])\n"
        "fld.name = \"a,open('{marker}','w').write('x'))#\"\n"
        "D = dataclasses.make_dataclass('D', [], bases=(C,), init=False, repr=False)\nD() == D()",
        "not created by this code",
    ),
    # variants of the same classes
    "wraps-globals": (
        "import functools, json\n@functools.wraps(json.dumps, updated=('__globals__',))\n"
        "def g():\n    pass\ndef h():\n    open('{marker}', 'w')\nh()",
        "copies only the standard attributes",
    ),
    "update-wrapper-assigned-globals": (
        "import functools, json\ndef g():\n    pass\n"
        "functools.update_wrapper(g, json.dumps, assigned=('__globals__',), updated=())",
        "copies only the standard attributes",
    ),
    "update-wrapper-onto-library-function": (
        "import functools, json\ndef g():\n    pass\nfunctools.update_wrapper(json.dumps, g)",
        "may only change what this code created",
    ),
    "update-wrapper-onto-field": (
        "import functools, dataclasses\nfld = dataclasses.field()\n"
        'class N:\n    pass\nn = N()\nn.name = \'x) or open("{marker}", "w")#\'\n'
        "functools.update_wrapper(fld, n, assigned=('name',), updated=())",
        "may only change what this code created",
    ),
    "wraps-partial-onto-library": (
        "import functools, json\ndef g():\n    pass\nfunctools.wraps(g)(json.loads)",
        "may only change what this code created",
    ),
    "setattr-field-name": (
        "import dataclasses\nfld = dataclasses.field()\nsetattr(fld, 'name', 'a=open(\"{marker}\")')",
        "not created by this code",
    ),
    "field-type-write": (
        "import dataclasses\nfld = dataclasses.field()\nfld.type = 'x'",
        "not created by this code",
    ),
    "field-default-factory-write": (
        "import dataclasses\nfld = dataclasses.field()\nfld.default_factory = print",
        "not created by this code",
    ),
    "make-dataclass-bad-name": (
        "import dataclasses\ndataclasses.make_dataclass('C', ['a=open(\"{marker}\",\"w\")'])",
        "is not an identifier",
    ),
    "make-dataclass-private-name": (
        "import dataclasses\ndataclasses.make_dataclass('C', ['_secret'])",
        'starts with "_"',
    ),
    "make-dataclass-dunder-namespace": (
        "import dataclasses\ndataclasses.make_dataclass('C', ['a'], namespace={'__init_subclass__': print})",
        "namespace name",
    ),
    "dataclass-on-library-class": (
        "import dataclasses, json\ndataclasses.dataclass(json.JSONDecoder)",
        "may only change what this code created",
    ),
    "total-ordering-on-library-class": (
        "import functools, json\nfunctools.total_ordering(json.JSONEncoder)",
        "may only change what this code created",
    ),
    "final-on-library-function": (
        "import typing, json\ntyping.final(json.dumps)",
        "may only change what this code created",
    ),
    "abstractmethod-on-library-function": (
        "import typing, json\ntyping.abstractmethod(json.dumps)",
        "may only change what this code created",
    ),
    "runtime-checkable-on-library": (
        "import typing\ntyping.runtime_checkable(typing.SupportsInt)",
        "may only change what this code created",
    ),
    "no-type-check": ("import typing, json\ntyping.no_type_check(json)", "not allowed"),
    "dataclass-transform": ("import typing\ntyping.dataclass_transform()", "not allowed"),
    "abcmeta-three-args": ("import typing\ntyping.ABCMeta('X', (), {{}})", "metaclasses"),
    "namedtuplemeta": ("import typing\ntyping.NamedTupleMeta('X', (), {{}})", "metaclasses"),
    "function-type": ("import dataclasses\ndataclasses.FunctionType", "not allowed"),
    "forward-ref-instance": (
        'import typing\ntyping.get_args(typing.List[\'open("{marker}", "w")\'])[0]',
        "ForwardRef is not allowed",
    ),
    "operator-setitem-library": (
        "import operator, dataclasses\nfld = dataclasses.field()\n"
        "operator.setitem(fld, 'name', 'x')",
        "not created by this code",
    ),
    "setattr-library-function": ("import json\nsetattr(json.dumps, 'x', 1)", "not created"),
    "namedtuple-bad-field": (
        "import collections\ncollections.namedtuple('X', ['a=open(\"{marker}\",\"w\")'])",
        "identifiers",
    ),
    "typing-namedtuple-bad-field": (
        "import typing\ntyping.NamedTuple('X', [('a=open(\"{marker}\",\"w\")', int)])",
        "identifiers",
    ),
}


def test_corpus_is_large_enough():
    assert len(ATTACKS) >= 27  # the two reported escapes and 25 further attempts


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_is_refused_without_the_os_boundary(tmp_path, name):
    code, expected = ATTACKS[name]
    marker = tmp_path / "pwned"
    source = code.replace("{marker}", str(marker)).replace("{{", "{").replace("}}", "}")
    result = run_here(source)
    assert not marker.exists()
    assert result["status"] == "error", result
    assert expected in result["error"], result["error"]


def test_module_state_is_handed_out_as_copies():
    import typing

    before = list(typing.EXCLUDED_ATTRIBUTES)
    result = run_here("import typing\ntyping.EXCLUDED_ATTRIBUTES.append('__globals__')\n1")
    assert result["status"] == "ok"
    assert list(typing.EXCLUDED_ATTRIBUTES) == before


def test_ordinary_uses_of_the_wrapped_callables_still_work():
    code = (
        "import dataclasses, functools, decimal, collections, typing\n"
        "P = dataclasses.make_dataclass('P', ['x', ('y', int, dataclasses.field(default=2))])\n"
        "@functools.wraps(len)\ndef f(a):\n    return a\n"
        "@functools.total_ordering\nclass V:\n"
        "    def __init__(self, v):\n        self.v = v\n"
        "    def __lt__(self, o):\n        return self.v < o.v\n"
        "    def __eq__(self, o):\n        return self.v == o.v\n"
        "class Shape:\n    @typing.final\n    def area(self):\n        return 1\n"
        "decimal.getcontext().prec = 30\n"
        "p = P(1)\np.x = 5\nd = {}\nimport operator\noperator.setitem(d, 'k', 1)\n"
        "(p, str(decimal.Decimal(1) / 7), V(1) <= V(2), f(3), d, Shape().area())"
    )
    result = run_here(code)
    assert result["status"] == "ok", result
    assert result["value"] == (
        "(P(x=5, y=2), '0.142857142857142857142857142857', True, 3, {'k': 1}, 1)"
    )
