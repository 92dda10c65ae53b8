"""The ``r1-finetune`` command (installed by ``pip install -e .`` / scripts/bootstrap).

r1-finetune run --preset tiny --set train.max_steps=20   # the finetune flow (same as python -m flows.finetune)
r1-finetune presets                                       # the presets and what each runs
r1-finetune doctor --preset r1-qwen-7b                    # can this machine run it? what to fix
r1-finetune deploy --help                                 # work pools, the GPU limit, deployments
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from r1lib.config import PipelineConfig
from r1lib.errors import ConfigError, DataValidationError, ModelCollapsed, PathNotAllowed
from r1lib.preflight import allowed_roots_fix, preflight
from r1lib.presets import config_from_args, describe
from r1lib.process import apply_defaults

FINETUNE_ENTRYPOINT = "flows.finetune.finetune"


def run_command(flow: Callable[[PipelineConfig], Any], argv: list[str]) -> int:
    """Run ``flow`` (the finetune flow) from command-line arguments: a bad configuration is refused before any
    work, in one line per field, without a traceback."""
    apply_defaults()
    try:
        config = config_from_args(argv)
        preflight(config)
    except ValidationError as exc:
        print(f"configuration refused:\n{describe(exc)}", file=sys.stderr)
        return 2
    except PathNotAllowed as exc:
        fix = allowed_roots_fix(config)
        print(f"configuration refused: {exc}" + (f"\nto allow it: {fix}" if fix else ""), file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"configuration refused: {exc}", file=sys.stderr)
        return 2
    from r1lib.ops.local_server import prefect_api  # Prefect loads after the process defaults are set

    try:
        with prefect_api():  # the configured server, else a local one that stops with the run and dies with it
            result = flow(config)
    except DataValidationError as exc:
        print(f"\ndata refused: {exc}", file=sys.stderr)
        return 1
    except ModelCollapsed as exc:  # the failure summary is written and printed: no traceback to add
        print(f"\nrun stopped: {exc}\n\nsummary: {config.run_dir() / 'summary.json'}", file=sys.stderr)
        return 1
    print(f"\n{result.summary.text}\n\nsummary: {result.summary.path}")
    return 0


def run(argv: list[str]) -> int:
    from prefect.utilities.importtools import import_object

    # The flow is named by its entrypoint, as prefect.yaml names it: the library imports no flow.
    return run_command(import_object(FINETUNE_ENTRYPOINT), argv)


def presets(argv: list[str]) -> int:
    from r1lib.ops.doctor import needs
    from r1lib.presets import PRESETS, preset

    argparse.ArgumentParser(prog="r1-finetune presets", description="List the presets.").parse_args(argv)
    for name in PRESETS:
        cfg = preset(name)
        train = cfg.train
        steps = f"{train.max_steps} steps" if train.max_steps > 0 else f"{train.epochs:g} epochs"
        need = needs(cfg)
        where = "CPU" if need and need.gpu_gib is None else f"GPU ~{need.gpu_gib:g} GiB" if need else "GPU"
        print(
            f"{name:26} {cfg.model.name_or_path}\n{'':26} {steps}, micro-batch {train.micro_batch_size} x "
            f"{train.gradient_accumulation}, seq {cfg.tokenize.max_seq_length}, GGUF "
            f"{', '.join([cfg.export.outtype.upper(), *cfg.export.quantizations])}; {where}"
        )
    return 0


def doctor(argv: list[str]) -> int:
    from r1lib.ops.doctor import diagnose, gather, render
    from r1lib.presets import PRESETS, preset

    parser = argparse.ArgumentParser(prog="r1-finetune doctor", description="Check this machine for a preset.")
    parser.add_argument("--preset", default="tiny", choices=list(PRESETS))
    config = preset(parser.parse_args(argv).preset)
    checks = diagnose(config, gather(config))
    print(f"r1-finetune doctor (preset {config.preset}: {config.model.name_or_path})\n{render(checks)}")
    return 1 if any(c.status == "FAIL" for c in checks) else 0


def deploy(argv: list[str]) -> int:
    from r1lib.ops.deploy import main as deploy_main

    return deploy_main(argv)


COMMANDS = {"run": run, "presets": presets, "doctor": doctor, "deploy": deploy}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print(__doc__.strip().split("\n\n", 1)[1].rstrip(), file=sys.stderr)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    apply_defaults()
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
