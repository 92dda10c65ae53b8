"""What to type to fix a refused configuration: the exact ``--set`` that would allow a path outside the roots."""

from __future__ import annotations

import json
import os
import shlex

from r1lib.config import PipelineConfig
from r1lib.errors import PathNotAllowed
from r1lib.paths import config_paths, confine, is_url, refuse_archive, resolve_roots


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
