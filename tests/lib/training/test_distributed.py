"""Multi-process training: launch presets, and data-parallel training through torchrun.

On this CPU machine the DDP preset starts 2 CPU processes that all-reduce over gloo: the same code path as 2 GPUs over
NCCL (tests/lib/training/test_gpu.py runs that on a 2-GPU machine), small enough for CI.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from r1lib.config import TrainConfig
from r1lib.errors import ConfigError
from r1lib.presets import preset
from r1lib.training.launcher import launch_plan
from tests.conftest import ROOT

TRAIN_SCRIPT = """
import sys
from pathlib import Path
from r1lib.config import TrainConfig
from r1lib.presets import preset
from tasks.resolve_model import resolve_model
from tasks.train import train
cfg = preset("tiny")
train_cfg = TrainConfig(**{**cfg.train.model_dump(), "max_steps": int(sys.argv[4]), "save_steps": 3,
                           "logging_steps": 1, "micro_batch_size": 4, "gradient_accumulation": 2,
                           "gpus": int(sys.argv[3]), "learning_rate": 3e-3})
model_dir = resolve_model(cfg.model, cfg.cache_dir)
result = train(sys.argv[1], None, model_dir, cfg.model, train_cfg, cfg.tokenize, Path(sys.argv[2]))
print("RESULT " + result.model_dump_json())
"""


def start(dataset: str, out_dir: Path, processes: int, steps: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", TRAIN_SCRIPT, dataset, str(out_dir), str(processes), str(steps)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def finish(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-4000:]
    return json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])


def losses(result: dict) -> list[float]:
    return [h["loss"] for h in json.loads(Path(result["log_history"]).read_text()) if "loss" in h]


# --- launch presets -----------------------------------------------------------------------------------------------


def train_cfg(**changes) -> TrainConfig:
    return TrainConfig(**{**preset("tiny").train.model_dump(), **changes})


def test_one_process_trains_in_the_task_process():
    plan = launch_plan(train_cfg(gpus=1), "hf")
    assert (plan.name, plan.launcher, plan.processes) == ("single", "in-process", 1)


def test_more_processes_choose_the_ddp_preset_and_keep_the_effective_batch():
    plan = launch_plan(train_cfg(gpus=2, micro_batch_size=4, gradient_accumulation=2), "hf")
    assert (plan.name, plan.launcher, plan.processes) == ("ddp", "torchrun", 2)
    assert plan.trainer_args["ddp_find_unused_parameters"] is False
    with pytest.raises(ConfigError, match="multiple of the 2 training processes.*= 12"):
        launch_plan(train_cfg(gpus=2, micro_batch_size=4, gradient_accumulation=3), "hf")


def test_presets_are_data_files_chosen_by_the_config(monkeypatch):
    fsdp = launch_plan(train_cfg(gpus=2, gradient_accumulation=2, launch="fsdp"), "hf")
    assert fsdp.trainer_args["fsdp"] == "full_shard auto_wrap" and fsdp.quant_storage == "bfloat16"
    # What the preset sets over the config is said, field by field (the train stage logs it).
    said = fsdp.overrides(train_cfg(gpus=2, gradient_accumulation=2, launch="fsdp"))
    assert "optim='adamw_torch_fused' (train.optimizer = 'adamw_torch')" in said
    with pytest.raises(ConfigError, match="does not support the unsloth backend"):
        launch_plan(train_cfg(gpus=2, gradient_accumulation=2, launch="fsdp"), "unsloth")
    with pytest.raises(ConfigError, match="trains in one process; use ddp or fsdp"):
        launch_plan(train_cfg(gpus=2, gradient_accumulation=2, launch="single"), "hf")
    with pytest.raises(ConfigError, match=r"no preset .*known: ddp, fsdp, single"):
        launch_plan(train_cfg(launch="deepspeed"), "hf")
    assert launch_plan(train_cfg(gpus=2, gradient_accumulation=2), "hf").name == "ddp"  # auto: ddp for more than one
    # The config alone decides: no environment variable picks the preset.
    monkeypatch.setenv("R1_FINETUNE_LAUNCH", "ddp")
    assert launch_plan(train_cfg(), "hf").name == "single"


# --- data-parallel training ---------------------------------------------------------------------------------------


def ranks_of(out: Path) -> str:
    """The pids of the DDP ranks still running on the run directory ``out`` (empty when none)."""
    command = ["pgrep", "-f", f"r1lib.training.launcher {out}/launch/spec.json"]
    return subprocess.run(command, capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def killed_ddp_run(small_dataset, tmp_path_factory):
    """One 6-step DDP training (2 ranks, a checkpoint every 3) SIGKILLed after checkpoint 3, then run again to step 6:
    what both tests below read. (They used to train 6 steps each, plus a resume of 3: one launch of the ranks fewer
    now, and the one-process comparison reads the resumed run, whose steps 1-3 are the killed run's.)"""
    out = tmp_path_factory.mktemp("ddp") / "ddp"
    proc = start(small_dataset, out, processes=2, steps=6)
    deadline = time.monotonic() + 600
    while not list(out.glob("checkpoints/*/checkpoint-3/checkpoint-complete.json")):
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.2)
    proc.kill()  # SIGKILL of the task's process: the ranks get SIGTERM from the kernel (PR_SET_PDEATHSIG)
    proc.wait()
    gone_by = time.monotonic() + 5  # the ranks' SIGTERM handling gets 5 s, as long as it ends within them
    while ranks_of(out) and time.monotonic() < gone_by:
        time.sleep(0.2)
    orphans = ranks_of(out)
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # tidy up should ranks be left (the test then fails on ``orphans``)
    except ProcessLookupError:
        pass
    return {"dir": out, "orphans": orphans, "resumed": finish(start(small_dataset, out, processes=2, steps=6))}


