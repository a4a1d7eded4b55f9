"""A `calculator` tool: evaluates arithmetic safely by walking the expression's AST.

This is the template plugin: a module with one ``@hookimpl`` that registers a component
factory. Copy the folder, rename the distribution, module and entry point, and edit.
"""

import ast
import math
import operator

from deepcoder_core import Observation, hookimpl

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCTIONS = {
    "sqrt": math.sqrt,
    "log": math.log,
    "abs": abs,
    "round": round,
    "min": min,
    "max": max,
}
_CONSTANTS = {"pi": math.pi, "e": math.e}


class Calculator:
    """Evaluate an arithmetic expression: + - * / // % **, parentheses, sqrt, log, abs, round, min, max."""

    name = "calculator"
    description = "Evaluate an arithmetic expression such as `2 * (3 + 4) ** 2` or `sqrt(2)`."

    def __init__(self, max_exponent: int = 1000):
        self.max_exponent = max_exponent  # keeps `9 ** 9 ** 9` from eating the machine

    def run(self, input, *, timeout=5.0, session=None):
        try:
            value = self._eval(ast.parse(input.strip(), mode="eval").body)
        except (SyntaxError, ValueError, TypeError, ZeroDivisionError, OverflowError) as exc:
            return Observation(f"{type(exc).__name__}: {exc}", ok=False)
        return Observation(repr(value), ok=True, meta={"value": value})

    def _eval(self, node):
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return node.value
        if isinstance(node, ast.Name) and node.id in _CONSTANTS:
            return _CONSTANTS[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = self._eval(node.left), self._eval(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > self.max_exponent:
                raise ValueError(f"exponent {right} is larger than {self.max_exponent}")
            return _BINARY[type(node.op)](left, right)
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](self._eval(node.operand))
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in _FUNCTIONS
            and not node.keywords
        ):
            return _FUNCTIONS[node.func.id](*(self._eval(arg) for arg in node.args))
        raise ValueError(f"unsupported expression: {ast.unparse(node)}")


@hookimpl
def register_tools(register):
    register("calculator", Calculator)
