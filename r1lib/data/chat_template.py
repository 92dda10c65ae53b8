"""The DeepSeek-R1 chat format, in one place.

DeepSeek-R1-Distill models share one template (Qwen and Llama variants differ only in token ids). Since February 2025
the official template ends the generation prompt with ``<think>\\n`` and strips everything up to ``</think>`` from
assistant turns in the history. Training renders the *last* assistant turn itself (reasoning kept, see
``tasks/tokenize.py``) right after the model's own generation prompt, so training and inference always agree.
"""

from __future__ import annotations

import logging
import re
import weakref

from r1lib.compat import jinja_environment

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
USER = "<｜User｜>"
ASSISTANT = "<｜Assistant｜>"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

# The official DeepSeek-R1-Distill template (tool calls left out: the pipeline trains plain chat), used for the
# embedded model and written into every exported tokenizer and Modelfile.
R1_CHAT_TEMPLATE = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{% set ns = namespace(system_prompt='') %}"
    "{%- for message in messages %}{%- if message['role'] == 'system' %}"
    "{% set ns.system_prompt = message['content'] %}{%- endif %}{%- endfor %}"
    "{{ bos_token }}{{ ns.system_prompt }}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}{{ '<｜User｜>' + message['content'] }}{%- endif %}"
    "{%- if message['role'] == 'assistant' %}{% set content = message['content'] %}"
    "{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}"
    "{{ '<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>' }}{%- endif %}"
    "{%- endfor %}"
    "{% if add_generation_prompt %}{{ '<｜Assistant｜><think>\\n' }}{% endif %}"
)

log = logging.getLogger(__name__)
_THINK_RE = re.compile(r"^\s*<think>(.*?)</think>\s*(.*)$", re.DOTALL)


def split_reasoning(text: str) -> tuple[str | None, str]:
    """Split an R1 output into (reasoning, answer). Reasoning is None when there is no closed think block."""
    match = _THINK_RE.match(text)
    if match is None:
        return None, text.strip()
    return match.group(1).strip(), match.group(2).strip()


def completion_text(reasoning: str | None, answer: str, prompt_opens_think: bool) -> str:
    """The assistant text that follows the generation prompt, ending in EOS.

    ``prompt_opens_think`` says whether the model's generation prompt already ends with ``<think>\\n`` (the official
    template since Feb 2025); older templates need the opening tag in the completion instead.
    """
    think = f"{reasoning.strip()}\n{THINK_CLOSE}\n\n" if reasoning else f"{THINK_CLOSE}\n\n"
    body = think + answer.strip() + EOS
    return body if prompt_opens_think else f"{THINK_OPEN}\n{body}"


def extract_answer(generated: str) -> str | None:
    """The final answer of a generated completion (after the generation prompt), or None if thinking never closed."""
    if THINK_CLOSE not in generated:
        return None
    answer = generated.split(THINK_CLOSE, 1)[1]
    return answer.replace(EOS, "").strip()


# --- Rendering a chat template fast, without trusting it ------------------------------------------------------------
#
# Rendering the Jinja template costs ~20 us a row, yet most of that is the same for every row of one *shape* (the
# roles of its messages, in order). FastChatRenderer renders each shape once with placeholder contents, keeps the
# literal text around them and fills real contents in with one string format. A template may look at the contents,
# though (R1's strips everything up to "</think>" from earlier assistant turns), so a row is filled only where that
# gives what Jinja gives, and rows are checked against Jinja besides:
#   1. The placeholders are str subclasses that record what the template does with them. Tests that answer with a
#      bool or a number ("'</think>' in content", ==, startswith, truthiness, ...) are recorded with their answers: a
#      row is filled only when the same tests on its own contents give the same answers (Jinja then takes the same
#      path), else it is rendered by Jinja. Anything that derives a new string from a content (split, strip, replace,
#      upper, slicing, iteration, hashing, formatting with a spec, tests on a concatenation...) sends the whole shape
#      to Jinja.
#   2. The placeholders hold what common transformations change (edge whitespace, quotes, backslash, <&>, mixed case,
#      non-ASCII), so a transformation the recorder cannot see (tojson, escape, ...) loses them and sends the shape to
#      Jinja; a second rendering with ~2,000-character placeholders must give the same literals and test answers
#      (catches length-dependent output such as truncation).
#   3. String constants that the template tests with or passes to methods/filters (R1: "</think>") are triggers: a
#      row whose contents hold one is rendered by Jinja.
#   4. The first ``verify_first`` rows of each shape, and a random ``verify_rate`` share of the rest, are rendered by
#      Jinja too; one difference sends that shape, in this batch and every later one, to Jinja.
# Templates that call strftime_now (the date) always render with Jinja.

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


class _Recorder:
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


