"""Hostile inputs read back from disk: a retry's checkpoint (r1lib/training/checkpoints.py), an output folder a user
replaced by a symlink (r1lib/io.py: atomic_dir), the nightly registry's hand-edited index (r1lib/ops/registry.py),
the figures a promotion compares (tasks/promote.py), a hostile adapter at the streamed merge (r1lib/export/merge.py)
and a GGUF that scores NaN (r1lib/export/smoke_checks.py)."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from r1lib.errors import ConfigError
from r1lib.io import atomic_dir
from r1lib.ops.registry import Registry
from r1lib.training.checkpoints import last_complete_checkpoint, mark_complete
from tasks.promote import PromotionPolicy, decide

NAN = float("nan")

# --- the checkpoint a retry resumes from ------------------------------------------------------------------------------


def checkpoint(root, step: int, state: str | None = None, name: str | None = None):
    """A whole checkpoint as the trainer writes it, its ``trainer_state.json`` replaced by ``state`` when given."""
    path = root / (name or f"checkpoint-{step}")
    path.mkdir()
    save_file({"lora_A": torch.ones(4, 2), "lora_B": torch.zeros(2, 4)}, str(path / "adapter_model.safetensors"))
    normal = json.dumps({"global_step": step, "max_steps": 10, "epoch": 0.5, "log_history": []})
    (path / "trainer_state.json").write_text(normal if state is None else state)
    mark_complete(path, step)
    return path


@pytest.mark.parametrize(
    "state",
    [
        '{"global_step": 4, "max_st',  # truncated
        "[]",
        json.dumps({"global_step": 400, "max_steps": 10, "epoch": 40.0, "log_history": []}),  # past its own end
        json.dumps({"global_step": 2, "max_steps": 10, "epoch": 0.1, "log_history": []}),  # not its folder's step
        json.dumps({"global_step": "4", "max_steps": 10, "epoch": 0.5, "log_history": []}),
    ],
    ids=["truncated", "not-an-object", "past-max-steps", "another-step", "step-as-text"],
)
def test_a_checkpoint_whose_trainer_state_is_broken_is_set_aside_for_the_previous_one(tmp_path, caplog, state):
    """Before: the checkpoint passed every check; the resume then failed on every retry with a bare
    ``JSONDecodeError`` naming no file, or published a run of 400 steps out of 10 without training."""
    previous = checkpoint(tmp_path, 2)
    checkpoint(tmp_path, 4, state)
    assert last_complete_checkpoint(tmp_path) == previous
    assert (tmp_path / "broken-checkpoint-4").is_dir()
    assert "checkpoint-4" in caplog.text and "trainer_state.json" in caplog.text


@pytest.mark.parametrize("name", ["checkpoint-4-backup", "checkpoint-4.bak", "checkpoint-latest"])
def test_a_folder_named_like_a_checkpoint_is_left_alone(tmp_path, name):
    """A user's copy ``checkpoint-4-backup`` beside the trainer's: before, every retry died on ``int('backup')``
    (with a completion marker), or the copy was deleted as a crash's leftover (without)."""
    newest = checkpoint(tmp_path, 4)
    copy = checkpoint(tmp_path, 4, name=name)
    kept = tmp_path / f"{name}-kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine\n")
    assert last_complete_checkpoint(tmp_path) == newest
    assert (copy / "adapter_model.safetensors").is_file() and (kept / "notes.txt").read_text() == "mine\n"


def test_a_pickle_scaler_state_is_set_aside_for_the_previous_checkpoint(tmp_path):
    """``scaler.pt`` is loaded by the trainer whenever it is there: a pickle or truncated one passed the checks, then
    failed every retry of the resume instead of falling back to the previous checkpoint."""
    previous = checkpoint(tmp_path, 2)
    hostile = checkpoint(tmp_path, 4)
    (hostile / "scaler.pt").write_bytes(pickle.dumps({"scale": 65536.0}))
    assert last_complete_checkpoint(tmp_path) == previous


