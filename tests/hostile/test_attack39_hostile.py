"""Hostile training-method settings and completions: a GRPO run with a held-out loss (r1lib/training/methods/grpo.py),
the out-of-memory retry at an odd micro-batch (r1lib/training/retry.py), GRPO's correctness reward on answers written
with a CJK keyboard, markdown or LaTeX separators (r1lib/training/rewards.py), preference rows whose prompt is no
question or ends with an answer (r1lib/data/preference.py), and train.init_adapter folders that cannot start the run
(r1lib/training/backends.py, checked by r1lib/preflight.py), the rehearsal's GRPO stage with odd settings
(r1lib/rehearsal/run.py)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from tests.lib.training.test_methods import oom_above, spec

# --- GRPO's held-out batch ------------------------------------------------------------------------------------------


def built_grpo_arguments(monkeypatch, micro_batch: int, accumulation: int, group: int):
    """The GRPOConfig ``grpo.build`` hands TRL for a run with a held-out loss every 2 steps (no model loaded)."""
    import trl
    from datasets import Dataset

    from r1lib.config import TrainConfig
    from r1lib.training.methods import grpo

    built = []

    class Trainer:
        def __init__(self, args, **_):
            built.append(args)
            self.model = None

    monkeypatch.setattr(trl, "GRPOTrainer", Trainer)
    monkeypatch.setattr(grpo, "prepared_rows", lambda rows, *_: rows)
    monkeypatch.setattr(grpo, "use_recorded_rollouts", lambda *_: "HF generate")
    cfg = TrainConfig(
        method="grpo", max_steps=2, eval_steps=2, micro_batch_size=micro_batch, gradient_accumulation=accumulation,
        grpo={"num_generations": group, "beta": 0.0},
    )  # fmt: skip
    rows = Dataset.from_list([{"input_ids": [1], "labels": [1]}])
    grpo.build(spec(rows, cfg=cfg, eval_rows=rows, micro_batch=micro_batch, accumulation=accumulation), None,
               SimpleNamespace(padding_side="right"))  # fmt: skip
    return built[0]


@pytest.mark.parametrize(
    ("micro_batch", "accumulation", "group", "expected"),
    [(2, 4, 8, 8), (8, 1, 8, 8), (3, 2, 6, 6), (16, 1, 8, 16), (3, 4, 4, 4)],
)
def test_a_grpo_run_with_a_held_out_loss_builds_its_trainer(micro_batch, accumulation, group, expected, monkeypatch):
    """``--set train.method=grpo --set train.eval_steps=50`` with the default batch (2 x 4, groups of 8): the form
    passed it, then TRL refused it after the model had loaded, naming none of our settings: "The global eval batch
    size (2 * 1) must be divisible by the number of generations used for evaluation (8)"."""
    args = built_grpo_arguments(monkeypatch, micro_batch, accumulation, group)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (micro_batch, accumulation)
    assert (args.per_device_eval_batch_size, args.eval_strategy) == (expected, "steps")


@pytest.mark.parametrize(("processes", "expected"), [(1, 8), (2, 4), (3, 8), (8, 1)])
def test_the_held_out_batch_of_every_process_together_holds_whole_groups(processes, expected, monkeypatch):
    from datasets import Dataset

    from r1lib.config import TrainConfig
    from r1lib.training.methods.grpo import eval_batch_size

    monkeypatch.setenv("WORLD_SIZE", str(processes))
    cfg = TrainConfig(method="grpo", micro_batch_size=1, gradient_accumulation=8 * processes)
    size = eval_batch_size(spec(Dataset.from_list([{"input_ids": [1]}]), cfg=cfg, micro_batch=1, accumulation=8))
    assert size == expected and size * processes % 8 == 0


