"""Rendering a chat template in bounded memory and time: BoundedSandbox, the Jinja environment every chat template of
this process renders in (transformers' apply_chat_template included: r1lib.compat.bound_chat_templates installs it),
and TemplateRefused, the permanent error that names the template's file.

A chat template is untrusted text. Jinja's immutable sandbox keeps it away from Python internals, files and the
environment, but not from ``{% set s = 'A' * 1500000000 %}`` (6 GB) or nested ``range(100000)`` loops (hours).
BoundedSandbox counts, per rendering (and per compilation, which folds constant expressions):
  - steps: loop iterations, macro and caller calls (``MAX_STEPS``), and the clock (``DEADLINE_S``);
  - what the template makes, in characters (list items count ``ITEM``): everything it writes, ``~`` joins, the
    results of ``+ * % **``, slices, filters and method calls; at most ``max(BASE_UNITS, PER_INPUT x`` the
    characters of the messages and other inputs ``)``, so a long legitimate row is never refused.
Operations that could make a huge value in one step are checked before they run, from their operands: a repeat
count, a width, the numbers of a format string, a join separator or replacement times the pieces, a power's size.
A template over a limit raises TemplateRefused (a Jinja SecurityError and a PermanentError: no retry) naming the
file the template came from (``name_template``) and the limit.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from functools import update_wrapper
from itertools import islice
from typing import Any

from jinja2 import nodes
from jinja2.compiler import CodeGenerator
from jinja2.environment import Template
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from r1lib.errors import PermanentError

MAX_STEPS = 1_000_000
DEADLINE_S = 10.0
BASE_UNITS = 1 << 26  # 64 Mi characters
PER_INPUT = 32
ITEM = 8  # a list item costs this many characters (a pointer)
MAX_INT_BITS = 1 << 16
MAX_INDENT = 1000

_local = threading.local()
_SOURCES: dict[str, str] = {}  # template text -> the file it came from
_NUMBERS = re.compile(r"\d+")


class TemplateRefused(SecurityError, PermanentError):
    """A chat template that went past a limit of BoundedSandbox: refused for good, naming its file."""


def name_template(template: Any, where: str, replace: bool = True) -> None:
    """Remember which file a chat template (a string, or a tokenizer's dict of named ones) came from, so that a
    refusal names it (the latest file named, unless ``replace`` is off)."""
    texts = template.values() if isinstance(template, dict) else [template]
    for text in texts:
        if isinstance(text, str) and (replace or text not in _SOURCES):
            if len(_SOURCES) >= 1000:
                _SOURCES.pop(next(iter(_SOURCES)))
            _SOURCES[text] = where


def template_file(model_dir: str) -> str:
    """The file a model folder's (or hub id's) chat template is read from, for messages."""
    import os

    for name in ("chat_template.jinja", "chat_template.json", "tokenizer_config.json"):
        path = os.path.join(model_dir, name)
        if os.path.isfile(path):
            return path
    return f"{model_dir} (its tokenizer's chat template)"


def _size(x: Any, depth: int = 1) -> int:
    """Characters (strings) and items (containers, ``ITEM`` each, with their strings ``depth`` levels down)."""
    kind = type(x)
    if kind is str:
        return len(x)
    if kind is bool or x is None:
        return 1
    if kind is dict and depth:
        n = ITEM * len(x)
        for item in x.values():
            n += len(item) if type(item) is str else _size(item, depth - 1)
        return n
    if isinstance(x, str):
        return str.__len__(x)
    if isinstance(x, (list, tuple, dict, set, frozenset)):
        n = ITEM * len(x)
        if depth:
            for item in x.values() if isinstance(x, dict) else x:
                n += _size(item, depth - 1)
        return n
    if isinstance(x, range):
        return ITEM * len(x)
    if isinstance(x, int):
        return x.bit_length() >> 2
    return 1


def _ints(values: Any) -> Iterator[int]:
    for value in values:
        if isinstance(value, int):
            yield value
        elif isinstance(value, (tuple, list)):
            yield from (v for v in value if isinstance(v, int))
        elif isinstance(value, dict):
            yield from (v for v in value.values() if isinstance(v, int))


def _format_numbers(text: Any) -> int:
    """The sum of the numbers in a format string (its widths and precisions, at most)."""
    return sum(int(n) for n in _NUMBERS.findall(text)[:1000]) if isinstance(text, str) else 0


class _Budget:
    __slots__ = ("env", "units", "steps", "limit", "deadline", "calls")

    def __init__(self, env: BoundedSandbox, input_units: int = 0):
        self.env, self.units, self.steps, self.calls = env, 0, 0, 0
        self.limit = max(BASE_UNITS, PER_INPUT * input_units)
        self.deadline = time.monotonic() + DEADLINE_S

    def refuse(self, what: str) -> None:
        where = _SOURCES.get(getattr(self.env, "r1_template", None))
        raise TemplateRefused(
            f"{where + ': ' if where else ''}chat template refused: {what}; a rendering may make at most "
            f"{self.limit:,} characters (list items count {ITEM}), take {MAX_STEPS:,} loop steps and {DEADLINE_S:g} s "
            "(r1lib/data/template_sandbox.py). Fix or replace the template"
        )

    def clock(self) -> None:
        self.calls += 1
        if not self.calls & 255 and time.monotonic() > self.deadline:
            self.refuse(f"still rendering after {DEADLINE_S:g} s")

    def check(self, units: int, what: str) -> None:
        """Before an operation that would make ``units``."""
        if self.units + units > self.limit:
            self.refuse(f"{what} would make about {units:,} characters")

    def charge(self, units: int) -> None:
        self.units += units
        if self.units > self.limit:
            self.refuse(f"it made more than {self.limit:,} characters")
        self.clock()

    def step(self) -> None:
        self.steps += 1
        if self.steps > MAX_STEPS:
            self.refuse(f"more than {MAX_STEPS:,} loop steps")
        if not self.steps & 1023 and time.monotonic() > self.deadline:
            self.refuse(f"still rendering after {DEADLINE_S:g} s")

    def ints(self, values: Any, what: str) -> None:
        for value in _ints(values):
            if value > self.limit or -value > self.limit:
                self.refuse(f"{what} with the number {value:,}")


def _budget(env: BoundedSandbox) -> _Budget:
    budget = getattr(_local, "budget", None)
    if budget is None or budget.env is not env:
        budget = _local.budget = _Budget(env)
    return budget


def _made(x: Any) -> int:
    if type(x) is str or isinstance(x, str):
        return str.__len__(x)
    if isinstance(x, (list, tuple, dict, set, frozenset, range)):
        return ITEM * len(x)
    return 1


def _materialize(budget: _Budget, value: Any, what: str) -> list:
    """An iterator's items (a generator from map or select), so that its size can be checked before use."""
    cap = budget.limit // ITEM + 1
    items = list(islice(value, cap))
    if len(items) >= cap:
        budget.refuse(f"{what} over more than {cap - 1:,} items")
    return items


