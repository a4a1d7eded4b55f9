import deepcoder_plugin_example
import pytest

from deepcoder_core.plugins import PluginManager
from deepcoder_core.protocols import Tool


@pytest.fixture
def calculator():
    manager = PluginManager()
    manager.add(deepcoder_plugin_example, name="deepcoder-plugin-example")
    return manager.build("tool", "calculator")


def test_registers_a_tool(calculator):
    assert isinstance(calculator, Tool)
    assert calculator.name == "calculator"


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("2 * (3 + 4) ** 2", 98),
        ("-7 // 2", -4),
        ("sqrt(16) + abs(-1)", 5.0),
        ("max(1, pi)", 3.141592653589793),
    ],
)
def test_evaluates_arithmetic(calculator, expression, value):
    observation = calculator.run(expression, timeout=1)
    assert observation.ok
    assert observation.meta["value"] == pytest.approx(value)


@pytest.mark.parametrize(
    "expression",
    [
        "__import__('os').system('id')",
        "(1).__class__",
        "open('/etc/passwd')",
        "9 ** 9 ** 9",
        "1 / 0",
        "2 +",
    ],
)
def test_refuses_anything_but_arithmetic(calculator, expression):
    observation = calculator.run(expression, timeout=1)
    assert not observation.ok
    assert observation.text  # a readable reason for the agent