# --- the out-of-memory retry ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("micro_batch", "accumulation", "tried"),
    [(3, 2, [(3, 2), (1, 6)]), (6, 1, [(6, 1), (3, 2), (1, 6)]), (12, 1, [(12, 1), (6, 2), (3, 4), (1, 12)])],
)
def test_the_oom_retry_at_an_odd_micro_batch_keeps_the_effective_batch(micro_batch, accumulation, tried, tmp_path,
                                                                        monkeypatch):  # fmt: skip
    """A GRPO run of 3 x 2 with groups of 6 (the form's check passes) runs out of memory: the retry went to 1 x 4,
    logging "same effective batch", so a step held 4 completions, and the retry died on the group check (SFT: a
    third of every step's rows silently gone)."""
    import r1lib.training.retry as retry
    from r1lib.config import ModelConfig, TrainConfig
    from r1lib.training.fit import FitSpec
    from r1lib.training.launcher import LaunchPlan

    attempts = oom_above(monkeypatch, 1)
    cfg = TrainConfig(
        method="grpo", gradient_checkpointing=True, micro_batch_size=micro_batch, gradient_accumulation=accumulation,
        grpo={"num_generations": micro_batch * accumulation},
    )  # fmt: skip
    first = FitSpec(
        backend="hf", dataset_dir="d", eval_dataset_dir=None, model_dir="m", model_cfg=ModelConfig(), cfg=cfg,
        max_seq_length=64, checkpoint_dir=str(tmp_path / "ck"), adapter_dir=str(tmp_path / "adapter"), resume=None,
        micro_batch=micro_batch, accumulation=accumulation,
    )  # fmt: skip
    plan = LaunchPlan(name="single", launcher="in-process", processes=1)
    run = retry.fit_with_oom_retry(first, plan, tmp_path / "launch", auto_recompute=False)
    assert attempts == tried
    assert all(m * a == micro_batch * accumulation for m, a in attempts)
    assert run.oom_retries[-1].endswith(f"retrying with {tried[-1][0]} x {tried[-1][1]} (same effective batch)")


# --- the correctness reward -----------------------------------------------------------------------------------------


def scored(answer: str, reference: str) -> float:
    from r1lib.training.rewards import correctness_reward

    return correctness_reward(f"Let me work it out.\n</think>\n\n{answer}", reference)


@pytest.mark.parametrize(
    ("answer", "reference"),
    [
        ("１/２", "1/2"),  # full-width digits and slash: scored 0 while "４２" scored 1
        ("\\frac{１}{２}", "0.5"),
        ("x=４２", "42"),
        ("１，０００", "1000"),  # full-width comma as the thousands separator ("１,０００" scored 1)
        ("答案：１２", "12"),
        ("1/2", "１/２"),  # the reference typed on the same keyboard
        ("**Answer:** 42", "42"),  # the R1 distills' markdown answer line: 0 while "Answer: 42" scored 1
        ("**Answer**: 42", "42"),
        ("**The final answer is** $\\frac{1}{2}$", "0.5"),
        ("1\\,000", "1000"),  # LaTeX's thin-space thousands separator ("1{,}000" scored 1)
        ("\\boxed{12\\,345\\,678}", "12345678"),
        ("42\\,\\text{cm}", "42"),  # LaTeX's thin space before a unit read as a list's comma ("42\\text{ cm}": 1)
        ("\\frac{1}{2}\\;\\text{m}", "0.5"),
    ],
)
def test_an_equal_answer_in_another_script_or_markup_is_paid(answer, reference):
    assert scored(answer, reference) == 1.0


@pytest.mark.parametrize(
    ("answer", "reference"),
    [("４１，４２", "42"), ("**Answer:** 41 or 42", "42"), ("１/３", "1/2"), ("1\\,5", "1.5"), ("1\\,001", "1000"),
     ("**Answer:** 43", "42"), ("41\\,\\text{or}\\,42", "42"), ("41,\\,42", "42")],
)  # fmt: skip
def test_a_hedge_or_a_different_number_in_those_forms_is_still_not_paid(answer, reference):
    assert scored(answer, reference) == 0.0


# --- preference prompts ---------------------------------------------------------------------------------------------

