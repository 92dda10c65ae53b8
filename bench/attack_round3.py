"""The hostile inputs of issue 22 (round three) for bench/attack.py: each driven through the code that meets it.

- ``checkpoints``: a last checkpoint holding a pickle where the trainer would unpickle it (``.metadata`` of a
  distributed checkpoint, ``optimizer.pt``, ``rng_state.pth``, ``adapter_model.bin``, a pickle renamed
  ``.safetensors``, an empty safetensors index beside a ``.bin``) or a truncated adapter, beside a whole earlier one,
  through ``last_complete_checkpoint``: it must fall back to the earlier one, unpickling nothing.
- ``adapters``: adapter folders with pickles or a broken file, through ``check_adapter`` (what evaluate, fairness and
  merge call first): refused, nothing unpickled.
- ``results``: stored stage-result records that are pickles, or Prefect records of the pickle serializers, through
  ``check_record`` and ``StageResultSerializer.loads``: refused, nothing unpickled.
- ``ggufs``: a GGUF swapped or deleted after the export, through ``verify_digests`` (the smoke test and the card):
  refused naming the file.
- ``generation``: a model folder's ``generation_config.json`` (beams with several returned sequences, contrastive
  search, sampling, suppressed tokens) through ``r1lib.model.generation.generate``: the answers must be those of the
  clean folder (the pipeline's decoding wins), or a permanent refusal; ``mispaired``: any other outcome.

Every pickle here is a ``_Marker``: unpickling it creates a folder, so ``code_executions`` counts folders made.
"""

from __future__ import annotations

import json
import pickle
import shutil
import time
from pathlib import Path

J = json.dumps


class _Marker:
    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        import os

        return (os.mkdir, (self.path,))


def _pickle(marker: Path) -> bytes:
    return pickle.dumps(_Marker(marker))


