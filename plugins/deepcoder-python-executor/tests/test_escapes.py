"""Escape attempts and resource attacks against the ``python`` tool (and the checking path).

Every escape tries to read a secret file, read a secret environment variable of this
(parent) process, or run a command. The secret file is world-readable in a world-readable
folder, so for the python tool the RestrictedPython guards are what keeps it out of reach
(``test_control_*`` shows an unguarded sandbox call can read it): none may succeed, and each
must get a clear error observation.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
from deepcoder_python_executor import PythonTool

from deepcoder_core.checking import check_solution
from deepcoder_core.sandbox import SandboxPool

ENV_NAME = "DEEPCODER_TEST_SECRET"


@pytest.fixture(scope="module")
def secret():
    token = f"secret-{uuid.uuid4().hex}"
    folder = Path(tempfile.mkdtemp(prefix="deepcoder-secret-"))
    folder.chmod(0o755)
    path = folder / "secret.txt"
    path.write_text(token)
    path.chmod(0o644)
    old = os.environ.get(ENV_NAME)
    os.environ[ENV_NAME] = token
    yield SimpleNamespace(token=token, path=str(path), marker=str(folder / "pwned"))
    if old is None:
        os.environ.pop(ENV_NAME, None)
    else:
        os.environ[ENV_NAME] = old
    shutil.rmtree(folder)


@pytest.fixture(scope="module")
def pool(secret):  # started after the secret is in the environment, so it could inherit it
    with SandboxPool(size=2) as pool:
        yield pool


@pytest.fixture(scope="module")
def tool(pool):
    return PythonTool(timeout=5.0, pool=pool)


P, E = "{path}", ENV_NAME
ESCAPES = {
    # imports of dangerous modules
    "import-os-environ": (f"import os\nos.environ['{E}']", "not allowed"),
    "import-os-system": ("import os\nos.system('touch {marker}')", "not allowed"),
    "import-sys": ("import sys\nsys.modules['os'].environ", "not allowed"),
    "import-subprocess": ("import subprocess\nsubprocess.run(['cat', '{path}'])", "not allowed"),
    "import-ctypes": ("import ctypes\nctypes.CDLL(None).system(b'touch {marker}')", "not allowed"),
    "import-importlib": ("import importlib\nimportlib.import_module('os')", "not allowed"),
    "from-os-import": ("from os import system\nsystem('touch {marker}')", "not allowed"),
    "relative-import": ("from . import os", "not allowed"),
    "dunder-import": ("__import__('os').system('touch {marker}')", 'starts with "_"'),
    # file and code builtins
    "open": ("open('{path}').read()", "NameError"),
    "exec": ("exec(\"import os; print(open('{path}').read())\")", "not allowed"),
    "eval": ("eval(\"open('{path}').read()\")", "not allowed"),
    "compile": ("compile('1', 'x', 'exec')", "NameError"),
    "builtins-dict": ("__builtins__['open']('{path}').read()", 'starts with "_"'),
    "vars": ("vars()", "NameError"),
    "globals": ("globals()['__builtins__']", "NameError"),
    "type-3-args": ("type('X', (), {{}})", "three arguments"),
    "type-dunder": ("getattr(type(()), '__subclasses__')()", 'starts with "_"'),
    "dir-no-arg": ("dir()", "needs an argument"),
    "metaclass-via-type": ("type(int)('X', (), {{}})", "three arguments"),
    "abcmeta-via-type": (
        "import collections.abc\ntype(collections.abc.Iterable)('X', (), {{}})",
        "metaclass",
    ),
    # attribute walks
    "subclasses-walk": ("().__class__.__bases__[0].__subclasses__()", 'starts with "_"'),
    "getattr-dunder": (
        "getattr(getattr((), '__cl' + 'ass__'), '__subcl' + 'asses__')()",
        'starts with "_"',
    ),
    "getattr-globals": ("def f(): pass\ngetattr(f, '__glo' + 'bals__')", 'starts with "_"'),
    "mro": ("getattr(int, 'mro')()", "interpreter internals"),
    "fstring-dunder": ("f'{{(1).__class__}}'", 'starts with "_"'),
    # format strings
    "str-format": ("'{{0.__class__.__mro__}}'.format(())", "format is not allowed"),
    "str-format-map": (
        "def f(): pass\n'{{x.__globals__}}'.format_map({{'x': f}})",
        "format_map is not allowed",
    ),
    "str-type-format": ("str.format('{{0.__class__}}', 1)", "format is not allowed"),
    "getattr-format": ("getattr('{{0.__class__}}', 'format')(1)", "format is not allowed"),
    "userstring-format": (
        "import collections\ncollections.UserString('{{0.__class__}}').format(1)",
        "format is not allowed",
    ),
    "string-formatter": (
        "import string\nstring.Formatter().format('{{0.__class__}}', 1)",
        "string.Formatter is not allowed",
    ),
    "from-string-formatter": ("from string import Formatter", "cannot import name 'Formatter'"),
    "operator-methodcaller": (
        "import operator\noperator.methodcaller('format', 1)('{{0.__class__}}')",
        "operator.methodcaller is not allowed",
    ),
    "operator-attrgetter": (
        "import operator\ndef f(): pass\noperator.attrgetter('__globals__')(f)",
        "operator.attrgetter is not allowed",
    ),
    # leaks through exceptions
    "attributeerror-obj": (
        "import string\ntry:\n    string.nope\nexcept AttributeError as e:\n    m = e.obj\nm",
        "AttributeError.obj is not allowed",
    ),
    "attributeerror-obj-getattr": (
        "try:\n    (1).nope\nexcept AttributeError as e:\n    getattr(e, 'obj')",
        "AttributeError.obj is not allowed",
    ),
    "traceback-frame": (
        "try:\n    1/0\nexcept Exception as e:\n    e.__traceback__.tb_frame.f_globals",
        'starts with "_"',
    ),
    "try-except-star": (
        "try:\n    raise ExceptionGroup('g', [ValueError()])\nexcept* ValueError:\n    pass",
        "TryStar statements are not allowed",
    ),
    # shadowing the guards
    "posonly-shadow-guard": ("def f(_getattr_, /):\n    return _getattr_\nf(getattr)", '"_'),
    "lambda-shadow-guard": ("(lambda _getiter_, /: 1)(None)", '"_'),
    "walrus-shadow-guard": ("(_write_ := None)", '"_'),
    "del-guard": ("del _getattr_", '"_'),
    # generator and frame attributes
    "gi-frame": ("def g():\n    yield 1\ng().gi_frame.f_back.f_globals", "gi_frame"),
    "gi-frame-getattr": (
        "def g():\n    yield 1\ngetattr(getattr(g(), 'gi_' + 'frame'), 'f_globals')",
        "interpreter internals",
    ),
    "f-back-getattr": ("getattr(None, 'f_' + 'back')", "interpreter internals"),
    # module attributes that are other modules
    "typing-sys": ("import typing\ntyping.sys.modules['os'].environ", "not available"),
    "json-codecs-open": ("import json\njson.codecs.open('{path}').read()", "not available"),
    "dataclasses-inspect": ("import dataclasses\ndataclasses.sys", "not available"),
    "random-private-os": ("import random\ngetattr(random, '_os')", 'starts with "_"'),
    # string evaluation through annotations
    "get-type-hints": (
        "import typing\ndef f(x: \"open('{path}').read()\"):\n    pass\ntyping.get_type_hints(f)",
        "typing.get_type_hints is not allowed",
    ),
    "singledispatch": (
        "import functools\n@functools.singledispatch\ndef f(a):\n    return a\nf",
        "functools.singledispatch is not allowed",
    ),
    "forward-ref": ("import typing\ntyping.ForwardRef(\"open('{path}')\")", "not allowed"),
    # writes to shared objects
    "module-write": ("import math\nmath.pi = 3", "read-only"),
    "setattr-builtin-type": ("setattr(int, 'x', 1)", "not created by this code"),
}


def _run(tool, code, secret, **kwargs):
    source = code.replace("{path}", secret.path).replace("{marker}", secret.marker)
    source = source.replace("{{", "{").replace("}}", "}")
    return tool.run(source, timeout=5.0, **kwargs)


def test_corpus_is_large_enough():
    assert len(ESCAPES) >= 25


@pytest.mark.parametrize("name", sorted(ESCAPES))
def test_escape_attempt_fails_with_clear_observation(tool, secret, name):
    code, expected = ESCAPES[name]
    observation = _run(tool, code, secret)
    everything = observation.text + json.dumps(observation.meta)
    assert secret.token not in everything
    assert not os.path.exists(secret.marker)
    assert not observation.ok, observation.text
    assert expected in observation.text, observation.text


def test_control_unguarded_sandbox_reads_the_world_readable_file(secret):
    """Shows the corpus is not vacuous: ordinary code at the weaker isolation level (no file
    system view of its own) can read the file; the namespaces level hides it as well."""
    with SandboxPool(size=1, isolation="rlimits") as weak:
        result = weak.run(f"open({secret.path!r}).read()", timeout=5)
    assert result.ok and secret.token in result.data["value"]


def test_control_environment_never_reaches_the_sandbox(pool, secret):
    """... but not the parent's environment, even without RestrictedPython."""
    assert os.environ[ENV_NAME] == secret.token
    result = pool.run("import os\ndict(os.environ)", timeout=5)
    assert result.ok and result.data["value"] == "{}"