USER, ASSISTANT, SYSTEM = ({"role": r, "content": c} for r, c in (("user", "Q"), ("assistant", "A0"), ("system", "S")))


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ({"completion": "A", "label": True}, "completion"),  # passed validation, then tokenize crashed: "Cannot
        ({"messages": [ASSISTANT], "label": "yes"}, "messages"),  # apply chat template to an empty conversation"
        ({"messages": [SYSTEM, ASSISTANT], "label": "1"}, "messages"),
        # trained as an assistant answering its own answer, where a pair with the same prompt was refused
        ({"prompt": [USER, ASSISTANT], "completion": "A", "label": "true"}, "completion"),
        ({"messages": [USER, ASSISTANT, {"role": "assistant", "content": "B"}], "label": True}, "messages"),
        ({"prompt": "Q", "completion": [{"role": "user", "content": "Q2"}, ASSISTANT], "label": False}, "completion"),
        # the chat template moves a later system turn to the top, before the question it followed
        ({"prompt": [USER, SYSTEM, {"role": "user", "content": "Q2"}], "chosen": "A", "rejected": "B"}, "chosen"),
        ({"prompt": [USER, {"role": "user", "content": "Q2"}], "chosen": "A", "rejected": "B"}, "chosen"),
        ({"prompt": [ASSISTANT, USER], "chosen": "A", "rejected": "B"}, "chosen"),
    ],
)
def test_a_preference_prompt_that_is_no_question_or_ends_with_an_answer_is_refused(row, field):
    from r1lib.data.preference import normalize_preference
    from r1lib.data.records import RecordError

    with pytest.raises(RecordError, match="must (end with a|alternate) user") as refused:
        normalize_preference(row)
    assert (refused.value.reason, refused.value.field) == ("role_order", field)


@pytest.mark.parametrize(
    "row",
    [
        {"prompt": [SYSTEM, USER, ASSISTANT, USER], "completion": "A", "label": "no"},
        {"messages": [SYSTEM, USER, ASSISTANT, USER, {"role": "assistant", "content": "B"}], "label": True},
        {"prompt": [SYSTEM, USER, ASSISTANT, USER], "chosen": "A", "rejected": "B"},
        {"prompt": "Q", "completion": "A", "label": "TRUE "},
    ],
)
def test_a_multi_turn_prompt_that_alternates_is_kept_whole(row):
    from r1lib.data.preference import normalize_preference

    normalized = normalize_preference(row)
    assert normalized["prompt"][-1] == USER and normalized["system"] in ("S", "")
    assert [t["role"] for t in normalized["prompt"]] in (["user"], ["user", "assistant", "user"])


# --- train.init_adapter ---------------------------------------------------------------------------------------------

LORA = {"r": 16, "lora_alpha": 32, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                      "down_proj"]}  # fmt: skip


def adapter_folder(folder, config: dict | str = LORA, weights: bool = True):
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    text = config if isinstance(config, str) else json.dumps({"peft_type": "LORA", **config})
    (folder / "adapter_config.json").write_text(text)
    if weights:
        save_file({"base_model.model.a.lora_A.weight": torch.ones(2, 4)}, folder / "adapter_model.safetensors")
    return folder


def preflight_with(tmp_path, init_adapter: str, *argv: str):
    from r1lib.preflight import check_config
    from r1lib.presets import config_from_args

    config = config_from_args(
        ["--preset", "tiny", "--set", f"train.init_adapter={json.dumps(init_adapter)}",
         "--set", f"data.allowed_roots={json.dumps([str(tmp_path), '.'])}",
         "--set", f"runs_dir={json.dumps(str(tmp_path / 'runs'))}",
         "--set", f"cache_dir={json.dumps(str(tmp_path / 'cache'))}", *argv]
    )  # fmt: skip
    check_config(config)
    return config


def hostile_adapter(tmp_path, case: str):
    if case == "missing":
        return tmp_path / "nowhere"
    if case == "no_config":
        (tmp_path / "run" / "train" / "adapter").mkdir(parents=True)
        return tmp_path / "run"
    if case == "symlink_loop":
        (tmp_path / "loop").symlink_to(tmp_path / "loop")
        return tmp_path / "loop"
    if case == "other_rank":
        return adapter_folder(tmp_path / "run" / "train" / "adapter", {**LORA, "r": 8}).parent.parent
    if case == "other_targets":
        return adapter_folder(tmp_path / "adapter", {**LORA, "target_modules": ["q_proj", "v_proj"]})
    if case == "broken_config":
        return adapter_folder(tmp_path / "adapter", '{"r": 16, ')
    if case == "no_weights":
        return adapter_folder(tmp_path / "adapter", weights=False)
    folder = adapter_folder(tmp_path / "adapter")  # pickle weights beside the safetensors
    (folder / "adapter_model.bin").write_bytes(b"\x80\x04 a pickle")
    return folder


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("missing", "no LoRA adapter there"),
        ("no_config", "no LoRA adapter there"),
        ("symlink_loop", "no LoRA adapter there"),
        ("other_rank", r"'r': 8.*set train.lora"),
        ("other_targets", r"\['q_proj', 'v_proj'\].*set train.lora"),
        ("broken_config", "adapter_config.json cannot be read"),
        ("no_weights", "no adapter_model.safetensors"),
        ("pickle", r"pickle files \['adapter_model.bin'\]"),
    ],
)
def test_an_init_adapter_that_cannot_start_the_run_is_refused_before_any_stage(tmp_path, case, needle):
    """Each of these passed the preflight and every data stage, and failed only in the train stage after the base
    model had loaded (minutes to hours in); the pickle one was never checked as evaluation and merge check theirs."""
    folder = hostile_adapter(tmp_path, case)
    with pytest.raises(Exception, match=needle) as refused:
        preflight_with(tmp_path, str(folder))
    assert "train.init_adapter" in str(refused.value) or str(folder) in str(refused.value)


