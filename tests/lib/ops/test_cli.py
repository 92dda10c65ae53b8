"""The r1-finetune command: presets, doctor (decisions on given facts, and a real look at this machine)."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from dataclasses import replace

import pytest

from r1lib.ops.doctor import Facts, diagnose, needs
from r1lib.presets import PRESETS, preset
from tests.conftest import ROOT

CPU_BOX = Facts(
    python=(3, 11),
    cuda_devices=[],
    cuda_version=None,
    torch_version="2.13.0+cpu",
    free_disk_gib=60.0,
    disk_path="/work",
    memory_gib=20.0,
    prefect_api_url=None,
    prefect_api_error=None,
    llama_cpp_version="0.3.36",
    llama_cpp_error=None,
)


def by_name(checks):
    return {c.name: c for c in checks}


def test_console_script_is_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["r1-finetune"] == "r1lib.ops.cli:main"


def test_tiny_preset_passes_on_a_cpu_machine():
    checks = diagnose(preset("tiny"), CPU_BOX)
    assert [c.name for c in checks if c.status == "FAIL"] == []
    assert "runs on the CPU" in by_name(checks)["gpu"].detail


def test_gpu_preset_on_a_cpu_machine_fails_and_says_what_to_do():
    gpu = by_name(diagnose(preset("r1-qwen-7b"), CPU_BOX))["gpu"]
    assert gpu.status == "FAIL" and "--preset tiny" in gpu.fix


def test_a_gpu_too_small_for_the_preset_fails():
    small = replace(CPU_BOX, cuda_devices=[("RTX 3060", 8.0)], cuda_version="12.8")
    assert by_name(diagnose(preset("r1-qwen-14b"), small))["gpu"].status == "FAIL"
    big = replace(CPU_BOX, cuda_devices=[("RTX 4090", 24.0)], cuda_version="12.8", free_disk_gib=500, memory_gib=64)
    checks = by_name(diagnose(preset("r1-llama-8b"), big))
    assert checks["gpu"].status == checks["disk"].status == checks["memory"].status == "ok"


def test_short_disk_and_memory_fail_with_the_amount_missing():
    cramped = replace(CPU_BOX, free_disk_gib=10.0, memory_gib=8.0)
    checks = by_name(diagnose(preset("r1-qwen-7b"), cramped))
    need = needs(preset("r1-qwen-7b"))
    assert checks["disk"].status == "FAIL" and f"{need.disk_gib - 10.0:.1f} GiB" in checks["disk"].fix
    assert "runs_dir" in checks["disk"].fix
    assert checks["memory"].status == "FAIL"


def test_missing_llama_cpp_fails_with_the_bootstrap_fix():
    error = "ModuleNotFoundError: No module named 'llama_cpp'"
    broken = replace(CPU_BOX, llama_cpp_version=None, llama_cpp_error=error)
    check = by_name(diagnose(preset("tiny"), broken))["llama-cpp"]
    assert check.status == "FAIL" and "scripts/bootstrap" in check.fix


def test_an_unreachable_prefect_api_is_found_and_named(monkeypatch):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from r1lib.ops.doctor import gather

    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        facts = gather(preset("tiny"))
    assert facts.prefect_api_url == "http://127.0.0.1:9/api" and facts.prefect_api_error
    check = by_name(diagnose(preset("tiny"), facts))["prefect"]
    assert check.status == "FAIL" and "PREFECT_API_URL" in check.detail and "unset PREFECT_API_URL" in check.fix


def test_doctor_on_this_machine_finds_llama_cpp_and_the_converter():
    out = subprocess.run(
        [sys.executable, "-m", "r1lib.ops.cli", "doctor"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    lines = out.stdout.splitlines()
    assert out.returncode == 0, out.stdout + out.stderr
    assert any(line.startswith("ok    llama-cpp  llama-cpp-python 0.3.36") for line in lines), out.stdout
    assert any(line.startswith("ok    disk") for line in lines)


def test_presets_lists_every_preset(capsys):
    from r1lib.ops.cli import main

    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in PRESETS)
    assert "embedded" in out and "CPU" in out


@pytest.mark.parametrize("argv", [[], ["train"]])
def test_an_unknown_command_prints_the_usage(argv, capsys):
    from r1lib.ops.cli import main

    assert main(argv) == 2
    assert "r1-finetune doctor" in capsys.readouterr().err


def test_process_defaults_keep_explicit_values_and_drop_only_the_known_notice(monkeypatch, caplog):
    import logging

    from r1lib.process import OPTIONAL_KERNEL_NOTICE, apply_defaults

    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    monkeypatch.delenv("TQDM_DELAY", raising=False)
    apply_defaults()
    apply_defaults()  # idempotent: one filter
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE" and os.environ["TQDM_DELAY"] == "5"
    name, prefix = OPTIONAL_KERNEL_NOTICE
    logger = logging.getLogger(name)
    assert len(logger.filters) == 1
    with caplog.at_level(logging.DEBUG, logger=name):
        logger.warning(prefix + ": No module named 'kernels'. Please make sure ...")
        logger.warning("some other bitsandbytes warning")
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [("WARNING", "some other bitsandbytes warning")]