_ITEMWISE = frozenset(
    "list sort unique map select reject selectattr rejectattr groupby dictsort reverse items batch slice".split()
)


def _filter_estimate(name: str, value: Any, args: tuple, kwargs: dict) -> int:
    """About what the filter ``name`` makes from ``value`` (at most, for the filters that can multiply)."""
    base = _size(value)
    if name == "join":
        sep = args[0] if args else kwargs.get("d", "")
        pieces = len(value) if hasattr(value, "__len__") else 1
        return base + (str.__len__(sep) if isinstance(sep, str) else 0) * pieces
    if name == "replace":
        new = args[1] if len(args) > 1 else kwargs.get("new", "")
        return (base + 1) * (1 + (str.__len__(new) if isinstance(new, str) else 1))
    if name == "indent":
        width = args[0] if args else kwargs.get("width", 4)
        width = str.__len__(width) if isinstance(width, str) else width if isinstance(width, int) else 4
        lines = value.count("\n") + 1 if isinstance(value, str) else 1
        return base + lines * max(width, 0)
    if name == "wordwrap":
        wrap = args[2] if len(args) > 2 else kwargs.get("wrapstring") or "\n"
        return base * (1 + (str.__len__(wrap) if isinstance(wrap, str) else 1))
    if name == "center":
        width = args[0] if args else kwargs.get("width", 80)
        return base + (width if isinstance(width, int) else 0)
    if name == "format":
        return base + _format_numbers(value) + sum(_size(a) for a in args) + sum(_size(v) for v in kwargs.values())
    if name in ("batch", "slice"):
        count = args[0] if args else 0
        return base + ITEM * (count if isinstance(count, int) else 0)
    if name == "sum":
        return _size(value, 2)
    if name in _ITEMWISE and isinstance(value, str):
        return ITEM * (base + 1)
    return base + sum(_size(a) for a in args)