def _replay(test: str, content: str, args: tuple):
    return bool(content) if test == "__bool__" else getattr(str, test)(content, *args)


def _placeholder_types(recorder: _Recorder) -> type:
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


class _Shape:
    __slots__ = ("roles", "fmt", "pick", "const", "tests", "jinja", "reason", "checked")

    def __init__(self, roles: tuple, reason: str | None = None):
        self.roles, self.reason, self.jinja, self.checked = roles, reason, reason is not None, 0
        self.fmt = self.pick = self.const = None
        self.tests: tuple = ()

    def fill(self, contents: list[str]) -> str:
        if self.pick is None:
            return self.const
        return self.fmt % self.pick(contents)


class FastChatRenderer:
    """``render_one(messages)`` (a chat template rendered by Jinja) for many conversations, by filling each shape's
    literal text (see the comment above). Safe for any template: what cannot be shown to render like Jinja is
    rendered by Jinja. ``stats`` counts rows filled, rendered by Jinja, checked and found different."""

    def __init__(
        self,
        render_one,
        template: str | None,
        parse=None,
        *,
        verify_first: int = 32,
        verify_rate: float = 0.01,
        seed: int = 0,
    ):
        import random

        self.render_one = render_one
        self.verify_first, self.verify_rate = verify_first, verify_rate
        self.rng = random.Random(seed)
        self.shapes: dict[tuple, _Shape] = {}
        self.stats = {"filled": 0, "jinja": 0, "checked": 0, "mismatched": 0}
        self.static_reason = None
        self.triggers: frozenset[str] = frozenset()
        if template is None:
            self.static_reason = "no chat template"
        elif "strftime_now" in template:
            self.static_reason = "the template renders the date (strftime_now)"
        else:
            try:
                self.triggers, self.static_reason = template_analysis(parse(template))
            except Exception as exc:  # noqa: BLE001 - unparseable here: Jinja decides (and raises) per row
                self.static_reason = f"template not analysable ({type(exc).__name__}: {exc})"

    # shapes

    def _placeholders(self, tag: str, n: int, long: bool) -> list[str]:
        if not long:
            return [f" \n<{tag}:{i}> Ab'\"\\&é中 </{tag}:{i}>\t " for i in range(n)]
        filler = "Lorem ipsum, dolor sit AMET; 'quoted' \"double\" <b>&amp; \\n 中文 ünïcödé\n" * 26
        return [f"\t«{tag}#{i}»\n{filler}«/{tag}#{i}» " for i in range(n)]

    def _probe(self, roles: tuple, long: bool):
        import re
        import secrets

        recorder = _Recorder()
        placeholder = _placeholder_types(recorder)
        tag = f"Fill{secrets.token_hex(8)}Zq"
        texts = self._placeholders(tag, len(roles), long)
        contents = []
        for i, text in enumerate(texts):
            content = placeholder(text)
            content.slot = i
            contents.append(content)
        rendered = str.__str__(self.render_one([{"role": r, "content": c} for r, c in zip(roles, contents)]))
        pieces = re.split("(" + "|".join(map(re.escape, texts)) + ")", rendered)
        literals, slots = pieces[0::2], [texts.index(p) for p in pieces[1::2]]
        if any(tag in literal for literal in literals):
            recorder.unsupported.append("a content is transformed (placeholder not found verbatim)")
        return literals, slots, recorder

    def _compile(self, roles: tuple) -> _Shape:
        from operator import itemgetter

        if self.static_reason:
            return _Shape(roles, self.static_reason)
        try:
            short, long = self._probe(roles, False), self._probe(roles, True)
        except Exception as exc:  # noqa: BLE001 - the template fails on this shape: Jinja raises for every row
            return _Shape(roles, f"the template raised {type(exc).__name__}: {exc}")
        unsupported = short[2].unsupported + long[2].unsupported
        if unsupported:
            return _Shape(roles, "the template uses the contents: " + "; ".join(dict.fromkeys(unsupported)))
        if short[:2] != long[:2] or short[2].tests != long[2].tests:
            return _Shape(roles, "the output depends on the length of a content")
        shape = _Shape(roles)
        literals, slots = short[:2]
        shape.tests = tuple(dict.fromkeys(short[2].tests))
        if not slots:
            shape.const = literals[0]
        else:
            shape.fmt = "%s".join(literal.replace("%", "%%") for literal in literals)
            shape.pick = itemgetter(*slots) if len(slots) > 1 else (lambda contents, i=slots[0]: (contents[i],))
        return shape

    def _shape(self, roles: tuple) -> _Shape:
        shape = self.shapes.get(roles)
        if shape is None:
            shape = self.shapes[roles] = self._compile(roles)
            if shape.jinja:
                log.info("chat template: shape %s renders with Jinja: %s", roles, shape.reason)
        return shape

    # rendering

    def render(self, conversations: list[list[dict]]) -> list[str]:
        out: list = [None] * len(conversations)
        by_jinja: list[int] = []
        filled: list[tuple[int, _Shape]] = []
        check: list[int] = []
        triggers, rng, rate, first = self.triggers, self.rng, self.verify_rate, self.verify_first
        for i, conversation in enumerate(conversations):
            roles, contents = [], []
            plain = True
            for message in conversation:
                if type(message) is not dict or len(message) != 2:
                    plain = False
                    break
                role, content = message.get("role"), message.get("content")
                if type(role) is not str or type(content) is not str:
                    plain = False
                    break
                roles.append(role)
                contents.append(content)
            if not plain:
                by_jinja.append(i)
                continue
            shape = self._shape(tuple(roles))
            if (
                shape.jinja
                or (triggers and any(t in c for c in contents for t in triggers))
                or (
                    shape.tests
                    and any(_replay(test, contents[slot], args) != answer for slot, test, args, answer in shape.tests)
                )
            ):
                by_jinja.append(i)
                continue
            out[i] = shape.fill(contents)
            filled.append((i, shape))
            if shape.checked < first or rng.random() < rate:
                shape.checked += 1
                check.append(i)
        bad: set[int] = set()  # ids of shapes found to differ
        for i in check:
            self.stats["checked"] += 1
            reference = self.render_one(conversations[i])
            if reference != out[i]:
                self.stats["mismatched"] += 1
                shape = self.shapes[tuple(m["role"] for m in conversations[i])]
                if not shape.jinja:
                    shape.jinja, shape.reason = True, "a filled row differed from Jinja's rendering"
                    log.warning(
                        "chat template: shape %s differs from Jinja on a checked row; rendering it with Jinja "
                        "from now on",
                        shape.roles,
                    )
                bad.add(id(shape))
        refill = [i for i, shape in filled if id(shape) in bad] if bad else []
        self.stats["filled"] += len(filled) - len(refill)
        by_jinja += refill
        for i in by_jinja:
            out[i] = self.render_one(conversations[i])
        self.stats["jinja"] += len(by_jinja)
        return out