@pytest.mark.slow
def test_killed_ddp_training_leaves_no_orphan_rank_and_resumes(killed_ddp_run):
    """Killed after checkpoint 3 of 6 (it was 9 steps: the three more proved nothing more)."""
    assert killed_ddp_run["orphans"] == "", f"orphaned ranks still running: {killed_ddp_run['orphans']}"
    resumed = killed_ddp_run["resumed"]
    assert resumed["resumed_from"] and resumed["resumed_from"].rsplit("-", 1)[-1] == "3"
    assert resumed["steps"] == 6
    assert (killed_ddp_run["dir"] / "adapter" / "adapter_model.safetensors").exists()


@pytest.mark.slow
def test_ddp_over_two_processes_trains_like_one_process_and_rank_zero_writes_one_adapter(
    small_dataset, rerun_after_final_checkpoint, killed_ddp_run
):
    """The one-process reference is the session's 6-step training of the same settings in the test process
    (conftest.py: rerun_after_final_checkpoint; this test used to train it in a child process of its own). The DDP
    run is the killed and resumed one above: its loss history holds the killed run's steps 1-3 and the resumed 4-6."""
    ddp = killed_ddp_run["resumed"]

    assert (ddp["processes"], ddp["launch"], ddp["steps"]) == (2, "ddp", 6)
    # Same effective batch (4 x 2 on one process, 4 x 1 on each of two): the same rows per step, so the same losses
    # up to floating-point reduction order.
    assert ddp["micro_batch_size"] * ddp["gradient_accumulation"] * 2 == 8
    single = rerun_after_final_checkpoint["first"]
    assert (single.processes, single.micro_batch_size, single.gradient_accumulation) == (1, 4, 2)
    assert len(losses(ddp)) == 6
    assert losses(ddp) == pytest.approx(rerun_after_final_checkpoint["first_losses"], rel=0.02)
    # Rank 0 wrote the artifacts once; each rank its own RNG state in the checkpoint.
    train_dir = killed_ddp_run["dir"]
    assert sorted(p.name for p in train_dir.iterdir()) == [
        ".lock",
        "adapter",
        "checkpoints",
        "launch",
        "log_history.json",
        "loss_curve.png",
        "result.json",
    ]
    assert (train_dir / "adapter" / "adapter_model.safetensors").exists()
    last = max((train_dir / "checkpoints").glob("*/checkpoint-6"))
    assert {p.name for p in last.glob("rng_state_*.pth")} == {"rng_state_0.pth", "rng_state_1.pth"}
    assert (last / "checkpoint-complete.json").exists()

    # The task died after the final checkpoint, before it returned: the rerun publishes that checkpoint through the
    # ranks (no step past max_steps, which transformers' resume would train at a mid-epoch end).
    from safetensors.torch import load_file

    shutil.rmtree(train_dir / "adapter")
    again = finish(start(small_dataset, train_dir, processes=2, steps=6))
    assert (again["steps"], again["resumed_from"]) == (6, str(last))
    assert not list((train_dir / "checkpoints").glob("*/checkpoint-7"))
    published = load_file(train_dir / "adapter" / "adapter_model.safetensors")
    saved = load_file(last / "adapter_model.safetensors")
    # The resumed run saved its checkpoint's adapter in float32 where a fresh run saves bfloat16 (seen here: the
    # killed run's checkpoint-3 is bfloat16); the rerun publishes it in bfloat16, so compare at the published dtype.
    assert published.keys() == saved.keys()
    assert all(published[k].equal(saved[k].to(published[k].dtype)) for k in saved)