@pytest.mark.skipif(os.geteuid() != 0, reason="the switch to 'nobody' happens only as root")
def test_parent_environ_file_is_unreadable_as_nobody(pool, secret):
    code = f"open('/proc/{os.getpid()}/environ').read()"
    result = pool.run(code, timeout=5)  # namespaces: the host's processes are not even visible
    assert not result.ok and "FileNotFoundError" in result.error
    assert secret.token not in result.error
    with SandboxPool(size=1, isolation="rlimits") as weak:
        result = weak.run(code, timeout=5)
    assert not result.ok and "PermissionError" in result.error
    assert secret.token not in result.error


# ---------------------------------------------------------------------------- resources

RESOURCE_ATTACKS = {
    "infinite-loop": ("while True:\n    pass", "timed out", 1.0),
    "huge-power": ("10 ** 10 ** 10", "timed out", 1.0),
    "huge-allocation": ("[0] * (10 ** 10)", "MemoryError", 5.0),
    "growing-allocation": ("x = []\nwhile True:\n    x.append(' ' * 10 ** 7)", "MemoryError", 5.0),
    "deep-recursion": ("def f(n):\n    return f(n + 1)\nf(0)", "RecursionError", 5.0),
    "output-flood": ("print('x' * 10 ** 7)", "output truncated", 5.0),
    "print-loop-flood": ("for i in range(200000):\n    print(i)", "output truncated", 5.0),
}