def test_a_matching_adapter_or_run_folder_passes_and_a_cleared_field_is_a_fresh_adapter(tmp_path):
    from r1lib.training.methods.base import reference_description

    run = adapter_folder(tmp_path / "run" / "train" / "adapter").parent.parent
    assert preflight_with(tmp_path, str(run)).train.init_adapter == str(run)
    data_only = preflight_with(tmp_path, str(tmp_path / "sft-run-still-training"), "--set", 'stop_after="tokenize"')
    assert data_only.stop_after == "tokenize"  # no train stage: its adapter may not exist yet
    cleared = preflight_with(tmp_path, "")  # the run form sends a cleared field as ""
    assert cleared.train.init_adapter is None
    assert reference_description(cleared.train).startswith("the base model with the LoRA adapter disabled")


def test_an_adapter_of_another_base_model_is_refused_naming_it(tmp_path):
    """Same rank and targets, trained on a model of another width: torch's bare "size mismatch" RuntimeError."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from r1lib.config import TrainConfig
    from r1lib.errors import ConfigError
    from r1lib.training.backends import load_init_adapter

    def tiny(hidden: int, layers: int = 1):
        torch.manual_seed(0)
        shape = LlamaConfig(vocab_size=64, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                            num_attention_heads=2, num_key_value_heads=2)  # fmt: skip
        lora = LoraConfig(r=16, lora_alpha=32, target_modules=LORA["target_modules"], task_type="CAUSAL_LM")
        return get_peft_model(LlamaForCausalLM(shape), lora)

    other = tiny(32)
    other.peft_config["default"].base_model_name_or_path = "someone/wider-model"
    other.save_pretrained(tmp_path / "adapter")
    cfg = TrainConfig(init_adapter=str(tmp_path / "adapter"))
    with pytest.raises(ConfigError, match=r"trained on another model \(someone/wider-model\): size mismatch"):
        load_init_adapter(tiny(16), cfg.init_adapter, cfg)
    assert load_init_adapter(tiny(32), cfg.init_adapter, cfg) == tmp_path / "adapter"
    # the same width, one layer more: the second layer's LoRA silently kept its fresh start
    with pytest.raises(ConfigError, match=r"no weights for 14 LoRA weights of this model \(e.g. .*layers\.1\."):
        load_init_adapter(tiny(32, layers=2), cfg.init_adapter, cfg)


# --- the rehearsal's GRPO stage -------------------------------------------------------------------------------------


def grpo_stage_sees(tmp_path, monkeypatch, *argv):
    """The train section the rehearsal's GRPO stage hands measure_grpo (stubbed), on a CPU."""
    from r1lib.rehearsal.run import grpo_stage
    from tests.hostile.test_attack38_hostile import measured_grpo_train_configs, rehearsal

    args, config = rehearsal(tmp_path, monkeypatch, "--grpo-steps", "1", *argv)
    seen, result = measured_grpo_train_configs(tmp_path, monkeypatch)
    figures, error = grpo_stage(args, config, result, tmp_path)
    return seen[0] if seen else error


@pytest.mark.parametrize("group", [6, 3, 16])
def test_the_rehearsals_grpo_stage_batches_whole_groups_of_the_runs_size(tmp_path, monkeypatch, group):
    """``--set train.grpo.num_generations=6``: the stage kept the group and trained 8 x 1 completions a step (its
    fixed --grpo-micro-batch), so the GRPO stage failed on the group check after the whole flow had run."""
    from r1lib.config import TrainConfig
    from r1lib.training.methods.grpo import check_group_size
    from tests.lib.training.test_methods import spec

    train = grpo_stage_sees(tmp_path, monkeypatch, "--set", f"train.grpo.num_generations={group}")
    assert train.grpo.num_generations == group
    assert train.micro_batch_size * train.gradient_accumulation % group == 0
    TrainConfig.model_validate(train.model_dump())  # what the form accepts
    check_group_size(spec(None, cfg=train, micro_batch=train.micro_batch_size, accumulation=1))


