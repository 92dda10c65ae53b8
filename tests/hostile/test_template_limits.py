"""Chat templates as a weapon: every rendering of a template (this project's fast renderer and transformers'
apply_chat_template alike) runs in a budget of memory and time, and a template past it is refused for good, naming
its file (r1lib/data/template_sandbox.py). Before: ``{% set s='A'*1500000000 %}`` reached 6.3 GB, nested
``range(100000)`` loops rendered for hours."""

from __future__ import annotations

import copy
import json
import resource
import time

import pytest

MESSAGES = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
RECORD = {"system": "", "messages": MESSAGES}
BOMBS = {
    "repeat": "{% set s='A'*1500000000 %}{{ s|length }}",
    "nested_ranges": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}x",
    "doubling_join": "{% set ns = namespace(s='ab') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}"
    "{% endfor %}{{ ns.s|length }}",
    "doubling_block": "{% set ns = namespace(s='ab') %}{% for i in range(60) %}{% set t %}{{ ns.s }}{{ ns.s }}"
    "{% endset %}{% set ns.s = t %}{% endfor %}{{ ns.s|length }}",
    "doubling_plus": "{% set ns = namespace(s=['a']) %}{% for i in range(60) %}{% set ns.s = ns.s + ns.s %}"
    "{% endfor %}{{ ns.s|length }}",
    "center_filter": "{{ 'A'|center(1500000000) }}",
    "ljust_method": "{{ 'A'.ljust(1500000000) }}",
    "format_width": "{{ '{:>1500000000}'.format('x') }}",
    "percent_width": "{{ '%1500000000s' % 'x' }}",
    "format_filter": "{{ '%1500000000s'|format('x') }}",
    "join_repeated": "{% set l = ['x' * 1000000] * 1000 %}{{ l|join }}",
    "join_separator": "{{ range(100000)|join('y' * 100000) }}",
    "replace": "{{ ('a' * 1000000)|replace('a', 'b' * 1000) }}",
    "power": "{{ 10 ** 100000000 }}",
    "squaring": "{% set ns = namespace(n=10) %}{% for i in range(40) %}{% set ns.n = ns.n * ns.n %}{% endfor %}x",
    "lipsum": "{{ lipsum(n=100000000) }}",
    "recursion": "{% macro f(n) %}{{ f(n) }}{{ f(n) }}{% endmacro %}{{ f(1) }}",
    "literal_in_loops": "{% for i in range(100000) %}{% for j in range(9) %}" + "A" * 9999 + "{% endfor %}{% endfor %}",
    "tojson_indent": "{{ messages|tojson(indent=1000000000) }}",
    "split_chars": "{% set l = ('中 ' * 30000000).split() %}{{ l|length }}",
    "string_to_list": "{{ ('中' * 30000000)|list|length }}",
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("model")
    tokenizer.save_pretrained(folder)
    return folder


def hostile_tokenizer(model_dir, tmp_path, template):
    import shutil

    from r1lib.model.loading import load_tokenizer

    folder = tmp_path / "hostile"
    shutil.copytree(model_dir, folder)
    (folder / "chat_template.jinja").write_text(template, encoding="utf-8")
    return folder, load_tokenizer(str(folder), trust_remote_code=False)


def peak_mib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def test_a_template_from_a_model_folder_is_refused_naming_its_file(model_dir, tmp_path):
    from r1lib.data.chat_template import render_prompt
    from r1lib.data.template_sandbox import TemplateRefused
    from r1lib.policy import is_permanent

    folder, tok = hostile_tokenizer(model_dir, tmp_path, BOMBS["repeat"])
    before, t0 = peak_mib(), time.monotonic()
    with pytest.raises(TemplateRefused, match="chat template refused") as caught:
        render_prompt(tok, RECORD)
    assert time.monotonic() - t0 < 10 and peak_mib() - before < 800
    assert str(caught.value).startswith(f"{folder / 'chat_template.jinja'}: chat template refused: repeating a str")
    assert is_permanent(caught.value)


