"""What a chat template does with the contents of the messages it renders, for chat_render's FastChatRenderer.

Statically (template_analysis, on the Jinja AST): the string constants whose presence in a content may change the
output, and the uses of a content that nothing at render time could see. At render time (placeholder_types): str
subclasses standing in for the contents, which record the tests the template makes on them (with their answers, to
replay on a real row's contents) and flag every other use.
"""

from __future__ import annotations

import re

_TESTS = frozenset(
    {
        "__contains__",
        "__eq__",
        "__ne__",
        "__lt__",
        "__le__",
        "__gt__",
        "__ge__",
        "__len__",
        "startswith",
        "endswith",
        "find",
        "rfind",
        "count",
        "index",
        "rindex",
        "isalnum",
        "isalpha",
        "isascii",
        "isdecimal",
        "isdigit",
        "isidentifier",
        "islower",
        "isnumeric",
        "isprintable",
        "isspace",
        "istitle",
        "isupper",
    }
)
_NOT_WRAPPED = frozenset(
    {
        "__new__",
        "__init__",
        "__getattribute__",
        "__setattr__",
        "__delattr__",
        "__class__",
        "__init_subclass__",
        "__subclasshook__",
        "__getnewargs__",
        "__reduce__",
        "__reduce_ex__",
        "__sizeof__",
        "__dir__",
        "__doc__",
        "__str__",
        "__format__",
        "__add__",
        "__radd__",
    }
)
# Filters that read a string's characters in C (or copy it into a new str) without calling a method of it: the
# placeholders cannot see what they do, so a template that uses one is rendered by Jinja.
_OPAQUE_FILTERS = frozenset(
    {
        "int",
        "float",
        "wordcount",
        "wordwrap",
        "urlize",
        "urlencode",
        "striptags",
        "safe",
        "forceescape",
        "filesizeformat",
        "pprint",
        "xmlattr",
        "format",
    }
)
# Filters whose string arguments name attributes, tests or defaults, not text to look for in a content.
_STRUCTURAL_FILTERS = frozenset(
    {
        "selectattr",
        "rejectattr",
        "select",
        "reject",
        "map",
        "attr",
        "groupby",
        "sort",
        "unique",
        "dictsort",
        "default",
        "d",
        "min",
        "max",
        "sum",
    }
)


class Recorder:
    """What a template did with the placeholder contents of one rendering."""

    def __init__(self):
        self.tests: list[tuple[int, str, tuple, object]] = []  # (message index, test, arguments, answer)
        self.unsupported: list[str] = []


def _tainted(values) -> bool:
    for value in values:
        if isinstance(value, str) and type(value) is not str:
            return True
        if isinstance(value, (tuple, list, set, frozenset)) and _tainted(value):
            return True
    return False


def replay(test: str, content: str, args: tuple):
    return bool(content) if test == "__bool__" else getattr(str, test)(content, *args)


def placeholder_types(recorder: Recorder) -> type:
    """The placeholder type: a str that records the tests made on it and flags every other use but concatenation and
    plain output. Concatenations are ``Derived`` strings on which any use but those two is flagged."""

    def flag(name: str):
        method = getattr(str, name)

        def flagged(self, *args, **kwargs):
            where = f"message {self.slot}" if hasattr(self, "slot") else "a concatenation of contents"
            recorder.unsupported.append(f"{name} on {where}")
            return method(self, *args, **kwargs)

        return flagged

    def record(name: str):
        method = getattr(str, name)

        def recorded(self, *args, **kwargs):
            answer = method(self, *args, **kwargs)
            if kwargs or _tainted(args):
                recorder.unsupported.append(f"{name} of message {self.slot} with another content")
            else:
                recorder.tests.append((self.slot, name, args, answer))
            return answer

        return recorded

    def truth(self):
        answer = str.__len__(self) > 0
        recorder.tests.append((self.slot, "__bool__", (), answer))
        return answer

    def as_is(self):
        return self

    def format_(self, spec):
        if spec:
            recorder.unsupported.append(f"format spec {spec!r}")
            return str.__format__(self, spec)
        return self

    def add(self, other):
        return derived(str.__add__(self, other)) if isinstance(other, str) else str.__add__(self, other)

    def radd(self, other):
        return derived(str.__add__(other, self)) if isinstance(other, str) else NotImplemented

    names = [n for n in dir(str) if n not in _NOT_WRAPPED and callable(getattr(str, n))]
    common = {"__str__": as_is, "__format__": format_, "__add__": add, "__radd__": radd}
    derived = type("Derived", (str,), {**{n: flag(n) for n in names}, **common, "__hash__": flag("__hash__")})
    return type(
        "Placeholder",
        (str,),
        {
            **{n: record(n) if n in _TESTS else flag(n) for n in names},
            **common,
            "__hash__": flag("__hash__"),
            "__bool__": truth,
        },
    )