def test_a_grpo_stage_batch_that_splits_a_group_is_refused_naming_the_flags_before_the_flow(tmp_path, monkeypatch):
    from r1lib.errors import ConfigError
    from r1lib.rehearsal.run import grpo_train_config
    from tests.hostile.test_attack38_hostile import rehearsal

    args, config = rehearsal(tmp_path, monkeypatch, "--grpo-steps", "1", "--grpo-micro-batch", "8",
                             "--grpo-generations", "6")  # fmt: skip
    with pytest.raises(ConfigError, match=r"--grpo-micro-batch 8 .*num_generations 6.*not a multiple"):
        grpo_train_config(args, config, None)
    error = grpo_stage_sees(tmp_path, monkeypatch, "--grpo-micro-batch", "8", "--grpo-generations", "6")
    assert "--grpo-micro-batch 8" in error


def test_the_grpo_stage_keeps_the_runs_overlong_buffer_inside_the_limit(tmp_path, monkeypatch):
    """``--set train.grpo.overlong_buffer=100``: the stage replaced it with a quarter of the limit (256)."""
    kept = grpo_stage_sees(tmp_path, monkeypatch, "--set", "train.grpo.overlong_buffer=100")
    assert (kept.grpo.overlong_buffer, kept.grpo.max_completion_length) == (100, 1024)
    past = grpo_stage_sees(tmp_path, monkeypatch, "--set", "train.grpo.overlong_buffer=100",
                           "--grpo-completion-tokens", "32")  # fmt: skip
    assert (past.grpo.overlong_buffer, past.grpo.max_completion_length) == (8, 32)  # past the limit: a quarter of it


def test_the_rehearsal_refuses_that_batch_before_the_flow_runs(tmp_path, monkeypatch):
    import r1lib.rehearsal.run as run
    from flows.rehearse import main

    monkeypatch.setattr(run, "run_flow", lambda *a: pytest.fail("the flow ran"))
    # main points Prefect at a home of its own: restored after the test
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect-home"))
    monkeypatch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    monkeypatch.setenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    monkeypatch.delenv("R1_RESULT_STORAGE", raising=False)
    code = main(
        ["--shape", "tiny-qwen", "--train-rows", "4", "--test-rows", "2", "--prompt-tokens", "20,40",
         "--completion-tokens", "40,80", "--grpo-steps", "2", "--grpo-generations", "6", "--grpo-micro-batch", "8",
         "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out")]
    )  # fmt: skip
    result = json.loads(next((tmp_path / "out").glob("rehearsal-tiny-qwen-*.json")).read_text())
    assert code == 1 and not result["completed"] and "--grpo-micro-batch 8" in result["error"]


# --- the reward weights ---------------------------------------------------------------------------------------------


def test_reward_weights_that_leave_only_the_length_penalty_are_refused():
    """``--set train.grpo.rewards.correctness=0 --set train.grpo.rewards.format=0``: the form accepted it (overlong
    kept its default 1), and every completion shorter than the buffer scored the same, so no group had a signal."""
    from pydantic import ValidationError

    from r1lib.config import TrainConfig

    with pytest.raises(ValidationError, match="format and correctness are both 0"):
        TrainConfig(method="grpo", grpo={"rewards": {"format": 0, "correctness": 0}})
    for weights in ({"format": 0}, {"correctness": 0}, {"overlong": 0}, {"correctness": 0, "overlong": 0}):
        assert TrainConfig(method="grpo", grpo={"rewards": weights}).grpo.rewards.overlong in (0, 1)


# --- KTO's micro-batch ----------------------------------------------------------------------------------------------


def test_a_kto_micro_batch_of_one_is_refused_by_the_form_naming_both_fixes():
    """``--set train.method=kto --set train.micro_batch_size=1``: the form passed it, then TRL's KTOTrainer refused
    it after the model had loaded ("Actual (not effective) batch size must be > 1")."""
    from pydantic import ValidationError

    from r1lib.config import TrainConfig

    with pytest.raises(ValidationError, match=r"micro_batch_size = 1.*apo_zero_unpaired"):
        TrainConfig(method="kto", micro_batch_size=1, gradient_accumulation=16)
    assert TrainConfig(method="kto", kto={"loss_type": "apo_zero_unpaired"}, micro_batch_size=1).micro_batch_size == 1
    assert TrainConfig(method="dpo", micro_batch_size=1).micro_batch_size == 1


