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


def read_gguf(path: Path) -> tuple[dict[str, object], dict[str, tuple[int, bytes]]]:
    """(every metadata field, every tensor's type and bytes) of a GGUF, read once (a 152k-token vocabulary makes
    each read take seconds)."""
    import gguf

    reader = gguf.GGUFReader(path)
    fields = {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}
    tensors = {t.name: (int(t.tensor_type), bytes(np.asarray(t.data).tobytes())) for t in reader.tensors}
    return fields, tensors


def safetensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    return {k: v for shard in sorted(folder.glob("*.safetensors")) for k, v in load_file(shard).items()}


def test_the_converter_merging_as_it_reads_writes_the_merged_models_gguf(base_and_adapter, tmp_path):
    import torch

    from r1lib.config import ModelConfig
    from tasks.export import convert, convert_task, merge

    root = base_and_adapter
    merged = merge(str(root / "base"), str(root / "adapter"), ModelConfig(), tmp_path / "merged")
    expected = convert(merged, "f16", tmp_path / "from-merged.gguf", digest=False)
    fused = convert_task.fn(
        str(root / "base"), "f16", str(tmp_path / "out"), stem="fused", digest=False,
        adapter_dir=str(root / "adapter"), model_cfg=ModelConfig(),
    )  # fmt: skip
    (want_fields, want), (got_fields, got) = read_gguf(Path(expected.path)), read_gguf(Path(fused.path))
    assert list(got) == list(want) and all(got[name] == want[name] for name in want)
    # the adapter moved exactly the adapted weights: the GGUFs are the merged model's, not the base's
    base, merged_weights = safetensors(root / "base"), safetensors(Path(merged))
    adapted = [name for name in base if not torch.equal(base[name], merged_weights[name])]
    assert sorted(adapted) == sorted(
        f"model.layers.{i}.{m}.weight" for i in (0, 1) for m in ("self_attn.q_proj", "mlp.down_proj")
    )
    assert got_fields == want_fields and "tokenizer.chat_template" in got_fields
    assert got_fields["general.name"] == "Merged"  # named after the merged model's folder, not the view's
    assert not (tmp_path / "out" / ".fused-merged-view").exists()  # the view (links, tokenizer) is gone


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
