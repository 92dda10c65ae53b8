"""The DeepSeek-R1 chat format, in one place.

DeepSeek-R1-Distill models share one template (Qwen and Llama variants differ only in token ids). Since February 2025
the official template ends the generation prompt with ``<think>\\n`` and strips everything up to ``</think>`` from
assistant turns in the history. Training renders the *last* assistant turn itself (reasoning kept, see
``tasks/tokenize.py``) right after the model's own generation prompt, so training and inference always agree.
"""

from __future__ import annotations

import re

from r1lib.compat import bound_chat_templates
from r1lib.data.chat_render import chat_renderer

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
    body = think + answer.rstrip() + EOS  # leading spaces are the answer's own (indented code), as a user turn's are
    return body if prompt_opens_think else f"{THINK_OPEN}\n{body}"


def extract_answer(generated: str) -> str | None:
    """The final answer of a generated completion (after the generation prompt), or None if thinking never closed."""
    if THINK_CLOSE not in generated:
        return None
    answer = generated.split(THINK_CLOSE, 1)[1]
    return answer.replace(EOS, "").strip()


def prompt_messages(record: dict) -> list[dict]:
    system = [{"role": "system", "content": record["system"]}] if record["system"] else []
    return system + record["messages"][:-1]


def render_prompt(tokenizer, record: dict, system_prompt: str = "") -> str:
    messages = prompt_messages(record)
    if system_prompt and not record["system"]:
        messages = [{"role": "system", "content": system_prompt}, *messages]
    bound_chat_templates()  # in a budget of memory and time (r1lib/data/template_sandbox.py)
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