def test_the_memory_plan_on_a_small_card_keeps_two_kto_rows(tmp_path):
    """The 7B shape on a 12 GiB card: the plan chose micro-batch 1 x 16, which the form's check never saw."""
    from r1lib.config import ModelConfig
    from r1lib.model.shapes import MODELS
    from r1lib.presets import preset
    from r1lib.training.plan import plan_memory

    (tmp_path / "config.json").write_text(json.dumps(MODELS["r1-qwen-7b"]))
    model = ModelConfig(name_or_path=str(tmp_path))
    for method, least in (("kto", 2), ("dpo", 1)):
        cfg = preset("r1-qwen-7b").train.model_copy(update={"method": method})
        plan = plan_memory(cfg, model, str(tmp_path), "hf", 4096, 4, 4, budget=12 * 2**30)
        assert (plan.micro_batch, plan.accumulation) == (least, 16 // least)


def test_the_oom_retry_stops_at_two_kto_rows(tmp_path, monkeypatch):
    import r1lib.training.retry as retry
    from r1lib.config import ModelConfig, TrainConfig
    from r1lib.training.fit import FitSpec
    from r1lib.training.launcher import CudaOutOfMemory, LaunchPlan

    attempts = []

    def out_of_memory(attempt, plan, work, hook):
        attempts.append((attempt.micro_batch, attempt.accumulation))
        raise CudaOutOfMemory("CUDA out of memory (planted)")

    monkeypatch.setattr(retry, "launch", out_of_memory)
    cfg = TrainConfig(method="kto", gradient_checkpointing=True, micro_batch_size=8, gradient_accumulation=1)
    first = FitSpec(
        backend="hf", dataset_dir="d", eval_dataset_dir=None, model_dir="m", model_cfg=ModelConfig(), cfg=cfg,
        max_seq_length=64, checkpoint_dir=str(tmp_path / "ck"), adapter_dir=str(tmp_path / "adapter"), resume=None,
        micro_batch=8, accumulation=1,
    )  # fmt: skip
    with pytest.raises(CudaOutOfMemory):  # the out-of-memory error, not TRL's batch-size refusal at micro-batch 1
        retry.fit_with_oom_retry(first, LaunchPlan(name="single", launcher="in-process", processes=1),
                                 tmp_path / "launch", auto_recompute=False)  # fmt: skip
    assert attempts == [(8, 1), (4, 2), (2, 4)]


THOUGHT_ONLY = "<think>\nLet me think about it.\n</think>\n\n"


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ({"prompt": "Q", "chosen": THOUGHT_ONLY, "rejected": "B"}, "chosen"),
        ({"prompt": "Q", "chosen": THOUGHT_ONLY + "\u200b", "rejected": "B"}, "chosen"),
        ({"prompt": "Q", "completion": THOUGHT_ONLY, "label": "yes"}, "completion"),
        ({"messages": [USER, {"role": "assistant", "content": THOUGHT_ONLY}], "label": True}, "messages"),
    ],
)
def test_a_preferred_answer_that_only_thinks_is_refused_as_an_sft_row_is(row, field):
    """An SFT row whose answer is reasoning with nothing after it is refused (empty_answer); as the chosen side of a
    pair, or a desirable KTO answer, it was accepted: preference training then rewards stopping after the thought."""
    from r1lib.data.preference import normalize_preference
    from r1lib.data.records import RecordError

    with pytest.raises(RecordError, match="no answer after its reasoning") as refused:
        normalize_preference(row)
    assert (refused.value.reason, refused.value.field) == ("empty_answer", field)


def test_a_rejected_or_undesirable_answer_that_only_thinks_is_kept_as_a_bad_example():
    from r1lib.data.preference import normalize_preference

    assert normalize_preference({"prompt": "Q", "chosen": "A", "rejected": THOUGHT_ONLY})["rejected"]["content"] == ""
    assert normalize_preference({"prompt": "Q", "completion": THOUGHT_ONLY, "label": "no"})["label"] is False