def _bounded_filter(env: BoundedSandbox, name: str, func: Any) -> Any:
    pass_arg = getattr(func, "jinja_pass_arg", None)
    first = 1 if pass_arg is not None else 0

    def bounded(*args: Any, **kwargs: Any) -> Any:
        budget = _budget(env)
        if len(args) > first:
            value = args[first]
            if isinstance(value, Iterator):
                value = _materialize(budget, value, f"the filter {name}")
                args = (*args[:first], value, *args[first + 1 :])
            rest = args[first + 1 :]
            budget.ints((*rest, kwargs), f"the filter {name}")
            if name == "tojson" and any(i > MAX_INDENT for i in _ints((*rest, kwargs))):
                budget.refuse(f"tojson with an indent over {MAX_INDENT}")
            budget.check(_filter_estimate(name, value, rest, kwargs), f"the filter {name}")
        result = func(*args, **kwargs)
        budget.charge(_made(result))
        return result

    update_wrapper(bounded, func)
    bounded.r1_bounded = True
    return bounded


def _step_node() -> nodes.ExprStmt:
    """A step of the rendering budget, put first in each loop, macro and caller body (Jinja allows no node types of
    our own: BoundedCodeGenerator compiles this marker, which no template syntax makes, to a plain call)."""
    return nodes.ExprStmt(nodes.EnvironmentAttribute("r1_step"))