def _healthy(pool, tool):
    assert len(pool.worker_pids) == pool.size
    assert all(os.path.exists(f"/proc/{pid}") for pid in pool.worker_pids)
    assert tool.run("1 + 1", timeout=5).text == "2"


@pytest.mark.parametrize("name", sorted(RESOURCE_ATTACKS))
def test_resource_attack_through_python_tool(tool, pool, name):
    code, expected, timeout = RESOURCE_ATTACKS[name]
    observation = tool.run(code, timeout=timeout)
    assert expected in observation.text, observation.text
    assert observation.meta["duration"] < timeout + 1.0
    _healthy(pool, tool)


def test_fork_attempt_through_python_tool(tool, pool):
    observation = tool.run("import os\nos.fork()", timeout=5)
    assert not observation.ok and "not allowed" in observation.text
    _healthy(pool, tool)


CHECK_ATTACKS = {
    "infinite-loop": ("def f(x):\n    while True:\n        pass", "timed out", 1.0),
    "huge-power": ("def f(x):\n    return 10 ** 10 ** 10", "timed out", 1.0),
    "huge-allocation": ("def f(x):\n    return [0] * (10 ** 10)", "MemoryError", 5.0),
    "deep-recursion": (
        "import sys\nsys.setrecursionlimit(10 ** 6)\ndef f(x):\n    return f(x + 1)",
        "",  # ends by memory, stack or time: any clear error will do
        2.0,
    ),
    "output-flood": ("def f(x):\n    print('x' * 10 ** 7)\n    return x", "assertion failed", 5.0),
    "fork": ("import os\ndef f(x):\n    os.fork()\n    return x", "BlockingIOError", 5.0),
    "thread": (
        "import threading\ndef f(x):\n    threading.Thread(target=print).start()\n    return x",
        "can't start new thread",
        5.0,
    ),
    "command": ("import os\ndef f(x):\n    return os.system('true')", "assertion failed", 5.0),
    "exit": ("import os\nos._exit(0)", "the solution process ended", 5.0),
}


@pytest.mark.parametrize("name", sorted(CHECK_ATTACKS))
def test_resource_attack_through_checking(pool, tool, name):
    code, expected, timeout = CHECK_ATTACKS[name]
    problem = SimpleNamespace(id="attack", tests="assert f(1) == 2\n", entry_point="f")
    result = check_solution(problem, code, timeout=timeout, pool=pool)
    assert not result.success and result.error, result
    assert expected in result.error, result.error
    _healthy(pool, tool)