def test_the_ddp_deployment_picks_the_ddp_preset_through_its_parameters():
    import yaml

    from r1lib.config import PipelineConfig
    from r1lib.presets import expand_preset

    deployment = next(
        d
        for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
        if d["name"] == "nightly-retrain-ddp"
    )
    config = PipelineConfig.model_validate(expand_preset(deployment["parameters"]["config"]))
    env = deployment["work_pool"]["job_variables"]["env"]
    assert config.train.gpus == 0 and config.train.launch == "ddp" and env["R1_GPU_LIMIT"] == "gpu"
    # gpus=0 means every visible GPU; on this CPU machine that is one process, so torchrun is not needed
    plan = launch_plan(config.train, "hf")
    assert (plan.name, plan.processes, plan.launcher) == ("ddp", 1, "in-process")


@pytest.mark.slow
def test_the_whole_flow_trains_data_parallel_and_writes_one_adapter(prefect_harness, tmp_path):
    """The finetune flow with train.gpus=2 on this CPU machine: the train task launches 2 gloo ranks; evaluation,
    merge, GGUF export and the smoke test then use the one adapter rank 0 wrote (tests/lib/training/test_gpu.py: the
    same on 2 GPUs). The flow runs in the test process against the session's Prefect API (a command line would start
    a server of its own first: tests/lib/ops/test_local_server.py checks that one)."""
    from flows.finetune import finetune
    from r1lib.config import PipelineConfig
    from r1lib.presets import expand_preset

    config = PipelineConfig.model_validate(
        expand_preset(
            {
                "preset": "tiny",
                "runs_dir": str(tmp_path),
                # 20 steps (it was 30): the loss is down from 6.5 to about 0.5 and the model answers in the R1
                # format; that the ranks learn like one process is the test above's.
                "train": {"gpus": 2, "micro_batch_size": 8, "gradient_accumulation": 2, "max_steps": 20},
                "export": {"quantizations": ["Q8_0"]},
                "evaluate": {"max_examples": 20},
                # the R1 format after 20 steps depends on the embedded model's weights, which differ by CPU (AVX2 vs
                # AVX-512 builds); tests/flows/test_flow.py requires it after the preset's whole training
                "smoke": {"require_r1_format": False},
            }
        )
    )
    finetune(config)
    run_dir = next(tmp_path.iterdir())
    summary = json.loads((run_dir / "summary.json").read_text())
    train = summary["train"]
    assert (train["processes"], train["launch"], train["steps"]) == (2, "ddp", 20)
    assert train["micro_batch_size"] * train["gradient_accumulation"] * train["processes"] == 16
    assert train["last_loss"] < train["first_loss"] / 2
    assert sorted(p.name for p in (run_dir / "train").glob("*adapter*")) == ["adapter"]
    assert summary["evaluate"]["perplexity_after"] < summary["evaluate"]["perplexity_before"] / 2
    assert all(g["smoke_tokens_per_second"] > 0 for g in summary["gguf"]), summary["gguf"]