def _is_role(node) -> bool:
    from jinja2 import nodes

    if isinstance(node, nodes.Getattr):
        return node.attr == "role"
    return isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const) and node.arg.value == "role"


def template_analysis(ast) -> tuple[frozenset[str], str | None]:
    """(triggers, reason) of a parsed template. Triggers: non-empty string constants that it compares values with
    (other than roles), tests membership with, or passes to a method, test or text filter, the strings whose presence
    in a content may change its output. Reason (or None): why no shape of it can be filled, for uses of a content
    that read it below what the placeholders can see: a membership test in a string constant (``content in 'abc'``),
    a string constant's method given a non-constant (``'abc'.startswith(content)``; join and format copy it as is),
    printf-style widths (``'%-20s' % content``) and the filters in _OPAQUE_FILTERS."""
    from jinja2 import nodes

    found: set[str] = set()
    reasons: list[str] = []

    def consts(exprs):
        found.update(e.value for e in exprs if isinstance(e, nodes.Const) and isinstance(e.value, str) and e.value)

    def is_text(node) -> bool:
        return isinstance(node, nodes.Const) and isinstance(node.value, str)

    for node in ast.find_all((nodes.Compare, nodes.Call, nodes.Filter, nodes.Test, nodes.Mod)):
        if isinstance(node, nodes.Mod):
            if is_text(node.left) and re.search(r"%[-#0 +]*(\d|\*|\.)", node.left.value):
                reasons.append(f"printf-style width or precision in {node.left.value!r}")
        elif isinstance(node, nodes.Compare):
            operands = [node.expr, *(op.expr for op in node.ops)]
            for left, op, right in zip(operands, node.ops, operands[1:]):
                if op.op in ("in", "notin") and is_text(right) and not is_text(left):
                    reasons.append(f"a membership test in the string constant {right.value!r}")
            if not any(_is_role(e) for e in operands):
                consts(operands)
        elif isinstance(node, nodes.Call):
            if isinstance(node.node, nodes.Getattr):  # a method call: x.split('</think>')
                args = [*node.args, *(k.value for k in node.kwargs), *filter(None, (node.dyn_args, node.dyn_kwargs))]
                if (
                    is_text(node.node.node)
                    and node.node.attr not in ("join", "format")
                    and not all(isinstance(a, nodes.Const) for a in args)
                ):
                    reasons.append(f"the string constant method {node.node.attr!r} on a value")
                consts(args)
        elif isinstance(node, nodes.Filter) and node.name in _OPAQUE_FILTERS:
            reasons.append(f"the filter {node.name!r}")
        elif not (isinstance(node, nodes.Filter) and node.name in _STRUCTURAL_FILTERS):
            if isinstance(node, nodes.Test) and node.name in ("in", "contains") and node.args and is_text(node.args[0]):
                reasons.append(f"a membership test in the string constant {node.args[0].value!r}")
            if not (isinstance(node, nodes.Test) and _is_role(node.node)):
                consts([*node.args, *(k.value for k in node.kwargs)])
    return frozenset(found), ("the template uses " + "; ".join(dict.fromkeys(reasons))) if reasons else None
