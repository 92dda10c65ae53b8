"""The converter merging a plain LoRA as it reads the base (r1lib/export/merge.py: ``conversion_view``, r1lib/compat.py:
``lora_merged_conversion``) writes the GGUF that converting the merged model writes: the same tensors, bit for bit,
and the same tokenizer and chat template. Real converter, a random-weight model of the Qwen2 layout with the real
tokenizer, a LoRA whose B is not zero."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base_and_adapter(tmp_path_factory):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from r1lib.rehearsal.shapes import build_random_model, shape_tokenizer

    root = tmp_path_factory.mktemp("merged-view")
    build_random_model("tiny-qwen", root / "base")
    model = AutoModelForCausalLM.from_pretrained(root / "base", dtype=torch.float32)
    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"]))
    torch.manual_seed(1)
    for name, p in lora.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    lora.save_pretrained(root / "adapter")
    shape_tokenizer("tiny-qwen").save_pretrained(root / "adapter")
    return root


def tensors(path: Path) -> dict[str, tuple[int, bytes]]:
    import gguf

    return {t.name: (int(t.tensor_type), bytes(np.asarray(t.data).tobytes())) for t in gguf.GGUFReader(path).tensors}


def fields(path: Path) -> dict[str, object]:
    """Every metadata field, ``general.*`` included (the converter names the model after its folder: the shipped
    name must not be the view's)."""
    import gguf

    reader = gguf.GGUFReader(path)
    return {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}


def test_the_converter_merging_as_it_reads_writes_the_merged_models_gguf(base_and_adapter, tmp_path):
    from r1lib.config import ModelConfig
    from tasks.export import convert, convert_task, merge

    root = base_and_adapter
    merged = merge(str(root / "base"), str(root / "adapter"), ModelConfig(), tmp_path / "merged")
    expected = convert(merged, "f16", tmp_path / "from-merged.gguf", digest=False)
    fused = convert_task.fn(
        str(root / "base"), "f16", str(tmp_path / "out"), stem="fused", digest=False,
        adapter_dir=str(root / "adapter"), model_cfg=ModelConfig(),
    )  # fmt: skip
    plain = convert(str(root / "base"), "f16", tmp_path / "base.gguf", digest=False)

    want, got, base = tensors(Path(expected.path)), tensors(Path(fused.path)), tensors(Path(plain.path))
    assert list(got) == list(want) and all(got[name] == want[name] for name in want)
    adapted = [name for name in want if want[name] != base[name]]
    assert sorted(adapted) == sorted(f"blk.{i}.{t}.weight" for i in (0, 1) for t in ("attn_q", "ffn_down"))
    assert fields(Path(fused.path)) == fields(Path(expected.path))
    assert "tokenizer.chat_template" in fields(Path(fused.path))
    assert not (tmp_path / "out" / ".fused-merged-view").exists()  # the view (links, tokenizer) is gone
    assert fields(Path(fused.path))["general.name"] == "Merged"


def test_a_view_whose_adapter_names_a_weight_the_base_lacks_fails_the_conversion(base_and_adapter, tmp_path):
    import json

    from r1lib.config import ModelConfig
    from r1lib.export.merge import MERGE_SPEC, conversion_view, stream_merge_plan
    from tasks.export import convert, r1_tokenizer

    root = base_and_adapter
    plan = stream_merge_plan(root / "base", root / "adapter")
    tokenizer = r1_tokenizer(str(root / "adapter"), ModelConfig())
    view = conversion_view(root / "base", root / "adapter", plan, tokenizer, tmp_path / "v")
    spec = json.loads((view / MERGE_SPEC).read_text())
    spec["pairs"]["model.layers.9.self_attn.q_proj.weight"] = next(iter(spec["pairs"].values()))
    (view / MERGE_SPEC).write_text(json.dumps(spec))
    with pytest.raises(RuntimeError, match="model.layers.9.self_attn.q_proj.weight"):
        convert(str(view), "f16", tmp_path / "x.gguf", digest=False)
    assert not (tmp_path / "x.gguf").exists()