class BoundedCodeGenerator(CodeGenerator):
    """Jinja's code generator, with every output (literal text too) and every ``~`` join counted, and the step
    marker compiled to a budget step."""

    def visit_ExprStmt(self, node: nodes.ExprStmt, frame: Any) -> None:
        if isinstance(node.node, nodes.EnvironmentAttribute) and node.node.name == "r1_step":
            self.writeline("environment.r1_step()", node)
        else:
            super().visit_ExprStmt(node, frame)

    def _output_const_repr(self, group: Any) -> str:
        return f"environment.r1_out({super()._output_const_repr(group)})"

    def _output_child_pre(self, node: Any, frame: Any, finalize: Any) -> None:
        self.write("environment.r1_out(")
        super()._output_child_pre(node, frame, finalize)

    def _output_child_post(self, node: Any, frame: Any, finalize: Any) -> None:
        super()._output_child_post(node, frame, finalize)
        self.write(")")

    def visit_Concat(self, node: nodes.Concat, frame: Any) -> None:
        if frame.eval_ctx.volatile or frame.eval_ctx.autoescape:
            return super().visit_Concat(node, frame)  # pragma: no cover - chat templates do not autoescape
        self.write("environment.r1_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


def _input_units(values: Any) -> int:
    """What a rendering is given (the messages, tools, special tokens), in characters and items."""
    n = 0
    for value in values.values() if isinstance(values, dict) else ():
        kind = type(value)
        if kind is str:
            n += len(value)
        elif kind is list or kind is dict or kind is tuple:
            n += _size(value, 3)
    return n


class BoundedTemplate(Template):
    """A template whose every rendering starts a new budget; recursion too deep for Python is a refusal too."""

    def new_context(self, vars=None, shared=False, locals=None):  # noqa: A002 - Jinja's signature
        _local.budget = _Budget(self.environment, _input_units(vars))
        return super().new_context(vars, shared, locals)

    def render(self, *args: Any, **kwargs: Any) -> str:
        try:
            return super().render(*args, **kwargs)
        except RecursionError:
            _budget(self.environment).refuse("recursion deeper than Python allows")

    def generate(self, *args: Any, **kwargs: Any) -> Iterator[str]:
        try:
            yield from super().generate(*args, **kwargs)
        except RecursionError:
            _budget(self.environment).refuse("recursion deeper than Python allows")


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox with a budget per rendering (see the module)."""

    intercepted_binops = frozenset({"+", "*", "%", "**"})
    code_generator_class = BoundedCodeGenerator
    template_class = BoundedTemplate

    # compiling

    def from_string(self, source: Any, globals=None, template_class=None):  # noqa: A002 - Jinja's signature
        if isinstance(source, str):
            self.r1_template = source
        for name, func in list(self.filters.items()):
            if not getattr(func, "r1_bounded", False):
                self.filters[name] = _bounded_filter(self, name, func)
        return super().from_string(source, globals, template_class)

    def _generate(self, source: nodes.Template, name, filename, defer_init=False):
        for node in source.find_all((nodes.For, nodes.Macro, nodes.CallBlock)):
            node.body.insert(0, _step_node())
        previous = getattr(_local, "budget", None)
        _local.budget = _Budget(self)  # constant expressions are folded now
        try:
            return super()._generate(source, name, filename, defer_init)
        finally:
            _local.budget = previous

    # hooks of the generated code

    def r1_step(self) -> None:
        _budget(self).step()

    def r1_out(self, text: str) -> str:
        _budget(self).charge(str.__len__(text))
        return text

    def r1_concat(self, parts: tuple) -> str:
        texts = [str(p) for p in parts]
        _budget(self).charge(sum(map(str.__len__, texts)))
        return "".join(texts)

    # the sandbox's own hooks

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        budget = _budget(self)
        if operator == "+":  # operands already counted: the sum is counted once made (at most twice the limit)
            result = left + right
            budget.charge(_made(result))
            return result
        if operator == "*":
            if isinstance(left, int) and isinstance(right, int):
                if left.bit_length() + right.bit_length() > MAX_INT_BITS:
                    budget.refuse("a product of integers over 65,536 bits")
            else:
                seq, count = (left, right) if isinstance(right, int) else (right, left)
                if isinstance(count, int) and isinstance(seq, (str, list, tuple)):
                    budget.check(_made(seq) * max(count, 0), f"repeating a {type(seq).__name__} {count:,} times")
        elif operator == "**":
            if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
                if right * left.bit_length() > MAX_INT_BITS:
                    budget.refuse(f"a power over 65,536 bits ({left} ** {right})")
        elif operator == "%" and isinstance(left, str):
            budget.ints((right,), "a % format")
            budget.check(str.__len__(left) + _format_numbers(left) + _size(right), "a % format")
        result = super().call_binop(context, operator, left, right)
        budget.charge(_made(result))
        return result

    def getitem(self, obj: Any, argument: Any) -> Any:
        result = super().getitem(obj, argument)
        if isinstance(argument, slice):
            _budget(self).charge(_made(result))
        return result

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 - Jinja's names
        budget = _budget(__self)
        target = getattr(__obj, "__wrapped__", __obj)  # str.format comes wrapped by the sandbox
        owner = getattr(target, "__self__", None)
        name = getattr(target, "__name__", "")
        what = f"calling {name or type(__obj).__name__}"
        if args or kwargs:
            budget.ints((args, kwargs), what)
        if args and isinstance(args[0], Iterator):
            args = (_materialize(budget, args[0], what), *args[1:])
        estimate = sum(_size(a) for a in args) + sum(_size(v) for v in kwargs.values())
        if isinstance(owner, str):
            estimate += str.__len__(owner)
            if name in ("format", "format_map"):
                estimate += _format_numbers(owner)
            elif name == "join" and args and hasattr(args[0], "__len__"):
                estimate += str.__len__(owner) * len(args[0])
            elif name == "replace" and len(args) > 1 and isinstance(args[1], str):
                estimate += (str.__len__(owner) + 1) * str.__len__(args[1])
            elif name in ("split", "rsplit", "splitlines"):
                estimate += ITEM * (str.__len__(owner) + 1)
            elif name in ("ljust", "rjust", "center", "zfill") and args and isinstance(args[0], int):
                estimate += args[0]
            elif name == "expandtabs":
                tab = args[0] if args and isinstance(args[0], int) else 8
                estimate += str.__len__(owner) * max(tab, 1)
        budget.check(estimate, what)
        result = super().call(__context, __obj, *args, **kwargs)
        budget.charge(_made(result))
        return result
