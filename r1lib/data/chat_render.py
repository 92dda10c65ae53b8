"""Rendering a chat template fast, without trusting it: FastChatRenderer, and chat_renderer, each tokenizer's cached
one (template_inspection finds what a template does with the contents)."""

from __future__ import annotations

import logging
import weakref

from r1lib.compat import bound_chat_templates, jinja_environment
from r1lib.data.template_inspection import Recorder, placeholder_types, replay, template_analysis
from r1lib.data.template_sandbox import TemplateRefused, name_template

log = logging.getLogger(__name__)

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
# Templates that call strftime_now (the date) always render with Jinja. Every rendering, the probes' too, runs in
# template_sandbox's BoundedSandbox: a template past its budget of memory or time is refused (TemplateRefused), never
# sent on to Jinja row by row.


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
            except TemplateRefused:
                raise
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

        recorder = Recorder()
        placeholder = placeholder_types(recorder)
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
        except TemplateRefused:
            raise
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
                    and any(replay(test, contents[slot], args) != answer for slot, test, args, answer in shape.tests)
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
    bound_chat_templates()
    if _RENDERERS is None:
        _RENDERERS = weakref.WeakKeyDictionary()
    try:
        template = tokenizer.get_chat_template()
    except Exception:  # noqa: BLE001 - no template: apply_chat_template raises its own error per row
        template = None
    where = f"{getattr(tokenizer, 'name_or_path', '') or 'the tokenizer'} (its chat template)"
    name_template(template, where, replace=False)
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
