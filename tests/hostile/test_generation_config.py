"""A model folder's generation_config.json cannot change how the pipeline evaluates: the pipeline's decoding settings
decide, and every generated row is checked to continue its own prompt.

Before: ``num_beams: 4, num_return_sequences: 4`` in the folder made evaluation pair prompt i with returned sequence i
(rows scored against other rows' answers, silently), and ``penalty_alpha`` (contrastive search) failed as a retried
ValueError.
"""

from __future__ import annotations

import json
import shutil

import pytest

from r1lib.config import EvalConfig
from r1lib.errors import PermanentError
from r1lib.model.generation import generate, own_generation_config
from tests.conftest import ROOT

HOSTILE = [
    {"num_beams": 4, "num_return_sequences": 4},
    {"penalty_alpha": 0.6, "top_k": 4},
    {"do_sample": True, "temperature": 5.0, "top_k": 1},
    {"suppress_tokens": [151643], "min_new_tokens": 30},
]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from r1lib.config import ModelConfig
    from r1lib.model.embedded import ensure_embedded_model

    built = ensure_embedded_model(ModelConfig().embedded, ROOT / ".cache")
    folder = tmp_path_factory.mktemp("model") / "tiny"
    shutil.copytree(built, folder)
    return folder


def load(folder):
    from transformers import AutoModelForCausalLM

    from r1lib.model.loading import load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=False).eval()
    return model, load_tokenizer(str(folder), trust_remote_code=False)


PROMPTS = ["<｜User｜>What is 2 + 3?<｜Assistant｜><think>\n", "<｜User｜>Name a colour.<｜Assistant｜><think>\n", "Hi"]


@pytest.mark.parametrize("settings", HOSTILE, ids=lambda s: ",".join(s))
def test_the_folders_generation_config_does_not_change_evaluation(tiny_folder, tmp_path, settings):
    cfg = EvalConfig(max_new_tokens=12, batch_size=3)
    model, tokenizer = load(tiny_folder)
    clean, _ = generate(model, tokenizer, PROMPTS, cfg)

    hostile = tmp_path / "hostile"
    shutil.copytree(tiny_folder, hostile)
    base = json.loads((tiny_folder / "generation_config.json").read_text())
    (hostile / "generation_config.json").write_text(json.dumps({**base, **settings}))
    model, tokenizer = load(hostile)
    assert any(getattr(model.generation_config, k) == v for k, v in settings.items())  # the folder did set them
    completions, stats = generate(model, tokenizer, PROMPTS, cfg)
    assert completions == clean and stats.generated == len(PROMPTS)
    assert all(getattr(model.generation_config, k) == v for k, v in settings.items())  # restored afterwards


def test_a_row_that_does_not_continue_its_prompt_is_refused(tiny_folder, monkeypatch):
    """The check itself: a generate that returns rows out of order (as beam search's extra sequences did) fails."""
    import torch

    cfg = EvalConfig(max_new_tokens=4, batch_size=2)
    model, tokenizer = load(tiny_folder)
    real = model.generate

    def shuffled(*args, **kwargs):
        out = real(*args, **kwargs)
        return torch.flip(out, dims=[0])

    monkeypatch.setattr(model, "generate", shuffled)
    with pytest.raises(PermanentError, match="does not continue its prompt"):
        generate(model, tokenizer, PROMPTS[:2], cfg)


def test_own_generation_config_keeps_only_the_token_ids(tiny_folder):
    model, _ = load(tiny_folder)
    model.generation_config.num_beams = 4
    with own_generation_config(model) as config:
        assert config.num_beams in (None, 1) and config.eos_token_id == model.config.eos_token_id
    assert model.generation_config.num_beams == 4
