"""Every check of a configuration against this machine, before any stage does work, once per run.

``preflight(config)`` confines every configured input path to ``data.allowed_roots``, refuses data inputs that
name one file twice however spelt (r1lib.data.inputs.distinct_inputs), reads and checks the launch
preset, checks a local cluster's size against the cores, and checks the model folder (LoRA targets, safetensors
weights, no code to trust), that the run and cache folders can be written, and that the task runner is installed
and its cluster answers. It reads no data. The command line calls it before it starts a server, and the flows
call it first; a configuration that passed once in this process is not checked again. ``allowed_roots_fix`` says
what to type when a path lies outside the roots.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import socket
import tempfile
from urllib.parse import urlsplit

from r1lib.config import PipelineConfig
from r1lib.data.holdout import held_out_source
from r1lib.data.inputs import distinct_inputs
from r1lib.errors import ConfigError, PathNotAllowed
from r1lib.model.loading import check_model_config
from r1lib.paths import check_links, confine, declared_paths, is_url, refuse_archive, resolve_roots
from r1lib.training.backends import check_init_adapter
from r1lib.training.launcher import launch_plan

_passed: set[str] = set()  # configurations (as JSON) that passed in this process


def preflight(config: PipelineConfig) -> None:
    """``check_config`` once per configuration in this process (the command line and the flow both call it)."""
    key = config.model_dump_json()
    if key not in _passed:
        check_config(config)
        _passed.add(key)


def config_paths(config: PipelineConfig) -> list[tuple[str, str]]:
    """(field, path) of every ``InputPath`` the configuration names for the run to read, other than the model, in
    the sections in use (``PipelineConfig.unused_paths``): data inputs as written (files, folders or globs; validate
    confines what they expand to), augmentation templates, debias lists, the lm_eval folder, the embedded model's
    pre-training texts."""
    unused = config.unused_paths()
    launch = [("train.launch", config.train.launch)] if config.train.launch.endswith((".yaml", ".yml")) else []
    return launch + [
        (name, path)
        for name, path, ref in declared_paths(config)
        if not ref.output and not any(name == u or name.startswith((u + ".", u + "[")) for u in unused)
    ]


def check_config(config: PipelineConfig) -> None:
    """Every path ``config_paths`` lists lies under ``data.allowed_roots`` (and, for the lm_eval folder, every
    symlink inside it); else PathNotAllowed naming the configuration field. Then what the configuration asks of
    this machine: the launch preset ``train.launch`` names is read and checked (it exists; its trainer and env blocks
    stay within their allow-lists; the processes it starts fit the GPUs or cores here), a local cluster's
    ``runner.workers`` fit the cores, and the embedded model or a local model folder has the LoRA targets, safetensors
    weights and no code it would need trusted (r1lib.model.loading.check_model_config), and the adapter
    ``train.init_adapter`` names fits train.lora (r1lib.training.backends.check_init_adapter). Reads no data, so a flow
    calls it first and a bad path, preset, count or model fails before any stage does work."""
    roots, field = resolve_roots(config.data.allowed_roots), "data.allowed_roots"
    for name, path in config_paths(config):
        try:
            confine(path, roots, field)
            if name == "evaluate.lm_eval_path" and not is_url(path) and os.path.isdir(path):
                check_links(path, roots, field)
        except PathNotAllowed as exc:
            raise PathNotAllowed(f"{name}: {exc}") from None
    data = config.data
    inputs = [(f"data.train_paths[{i}]", p) for i, p in enumerate(data.train_paths)]
    inputs += [(f"data.{f}", getattr(data, f)) for f in ("test_path", "replay_path") if getattr(data, f)]
    distinct_inputs(inputs, data.allowed_roots)
    held_out_source(data, config.dedup)  # the user's data is never scored on the shipped sample
    launch_plan(config.train, "hf" if config.train.backend == "auto" else config.train.backend)
    cores = os.cpu_count() or 1
    if config.runner.address is None and config.runner.workers > max(8, 4 * cores):
        raise ConfigError(
            f"runner.workers = {config.runner.workers} local workers on {cores} CPU core(s) (at most "
            f"{max(8, 4 * cores)}); a larger cluster is one you start yourself and name in runner.address"
        )
    check_model_config(config.model, config.train.lora.target_modules)
    if config.train.init_adapter and config.stop_after is None:  # a data-only run may precede the adapter's run end
        check_init_adapter(config.train.init_adapter, config.train)
    for field in ("runs_dir", "cache_dir"):
        check_writable_folder(getattr(config, field), field)
    check_runner(config)


def check_writable_folder(folder: str, field: str) -> None:
    """``folder`` is, or can be made, a folder this process writes into: a probe file is created and removed. A
    device (``/dev/null``), ``/proc``, a read-only or immutable folder fails here, naming the field."""
    try:
        os.makedirs(folder, exist_ok=True)
        if not os.path.isdir(folder):
            raise NotADirectoryError("not a folder")
        descriptor, probe = tempfile.mkstemp(prefix=".r1-probe-", dir=folder)
        os.close(descriptor)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(f"{field} = {folder!r}: cannot write there ({reason}); name a writable folder") from None


def check_runner(config: PipelineConfig) -> None:
    """The task runner ``runner.kind`` names is installed, and an existing cluster ``runner.address`` answers a TCP
    connection within a few seconds (else the data stages would fail after the server started)."""
    runner = config.runner
    module = {"dask": "prefect_dask", "ray": "prefect_ray"}.get(runner.kind)
    if module and importlib.util.find_spec(module) is None:
        package = module.replace("_", "-")
        raise ConfigError(
            f"runner.kind = {runner.kind!r} needs {package} (pip install {package}), or runner.kind=default"
        )
    if runner.address:
        url = urlsplit(runner.address)
        port = url.port or (10001 if url.scheme == "ray" else 8786)
        try:
            with socket.create_connection((url.hostname, port), timeout=5):
                pass
        except OSError as exc:
            raise ConfigError(
                f"runner.address = {runner.address!r}: no answer ({exc.strerror or exc}); start the cluster first, "
                "or leave runner.address unset for a temporary local one"
            ) from None


def allowed_roots_fix(config: PipelineConfig) -> str | None:
    """``--set 'data.allowed_roots=[...]'``: the configured roots plus the folder (or the URL's bucket) of each
    configured path they refuse; None when they refuse none."""
    roots = resolve_roots(config.data.allowed_roots)
    extra: list[str] = []
    for _, path in config_paths(config):
        try:
            confine(path, roots, "data.allowed_roots")
        except PathNotAllowed:
            try:
                refuse_archive(path, "data.allowed_roots")
            except PathNotAllowed:
                continue  # an archive is refused wherever it lies: no root allows it
            if is_url(path):
                scheme, _, rest = path.partition("://")
                folder = f"{scheme}://{rest.split('/', 1)[0]}/"
            else:
                real = os.path.realpath(os.path.expanduser(path.removeprefix("file://")))
                folder = real if os.path.isdir(real) else os.path.dirname(real)
            if folder not in extra:
                extra.append(folder)
    if not extra:
        return None
    value = json.dumps([*config.data.allowed_roots, *extra], ensure_ascii=False)
    return f"--set {shlex.quote(f'data.allowed_roots={value}')}"