def test_a_checkpoint_an_fp16_host_wrote_resumes_on_a_host_without_fp16(tmp_path, caplog):
    """A retry on a bf16 or CPU host of a run an fp16 host checkpointed (``train.bf16: auto`` picks per GPU): before,
    the trainer loaded its ``scaler.pt`` into no scaler, ``AttributeError: 'NoneType' object has no attribute
    'load_state_dict'``, on every retry."""
    from torch import nn
    from transformers import Trainer, TrainingArguments

    from r1lib.compat import pass_over_unusable_scaler_state

    class Line(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(2, 1)

        def forward(self, x=None, labels=None):
            return {"loss": ((self.linear(x).squeeze(-1) - labels) ** 2).mean()}

    rows = [{"x": torch.full((2,), float(i)), "labels": torch.tensor(1.0)} for i in range(8)]

    def trainer():
        args = TrainingArguments(
            output_dir=str(tmp_path), max_steps=4, save_steps=2, per_device_train_batch_size=2, report_to=[],
            use_cpu=True, disable_tqdm=True,
        )  # fmt: skip
        return Trainer(model=Line(), args=args, train_dataset=rows)

    trainer().train()
    written = tmp_path / "checkpoint-2"
    torch.save({"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                "_growth_tracker": 0}, written / "scaler.pt")  # fmt: skip
    resumed = trainer()
    assert pass_over_unusable_scaler_state(resumed, str(written))
    assert resumed.train(resume_from_checkpoint=str(written)).global_step == 4
    assert not pass_over_unusable_scaler_state(trainer(), str(tmp_path / "checkpoint-4"))  # no scaler.pt there


@pytest.mark.parametrize("totals", ['{"seconds": 12.5, "tok', '{"seconds": "12", "tokens": 1, "segments": 1}', "[1]",
                                    '{"seconds": 1, "tokens": Infinity, "segments": 1}'])  # fmt: skip
def test_unreadable_run_totals_lose_the_accounting_not_the_resume(tmp_path, caplog, totals):
    """``run_totals.json`` truncated or of the wrong types: before, ``RunTotals`` raised a bare JSONDecodeError (or
    ValueError, OverflowError) on every retry of the resume, naming no file."""
    from r1lib.training.fit import RunTotals

    written = checkpoint(tmp_path, 4)
    (written / "run_totals.json").write_text(totals)
    resumed = RunTotals(str(written))
    assert (resumed.seconds, resumed.tokens, resumed.segments) == (0.0, 0, 1)
    assert "run_totals.json" in caplog.text
    (written / "run_totals.json").write_text('{"seconds": 12.5, "tokens": 300, "segments": 1}')
    resumed = RunTotals(str(written))
    assert (resumed.seconds, resumed.tokens, resumed.segments) == (12.5, 300, 2)


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_the_best_checkpoint_a_state_names_is_taken_only_from_its_own_folder_and_checked(tmp_path):
    """``best_model_checkpoint`` in a resumed ``trainer_state.json`` naming a folder elsewhere whose
    ``pytorch_model_fsdp_0/.metadata`` is a pickle: before, publishing a finished run (early stopping on) read it with
    torch's distributed reader and ran the pickle, in a one-process run; the trainer would load its weights too."""
    from r1lib.training.checkpoints import trusted_best
    from r1lib.training.fit import _callbacks

    marker = tmp_path / "ran"
    evil = tmp_path / "elsewhere" / "checkpoint-2"
    (evil / "pytorch_model_fsdp_0").mkdir(parents=True)
    (evil / "pytorch_model_fsdp_0" / ".metadata").write_bytes(pickle.dumps(Exploit(marker)))
    runs = tmp_path / "checkpoints"
    runs.mkdir()
    assert trusted_best(str(evil), runs) is None  # no checkpoint-2 here: the recorded path is never followed
    own = checkpoint(runs, 2)
    assert trusted_best(str(evil), runs) == own  # the folder of that name here (a moved run folder resumes too)
    assert trusted_best(str(tmp_path / "elsewhere" / "best"), runs) is None
    (own / "optimizer.pt").write_bytes(pickle.dumps(Exploit(marker)))
    assert trusted_best(str(own), runs) is None  # a sibling that fails the checks is not loaded either

    callback = next(c for c in _callbacks() if type(c).__name__ == "TrustedBest")
    state = SimpleNamespace(best_model_checkpoint=str(evil))
    callback.on_train_begin(SimpleNamespace(output_dir=str(tmp_path / "elsewhere"), fsdp=None), state, None)
    assert state.best_model_checkpoint is None
    assert not marker.exists()


# --- an output folder replaced by a symlink ---------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["a folder outside the run", "nothing"])
def test_an_output_folder_replaced_by_a_symlink_is_rewritten_and_its_target_left_alone(tmp_path, target):
    """``runs/x/merge/merged`` a symlink to another disk: before, every attempt failed with a bare ``OSError: Cannot
    call rmtree on a symbolic link`` naming no path (retried as transient), or ``NotADirectoryError`` when dangling."""
    outside = tmp_path / "outside"
    if target != "nothing":
        outside.mkdir()
        (outside / "keep.txt").write_text("another disk's file\n")
    merged = tmp_path / "run" / "merged"
    merged.parent.mkdir()
    merged.symlink_to(outside)
    with atomic_dir(merged) as tmp:
        (tmp / "model.safetensors").write_text("new")
    assert not merged.is_symlink() and (merged / "model.safetensors").read_text() == "new"
    if target != "nothing":
        assert sorted(p.name for p in outside.iterdir()) == ["keep.txt"]
    assert [p.name for p in merged.parent.iterdir()] == ["merged"]  # no temporary folder left beside it


# --- a hostile adapter folder at the streamed merge ------------------------------------------------------------------

TARGET = "base_model.model.model.layers.0.self_attn.q_proj"


def base_and_adapter(tmp_path, tensors: dict, config: dict | None = None):
    """A one-weight bf16 base (q_proj 8 x 8) and an adapter folder with ``tensors`` and ``config``."""
    base, adapter = tmp_path / "base", tmp_path / "adapter"
    base.mkdir()
    adapter.mkdir()
    (base / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    save_file({"model.layers.0.self_attn.q_proj.weight": torch.zeros(8, 8, dtype=torch.bfloat16)},
              str(base / "model.safetensors"))  # fmt: skip
    (adapter / "adapter_config.json").write_text(json.dumps(config or {"peft_type": "LORA", "r": 2, "lora_alpha": 4}))
    save_file(tensors, str(adapter / "adapter_model.safetensors"))
    return base, adapter


@pytest.mark.parametrize(
    "tensors, config, needle",
    [
        ({"A": torch.ones(2, 8), "B": torch.ones(1, 2)}, None, "B [1, 2]"),  # one row, broadcast over all 8
        ({"A": torch.ones(2, 1), "B": torch.ones(8, 2)}, None, "A [2, 1]"),  # one column, broadcast over all 8
        ({"A": torch.ones(4, 8), "B": torch.ones(8, 4)}, None, "rank r = 2"),  # scaled by alpha / 2, not / 4
        ({"A": torch.ones(2, 8)}, None, "lora_B.weight beside"),
        ({"A": torch.ones(2, 8), "B": torch.ones(8, 2)}, {"peft_type": "LORA", "r": 0, "lora_alpha": 4}, "r = 0"),
        ({"A": torch.ones(2, 8), "B": torch.ones(8, 2)}, {"peft_type": "LORA", "lora_alpha": 4}, "rank and alpha"),
    ],
    ids=["B-one-row", "A-one-column", "rank-not-r", "no-B", "r-0", "no-r"],
)
def test_an_adapter_that_is_not_this_bases_is_refused_by_the_streamed_merge_naming_it(tmp_path, tensors, config,
                                                                                      needle):  # fmt: skip
    """Before: ``W + scale * B @ A`` broadcast a [1, 8] or [8, 1] product over the whole weight and the merge and the
    converter wrote it (peft refuses such an adapter), a rank other than r merged at the wrong scale, a missing B was
    a bare KeyError and r = 0 a ZeroDivisionError."""
    from r1lib.errors import ExportCheckError
    from r1lib.export.merge import stream_merge_plan

    named = {f"{TARGET}.lora_{k}.weight": v for k, v in tensors.items()}
    base, adapter = base_and_adapter(tmp_path, named, config)
    with pytest.raises(ExportCheckError) as refused:
        stream_merge_plan(base, adapter)
    assert "adapter" in str(refused.value) and needle in str(refused.value)


def test_a_whole_adapter_of_this_base_still_merges_shard_by_shard(tmp_path):
    from r1lib.export.merge import stream_merge_plan

    tensors = {f"{TARGET}.lora_A.weight": torch.ones(2, 8), f"{TARGET}.lora_B.weight": torch.ones(8, 2)}
    plan = stream_merge_plan(*base_and_adapter(tmp_path, tensors))
    assert (
        plan is not None and plan["scale"] == 2.0 and list(plan["pairs"]) == ["model.layers.0.self_attn.q_proj.weight"]
    )


def test_a_gguf_whose_perplexity_is_not_a_number_fails_the_smoke_test_naming_it():
    """A GGUF scoring NaN on the held-out rows (NaN weights merged in): ``abs(nan) > max_f16_perplexity_drift`` and
    ``nan > max_quant_perplexity_increase`` are false, so before both limits passed it."""
    from r1lib.export.smoke_checks import not_finite

    problems = not_finite({"the HF merged model": 12.5, "run-F16.gguf": NAN, "run-Q8_0.gguf": float("inf"),
                           "run-Q4_K_M.gguf": None})  # fmt: skip
    assert [p.split(":")[0] for p in problems] == ["run-F16.gguf", "run-Q8_0.gguf"]
    assert all("not a finite number" in p for p in problems)
    assert not_finite({"the HF merged model": NAN})[0].startswith("the HF merged model")
    assert not_finite({"the HF merged model": 12.5, "run-F16.gguf": 12.6}) == []


def test_a_full_scratch_folder_names_export_scratch_dir_not_runs_dir(tmp_path, monkeypatch):
    """The temporary full-precision GGUF in a scratch folder (``export.scratch_dir``) that fills up: before, the
    error said to point ``runs_dir`` elsewhere, which moves nothing the converter writes."""
    import subprocess

    import tasks.export as export
    from r1lib.errors import DiskFull

    def full_disk(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, "", "OSError: [Errno 28] No space left on device")

    monkeypatch.setattr(export.subprocess, "run", full_disk)
    merged = tmp_path / "merged"
    merged.mkdir()
    save_file({"w": torch.zeros(4, 4, dtype=torch.bfloat16)}, str(merged / "model.safetensors"))
    scratch, out = tmp_path / "scratch", tmp_path / "run" / "convert"
    with pytest.raises(DiskFull) as full:
        export.convert_task.fn(str(merged), "f16", str(out), "run", digest=False, scratch_dir=str(scratch))
    assert str(scratch) in str(full.value) and "export.scratch_dir" in str(full.value)
    assert "runs_dir" not in str(full.value)
    with pytest.raises(DiskFull) as full:  # written in the export folder itself: runs_dir is the setting
        export.convert_task.fn(str(merged), "f16", str(out), "run", digest=False, scratch_dir=None)
    assert "runs_dir" in str(full.value)


def test_a_symlink_in_place_of_the_adapters_staging_folder_is_removed_not_followed(tmp_path):
    """``.adapter.staging`` a symlink to a folder elsewhere: before, every attempt to publish the trained adapter
    failed with a bare ``OSError: Cannot call rmtree on a symbolic link``, retried as transient."""
    from r1lib.training.fit import publish_adapter

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("mine\n")
    adapter = tmp_path / "train" / "adapter"
    adapter.parent.mkdir()
    (adapter.parent / ".adapter.staging").symlink_to(elsewhere)

    def save(folder):
        Path(folder).mkdir(parents=True, exist_ok=True)
        save_file({"lora_A": torch.ones(2, 2)}, str(Path(folder) / "adapter_model.safetensors"))

    trainer = SimpleNamespace(save_model=save)
    tokenizer = SimpleNamespace(save_pretrained=lambda folder: Path(folder, "tokenizer.json").write_text("{}"))
    publish_adapter(trainer, tokenizer, adapter, is_rank_zero=True)
    assert sorted(p.name for p in adapter.iterdir()) == ["adapter_model.safetensors", "tokenizer.json"]
    assert sorted(p.name for p in elsewhere.iterdir()) == ["keep.txt"]


# --- the registry's index, edited by hand -----------------------------------------------------------------------------


def version(number: int, status: str = "retired", **metrics) -> dict:
    return {
        "version": number,
        "created_at": "2026-12-01T02:00:00+00:00",
        "status": status,
        "champion": status == "champion",
        "data_fingerprint": "d" * 64,
        "code_version": "c" * 40,
        "metrics": metrics,
    }


@pytest.mark.parametrize(
    "index, needle",
    [
        ('{"champion": 1, "versions": [{"version": 1, "crea', "not readable JSON"),
        ({"champion": None, "versions": {"1": {}}}, "no list of versions"),
        ({"champion": 2, "versions": [version(1), version(2, "champion", accuracy="high")]}, "version 2"),
        ({"champion": 2, "versions": [version(1), version(2, "champion"), version(2, "rejected")]}, "[2]"),
        ({"champion": 7, "versions": [version(1)]}, "champion 7"),
    ],
    ids=["truncated", "versions-not-a-list", "metric-as-text", "version-twice", "champion-not-listed"],
)
def test_a_hand_edited_index_is_refused_naming_the_file(tmp_path, index, needle):
    """Before: a bare JSONDecodeError or pydantic error naming no file; with version 2 listed twice,
    ``set_champion(2)`` made the rejected copy champion too."""
    registry = Registry(tmp_path / "registry")
    registry.root.mkdir()
    registry.index_path.write_text(index if isinstance(index, str) else json.dumps(index))
    for read in (registry.champion, registry.versions, lambda: registry.set_champion(2)):
        with pytest.raises(ConfigError) as refused:
            read()
        assert str(registry.index_path) in str(refused.value) and needle in str(refused.value)
        assert "registry_dir" in str(refused.value)


def test_a_symlinked_registry_lock_is_refused_and_its_target_left_as_it_was(tmp_path):
    """``index.lock`` a symlink to a file of the user running the nightly: before, every registry update opened it for
    writing and emptied that file."""
    notes = tmp_path / "notes.txt"
    notes.write_text("three weeks of notes\n")
    registry = Registry(tmp_path / "registry")
    registry.root.mkdir()
    (registry.root / "index.lock").symlink_to(notes)
    with pytest.raises(ConfigError, match=r"index\.lock is a symlink"):
        registry.set_champion(None)
    assert notes.read_text() == "three weeks of notes\n"


@pytest.mark.parametrize("tags", [{}, {"r1.version": "v3"}, {"r1.version": "9"}], ids=["no-tag", "text", "unlisted"])
def test_an_mlflow_champion_alias_this_registry_did_not_register_is_refused(tmp_path, monkeypatch, tags):
    """The MLflow home's ``champion`` alias moved by hand to a model version without the ``r1.version`` tag (a bare
    ``KeyError: 'r1.version'``), with a tag that is no number (ValueError), or naming a version the index does not
    list: before, the last read as "no champion yet", so the challenger was compared with the base model only."""
    from r1lib.ops.mlflow_registry import MlflowRegistry

    mirror = MlflowRegistry.__new__(MlflowRegistry)
    mirror.uri, mirror.name = "http://mlflow.example:5000", "r1-finetune"
    mirror.client = SimpleNamespace(
        get_model_version_by_alias=lambda name, alias: SimpleNamespace(version="4", tags=tags)
    )
    registry = Registry(tmp_path / "registry")
    registry.root.mkdir()
    registry.index_path.write_text(json.dumps({"champion": 1, "versions": [version(1, "champion")]}))
    monkeypatch.setattr(Registry, "mirror", property(lambda self: mirror))
    with pytest.raises(ConfigError, match="champion") as refused:
        registry.champion()
    assert ("index.json" if tags.get("r1.version") == "9" else "r1.version tag") in str(refused.value)


def test_a_well_formed_index_reads_as_before(tmp_path):
    registry = Registry(tmp_path / "registry")
    registry.root.mkdir()
    index = {"champion": 2, "versions": [version(1), version(2, "champion", accuracy=0.5)]}
    registry.index_path.write_text(json.dumps(index))
    assert registry.champion().version == 2 and registry.champion().metrics == {"accuracy": 0.5}
    assert registry.set_champion(1) == 2 and registry.get(2).status == "retired"


# --- the figures a promotion compares ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "challenger, champion, policy, named",
    [
        ({"accuracy": NAN, "base_accuracy": 0.5}, None, PromotionPolicy(), "challenger's accuracy"),
        ({"perplexity": NAN, "base_perplexity": 5.0}, None, PromotionPolicy(metric="perplexity"), "perplexity"),
        ({"accuracy": 0.4}, {"accuracy": NAN}, PromotionPolicy(), "champion's accuracy"),
        ({"accuracy": 0.9, "base_accuracy": NAN}, None, PromotionPolicy(), "base model's accuracy"),
        ({"accuracy": 0.9, "base_accuracy": 0.5, "forgetting_ratio": NAN}, None, PromotionPolicy(), "forgetting"),
        (
            {"accuracy": 0.9, "forgetting_ratio": 1.5},
            {"accuracy": 0.5, "forgetting_ratio": NAN},
            PromotionPolicy(max_forgetting_ratio=None),
            "champion's forgetting_ratio",
        ),
        (
            {"accuracy": 0.9, "base_accuracy": 0.5, "fairness_agreement": NAN, "base_fairness_agreement": 0.9},
            None,
            PromotionPolicy(),
            "challenger's fairness_agreement",
        ),
    ],
    ids=["nan-accuracy", "nan-perplexity", "champion-nan", "base-nan", "nan-forgetting", "champion-nan-forgetting",
         "nan-fairness"],
)  # fmt: skip
def test_a_figure_that_is_not_a_number_never_promotes(challenger, champion, policy, named):
    """Every comparison with NaN is false, so each check passed it: before, ``accuracy nan beats base model 0.5``
    promoted a diverged challenger, and a champion whose stored metric was NaN lost to anything."""
    promote, reason = decide(challenger, champion, policy)
    assert not promote
    assert named in reason and "not a finite number" in reason


def test_a_champion_without_the_metric_leaves_the_challenger_to_beat_the_base_model():
    """The champion's metrics recorded before ``policy.metric`` was chosen (its adapter gone, so not re-scored):
    before, ``accuracy 0.3 beats champion None`` promoted a challenger worse than the base model it was tuned from."""
    champion = {"perplexity": 3.0, "forgetting_ratio": 1.0}
    promote, reason = decide({"accuracy": 0.3, "base_accuracy": 0.5}, champion, PromotionPolicy())
    assert not promote and "base model (the champion has no accuracy) 0.5" in reason
    promote, reason = decide({"accuracy": 0.7, "base_accuracy": 0.5, "forgetting_ratio": 1.02}, champion,
                             PromotionPolicy())  # fmt: skip
    assert promote and "beats base model (the champion has no accuracy) 0.5" in reason
    assert not decide({"accuracy": 0.7, "base_accuracy": NAN}, champion, PromotionPolicy())[0]


def test_finite_figures_decide_as_before():
    assert decide({"accuracy": 0.9, "base_accuracy": 0.5}, None, PromotionPolicy())[0]
    assert not decide({"accuracy": 0.4, "base_accuracy": 0.5}, None, PromotionPolicy())[0]
    assert decide(
        {"accuracy": 0.9, "fairness_agreement": NAN}, {"accuracy": 0.5}, PromotionPolicy(max_fairness_drop=None)
    )[0]