@pytest.mark.parametrize("name", list(BOMBS))
def test_a_hostile_template_is_refused_in_bounded_memory_and_time(tokenizer, name):
    from r1lib.compat import bound_chat_templates
    from r1lib.data.chat_template import render_prompt
    from r1lib.data.template_sandbox import TemplateRefused, name_template
    from r1lib.policy import is_permanent

    bound_chat_templates()
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = BOMBS[name]
    name_template(BOMBS[name], f"/models/{name}/chat_template.jinja")
    before, t0 = peak_mib(), time.monotonic()
    with pytest.raises(TemplateRefused, match="chat template refused") as caught:
        render_prompt(tok, RECORD)
    assert time.monotonic() - t0 < 10
    assert peak_mib() - before < 800, f"{name}: peak RSS grew {peak_mib() - before} MiB"
    assert str(caught.value).startswith(f"/models/{name}/chat_template.jinja: ")
    assert is_permanent(caught.value)


def test_the_fast_renderer_refuses_it_too_not_row_by_row(model_dir, tmp_path):
    from r1lib.data.chat_render import chat_renderer
    from r1lib.data.template_sandbox import TemplateRefused

    folder, tok = hostile_tokenizer(
        model_dir, tmp_path, "{% for m in messages %}{{ m['content'] }}{% endfor %}" + BOMBS["nested_ranges"]
    )
    t0 = time.monotonic()
    with pytest.raises(TemplateRefused, match="loop steps"):
        chat_renderer(tok, add_generation_prompt=True).render([MESSAGES] * 1000)
    assert time.monotonic() - t0 < 10


def test_transformers_own_apply_chat_template_is_bounded_once_a_tokenizer_is_loaded(model_dir, tmp_path):
    from r1lib.data.template_sandbox import TemplateRefused

    folder, tok = hostile_tokenizer(model_dir, tmp_path, BOMBS["repeat"])
    with pytest.raises(TemplateRefused, match="chat_template.jinja"):
        tok.apply_chat_template(MESSAGES, tokenize=False)
    with pytest.raises(TemplateRefused):  # a template set in code after loading too
        other = copy.deepcopy(tok)
        other.chat_template = BOMBS["nested_ranges"]
        other.apply_chat_template(MESSAGES, tokenize=False)


QWEN_LIKE = (
    "{%- if tools %}{{- '<|im_start|>system\\n' }}{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}"
    "{%- endfor %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{{- '<|im_start|>' + message.role + '\\n' + message.content | trim }}"
    "{%- if loop.last and message.role == 'assistant' %}{{ '%-6s|%s' % ('end', loop.index) }}{% endif %}"
    "{{- '<|im_end|>\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
    "{{ ', '.join(messages|map(attribute='role')) }}{{ 'x'.ljust(5) ~ (messages|length) }}"
)


@pytest.mark.parametrize("template", ["r1", QWEN_LIKE])
def test_legitimate_templates_render_as_before_long_rows_included(tokenizer, template):
    """The bounded sandbox renders what Jinja's plain sandbox renders, also for a row of 3 million characters (the
    limits grow with the input)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    from r1lib.compat import bound_chat_templates
    from r1lib.data.chat_template import R1_CHAT_TEMPLATE

    bound_chat_templates()
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = R1_CHAT_TEMPLATE if template == "r1" else template
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = lambda x, **kw: json.dumps(x, ensure_ascii=False, **kw)  # as transformers has it
    plain = env.from_string(tok.chat_template)
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"x": 1}}}]
    long = "长" * 1_000_000 + "</think>" + "x" * 2_000_000
    for messages in (MESSAGES, [*MESSAGES, {"role": "user", "content": long}, {"role": "assistant", "content": long}]):
        kwargs = {"add_generation_prompt": True, **tok.special_tokens_map}
        expected = plain.render(messages=messages, tools=tools, **kwargs)
        assert tok.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True) == expected