_RENDERERS: weakref.WeakKeyDictionary = None  # tokenizer -> {template key: FastChatRenderer}


def chat_renderer(tokenizer, **template_kwargs) -> FastChatRenderer:
    """The tokenizer's (cached) FastChatRenderer for ``apply_chat_template(messages, tokenize=False,
    **template_kwargs)``. A new one is made when the template or the special tokens change."""
    global _RENDERERS
    if _RENDERERS is None:
        _RENDERERS = weakref.WeakKeyDictionary()
    try:
        template = tokenizer.get_chat_template()
    except Exception:  # noqa: BLE001 - no template: apply_chat_template raises its own error per row
        template = None
    key = (template, repr(sorted(tokenizer.special_tokens_map.items())), repr(sorted(template_kwargs.items())))
    try:
        cache = _RENDERERS.setdefault(tokenizer, {})
    except TypeError:  # not weak-referenceable: no cache
        cache = {}
    renderer = cache.get(key)
    if renderer is None:
        try:
            ref = weakref.ref(tokenizer)  # the cache must not keep its own key alive
        except TypeError:
            ref = lambda: tokenizer  # noqa: E731

        def render_one(messages):
            return ref().apply_chat_template(messages, tokenize=False, **template_kwargs)

        renderer = cache[key] = FastChatRenderer(render_one, template, _parse_template)
    return renderer


def _parse_template(template: str):
    """The template's Jinja AST, parsed by the environment transformers renders it with."""
    return jinja_environment(template).parse(template)


def prompt_messages(record: dict) -> list[dict]:
    system = [{"role": "system", "content": record["system"]}] if record["system"] else []
    return system + record["messages"][:-1]


def render_prompt(tokenizer, record: dict, system_prompt: str = "") -> str:
    messages = prompt_messages(record)
    if system_prompt and not record["system"]:
        messages = [{"role": "system", "content": system_prompt}, *messages]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def render_prompts(tokenizer, records: list[dict], system_prompt: str = "") -> list[str]:
    """``render_prompt`` of each record, equal to it, through the tokenizer's cached FastChatRenderer (each shape's
    template rendered once and filled in; rows it cannot show to be equal, and a checked sample, go through Jinja)."""
    conversations = []
    for record in records:
        messages = prompt_messages(record)
        if system_prompt and not record["system"]:
            messages = [{"role": "system", "content": system_prompt}, *messages]
        conversations.append(messages)
    return chat_renderer(tokenizer, add_generation_prompt=True).render(conversations)