def _weights(path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    save_file({"base_model.model.a.lora_A.weight": torch.ones(2, 4)}, path)


def _checkpoint(folder: Path, step: int) -> Path:
    from r1lib.training.checkpoints import mark_complete

    checkpoint = folder / f"checkpoint-{step}"
    checkpoint.mkdir(parents=True)
    _weights(checkpoint / "adapter_model.safetensors")
    (checkpoint / "adapter_config.json").write_text(J({"peft_type": "LORA"}))
    (checkpoint / "trainer_state.json").write_text(J({"global_step": step, "max_steps": 10, "log_history": []}))
    mark_complete(checkpoint, step)
    return checkpoint


def _hostile_checkpoint(checkpoint: Path, case: str, marker: Path) -> None:
    from r1lib.training.checkpoints import mark_complete

    payload = _pickle(marker)
    adapter = checkpoint / "adapter_model.safetensors"
    if case in ("fsdp_metadata", "fsdp_metadata_distributed"):
        (checkpoint / "pytorch_model_fsdp_0").mkdir()
        if case == "fsdp_metadata_distributed":  # the marker records another .metadata than the one now there
            (checkpoint / "pytorch_model_fsdp_0" / ".metadata").write_bytes(b"what the pipeline wrote")
            mark_complete(checkpoint, 2)
        (checkpoint / "pytorch_model_fsdp_0" / ".metadata").write_bytes(payload)
    elif case == "pickle_optimizer":
        (checkpoint / "optimizer.pt").write_bytes(payload)
    elif case == "pickle_rng_state":
        (checkpoint / "rng_state.pth").write_bytes(payload)
    elif case == "pickle_adapter_bin":
        adapter.unlink()
        (checkpoint / "adapter_model.bin").write_bytes(payload)
    elif case == "pickle_renamed_safetensors":
        adapter.write_bytes(payload)
    elif case == "empty_index_beside_bin":
        (checkpoint / "model.safetensors.index.json").write_text(J({"weight_map": {}}))
        (checkpoint / "pytorch_model.bin").write_bytes(payload)
    elif case == "truncated_adapter":
        adapter.write_bytes(adapter.read_bytes()[:-16])
    elif case == "unreadable_optimizer":
        (checkpoint / "optimizer.pt").write_bytes(b"PK\x03\x04 not a whole zip")


CHECKPOINT_CASES = [
    "fsdp_metadata",
    "fsdp_metadata_distributed",
    "pickle_optimizer",
    "pickle_rng_state",
    "pickle_adapter_bin",
    "pickle_renamed_safetensors",
    "empty_index_beside_bin",
    "truncated_adapter",
    "unreadable_optimizer",
]


def run_checkpoints(base: Path) -> tuple[list[dict], dict]:
    from r1lib.training.checkpoints import last_complete_checkpoint

    rows = []
    for case in CHECKPOINT_CASES:
        folder, marker = base / "checkpoints" / case, base / "ran" / f"checkpoint-{case}"
        _checkpoint(folder, 1)
        _hostile_checkpoint(_checkpoint(folder, 2), case, marker)
        try:
            found = last_complete_checkpoint(folder, distributed=case.endswith("_distributed"))
            outcome = f"resumes from {found.name}" if found else "starts afresh"
        except Exception as exc:  # noqa: BLE001
            found, outcome = None, f"crash {type(exc).__name__}: {str(exc)[:100]}"
        fell_back = found is not None and found.name == "checkpoint-1"
        rows.append({"input": f"checkpoint {case}", "outcome": outcome, "fell_back": fell_back, "ran": marker.exists()})
    return rows, {
        "inputs": len(rows),
        "not_fallen_back": sum(not r["fell_back"] for r in rows),
        "code_executions": sum(r["ran"] for r in rows),
    }


ADAPTER_CASES = ["pickle_adapter_bin", "pickle_renamed_safetensors", "bin_beside_safetensors", "truncated_adapter"]


def run_adapters(base: Path) -> tuple[list[dict], dict]:
    from r1lib.errors import UnsafeWeights
    from r1lib.model.loading import check_adapter

    rows = []
    for case in ADAPTER_CASES:
        folder, marker = base / "adapters" / case, base / "ran" / f"adapter-{case}"
        folder.mkdir(parents=True)
        (folder / "adapter_config.json").write_text(J({"peft_type": "LORA"}))
        if case != "pickle_adapter_bin":
            _weights(folder / "adapter_model.safetensors")
        if case in ("pickle_adapter_bin", "bin_beside_safetensors"):
            (folder / "adapter_model.bin").write_bytes(_pickle(marker))
        elif case == "pickle_renamed_safetensors":
            (folder / "adapter_model.safetensors").write_bytes(_pickle(marker))
        elif case == "truncated_adapter":
            weights = folder / "adapter_model.safetensors"
            weights.write_bytes(weights.read_bytes()[:-16])
        try:
            check_adapter(str(folder))
            outcome, refused = "accepted", False
        except UnsafeWeights as exc:
            outcome, refused = f"refused: {str(exc).replace(str(base), '$TMP')[:110]}", str(folder) in str(exc)
        except Exception as exc:  # noqa: BLE001
            outcome, refused = f"crash {type(exc).__name__}", False
        rows.append({"input": f"adapter {case}", "outcome": outcome, "refused": refused, "ran": marker.exists()})
    return rows, {
        "inputs": len(rows),
        "not_refused": sum(not r["refused"] for r in rows),
        "code_executions": sum(r["ran"] for r in rows),
    }


def run_results(base: Path) -> tuple[list[dict], dict]:
    import base64

    from r1lib.results import StageResultSerializer, UntrustedRecord, check_record

    rows = []
    for serializer in ("pickle", "cloudpickle", "compressed/pickle", "bare pickle", "json holding a pickle"):
        marker = base / "ran" / f"result-{serializer.replace('/', '-').replace(' ', '-')}"
        payload = _pickle(marker)
        if serializer == "bare pickle":
            record = payload
        elif serializer == "json holding a pickle":
            record = J({"metadata": {"serializer": {"type": "r1-json"}}, "result": {"__pickle__": payload.hex()}})
            record = record.encode()
        else:
            record = J(
                {"metadata": {"serializer": {"type": serializer}}, "result": base64.b64encode(payload).decode()}
            ).encode()
        outcome, refused = "read", False
        try:
            check_record(record, f"storage/{serializer}")
            value = StageResultSerializer().loads(J(json.loads(record)["result"]).encode())
            # read as plain data, no object made from it: inert (what test_stored_results accepts too)
            outcome, refused = f"read as inert {type(value).__name__}", isinstance(value, (dict, list, str))
        except (UntrustedRecord, ValueError, TypeError, KeyError) as exc:
            outcome, refused = f"refused: {type(exc).__name__}: {str(exc)[:90]}", True
        except Exception as exc:  # noqa: BLE001
            outcome = f"crash {type(exc).__name__}"
        rows.append({"input": f"result record {serializer}", "outcome": outcome, "refused": refused})
        rows[-1]["ran"] = marker.exists()
    return rows, {
        "inputs": len(rows),
        "not_refused": sum(not r["refused"] for r in rows),
        "code_executions": sum(r["ran"] for r in rows),
    }


def _tiny_gguf(path: Path, value: float) -> Path:
    import numpy as np
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), "qwen2")
    writer.add_tensor("a", np.full((8, 8), value, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def run_ggufs(base: Path) -> tuple[list[dict], dict]:
    from r1lib.errors import ExportCheckError
    from r1lib.export.gguf import GGUFFile, verify_digests
    from r1lib.io import sha256_file

    rows = []
    for case in ("swapped", "deleted", "appended"):
        path = _tiny_gguf(base / f"gguf-{case}-Q8_0.gguf", 1.0)
        written = GGUFFile(path=str(path), type="Q8_0", bytes=path.stat().st_size, sha256=sha256_file(path))
        if case == "swapped":
            _tiny_gguf(path, 2.0)
        elif case == "deleted":
            path.unlink()
        else:
            with open(path, "ab") as handle:
                handle.write(b"\0" * 32)
        try:
            verify_digests([written])
            outcome, refused = "accepted", False
        except ExportCheckError as exc:
            outcome, refused = f"refused: {str(exc).replace(str(base), '$TMP')[:100]}", path.name in str(exc)
        rows.append({"input": f"gguf {case} after the run", "outcome": outcome, "refused": refused})
    return rows, {"inputs": len(rows), "not_refused": sum(not r["refused"] for r in rows)}


GENERATION_CASES = [
    {"num_beams": 4, "num_return_sequences": 4},
    {"penalty_alpha": 0.6, "top_k": 4},
    {"do_sample": True, "temperature": 5.0, "top_k": 1},
    {"suppress_tokens": [151643], "min_new_tokens": 30},
]
PROMPTS = ["<｜User｜>What is 2 + 3?<｜Assistant｜><think>\n", "<｜User｜>Name a colour.<｜Assistant｜><think>\n", "Hi"]


def run_generation(base: Path, root: Path) -> tuple[list[dict], dict]:
    from transformers import AutoModelForCausalLM

    from r1lib.config import EvalConfig, ModelConfig
    from r1lib.errors import PermanentError
    from r1lib.model.embedded import ensure_embedded_model
    from r1lib.model.generation import generate
    from r1lib.model.loading import load_tokenizer

    def answers(folder: Path) -> list[str]:
        model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=False).eval()
        tokenizer = load_tokenizer(str(folder), trust_remote_code=False)
        return generate(model, tokenizer, PROMPTS, EvalConfig(max_new_tokens=12, batch_size=3))[0]

    built = Path(ensure_embedded_model(ModelConfig().embedded, root / ".cache"))
    clean = answers(built)
    rows = []
    for settings in GENERATION_CASES:
        folder = base / "generation" / "-".join(settings)
        shutil.copytree(built, folder)
        config = folder / "generation_config.json"
        config.write_text(J({**json.loads(config.read_text()), **settings}))
        t0 = time.monotonic()
        try:
            got = answers(folder)
            outcome, mispaired = ("same answers as the clean folder", False) if got == clean else ("changed", True)
        except PermanentError as exc:
            outcome, mispaired = f"refused: {str(exc)[:100]}", False
        except Exception as exc:  # noqa: BLE001
            outcome, mispaired = f"crash {type(exc).__name__}: {str(exc)[:80]}", True
        rows.append(
            {
                "input": f"generation_config {J(settings)}",
                "outcome": outcome,
                "mispaired": mispaired,
                "seconds": round(time.monotonic() - t0, 1),
            }
        )
    return rows, {"inputs": len(rows), "mispaired": sum(r["mispaired"] for r in rows)}


def run_round3(base: Path, root: Path) -> tuple[list[dict], dict]:
    """Every section above; (rows, figures summed over them)."""
    (base / "ran").mkdir(exist_ok=True)
    rows, figures = [], {"inputs": 0, "code_executions": 0, "not_refused": 0, "mispaired": 0}
    for name, run in (
        ("checkpoints", run_checkpoints),
        ("adapters", run_adapters),
        ("results", run_results),
        ("ggufs", run_ggufs),
        ("generation", lambda b: run_generation(b, root)),
    ):
        part_rows, part = run(base)
        rows += [{"section": name, **r} for r in part_rows]
        figures["inputs"] += part["inputs"]
        figures["code_executions"] += part.get("code_executions", 0)
        figures["not_refused"] += part.get("not_refused", 0) + part.get("not_fallen_back", 0)
        figures["mispaired"] += part.get("mispaired", 0)
        figures[name] = part
    figures["code_executions"] = len(list((base / "ran").iterdir()))  # every marker made, whatever made it
    return rows, figures
