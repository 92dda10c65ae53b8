"""Configuration that an outside trial found accepted or refused late: each is refused on the command line before
any work (exit status 2, one line naming the field or file, no traceback), or applied as the user meant it.

The command line's ``finetune`` is replaced by a stub that records the call, so "accepted" means the flow would have
started with the configuration it was given.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

import flows.finetune as finetune_module


def refused(result, needle: str) -> None:
    code, err, config = result
    assert (code, config) == (2, None), err
    assert err.startswith("configuration refused") and needle in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 2, err


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("runs_dir", "/dev/null"),
        ("runs_dir", "/proc/self"),
        ("cache_dir", "/dev/null"),
    ],
)
def test_a_folder_that_cannot_be_written_is_refused_before_any_work(cli, field, value):
    refused(cli("--set", f"{field}={value}"), field)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_a_read_only_runs_folder_is_refused_before_any_work(cli, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    refused(cli("--set", f"runs_dir={folder}"), "runs_dir")


@pytest.mark.skipif(shutil.which("chattr") is None or os.geteuid() != 0, reason="needs chattr as root")
def test_an_immutable_runs_folder_is_refused_before_any_work(cli, tmp_path):
    folder = tmp_path / "immutable"
    folder.mkdir()
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("this filesystem has no immutable attribute")
    try:
        refused(cli("--set", f"runs_dir={folder}"), "runs_dir")
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_a_config_file_that_is_a_fifo_is_refused_without_waiting(cli, tmp_path):
    fifo = tmp_path / "config.json"
    os.mkfifo(fifo)
    refused(cli("--config", str(fifo)), "not a regular file")


def test_a_config_file_with_a_byte_order_mark_is_read(cli, tmp_path):
    path = tmp_path / "config.json"
    path.write_bytes(b'\xef\xbb\xbf{"train": {"max_steps": 7}}')
    code, err, config = cli("--config", str(path))
    assert config is not None and config.train.max_steps == 7, err


def test_set_of_a_whole_section_merges_like_config_does(cli):
    code, err, config = cli("--set", 'train={"max_steps": 7}')
    assert config is not None, err
    tiny = finetune_module.TINY
    assert config.train.max_steps == 7
    assert config.train.learning_rate == tiny.train.learning_rate  # the preset's, not the class default
    assert config.train.micro_batch_size == tiny.train.micro_batch_size


@pytest.mark.parametrize(
    "argv",
    [
        ["--set", "preset=r1-qwen-7b"],
        ["--preset", "r1-qwen-7b", "--set", "preset=tiny"],
    ],
)
def test_setting_the_preset_field_cannot_relabel_a_run(cli, argv):
    refused(cli(*argv), "--preset")


def test_a_config_file_naming_another_preset_is_refused(cli, tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"preset": "r1-qwen-7b"}')
    refused(cli("--config", str(path)), "--preset r1-qwen-7b")


def test_a_config_file_naming_the_same_preset_is_accepted(cli, tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"preset": "tiny", "train": {"seed": 3}}')
    code, err, config = cli("--config", str(path))
    assert config is not None and config.train.seed == 3, err


def test_a_ray_runner_without_prefect_ray_is_refused_before_any_work(cli):
    pytest.importorskip("prefect_dask")
    try:
        import prefect_ray  # noqa: F401
    except ImportError:
        refused(cli("--set", "runner.kind=ray"), "prefect-ray")
    else:
        pytest.skip("prefect-ray is installed here")


def test_an_unreachable_cluster_address_is_refused_before_any_work(cli):
    # Port 9 on loopback (discard) has no listener here: the connection is refused at once.
    refused(cli("--set", "runner.kind=dask", "--set", "runner.address=tcp://127.0.0.1:9"), "runner.address")


def test_a_second_run_of_the_same_run_folder_fails_before_any_stage(tmp_path, monkeypatch):
    """Two runs of one run_name at once used to mix their data; the second now fails at once, naming the first.
    The holder waits long: on a busy machine the flow spends a minute starting its Prefect server first."""
    import sys

    from r1lib.io import DirectoryBusy
    from r1lib.presets import preset

    def no_stage(*args, **kwargs):
        raise AssertionError("a stage ran in a run folder another run holds")

    config = preset("tiny", runs_dir=str(tmp_path / "runs"), run_name="same")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from r1lib.io import exclusive_dir\n"
            f"with exclusive_dir({str(config.run_dir())!r}):\n    print('held', flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setattr(finetune_module, "resolve_model", no_stage)
        with pytest.raises(DirectoryBusy, match=f"in use by pid {holder.pid}"):
            finetune_module.finetune.fn(config)
    finally:
        holder.kill()
        holder.wait()


SUBNORMAL_FIELDS = [
    "train.learning_rate",
    "evaluate.temperature",
    "evaluate.top_p",
    "evaluate.time_limit_s",
    "evaluate.max_forgetting_ratio",
    "smoke.timeout_s",
    "train.max_grad_norm",
    "dedup.threshold",
    "train.max_gpu_memory_gib",
    "model.embedded.pretrain_lr",
    "train.weight_decay",
]


@pytest.mark.parametrize("field", SUBNORMAL_FIELDS)
def test_a_subnormal_number_is_refused_before_any_work_naming_the_field(cli, field):
    """``5e-324`` passes every ``gt=0`` bound and reaches the run as a zero that is not one (before: accepted)."""
    refused(cli("--set", f"{field}=5e-324"), field)
