"""A flow-run process killed with SIGKILL during convert, quantize or the smoke test leaves no child alive: the export
and smoke children die with the process that started them (r1lib/process.py: die_with_parent), so a retry never
runs beside a leftover converter."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import ROOT
from tests.lib.export.test_export_crash import _child_of, _wait_for

pytestmark = pytest.mark.slow  # three interpreters that import the pipeline (~12 s each on two busy cores)

# Stalls the child at its start, so that it is surely running when its parent is killed: no model is needed (the
# child never reads its input, the paths below name nothing), so no shared run is built for these.
STALL_AT_START = textwrap.dedent("""
    import sys, time
    if sys.argv[:2] in (["-c", "quantize"], ["-c", "smoke"]) or "--outtype" in sys.argv:
        time.sleep(120)
""")


def drive(code: str, tmp_path: Path) -> subprocess.Popen:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(STALL_AT_START)
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{ROOT}"}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env, start_new_session=True)


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def children_after_parent_killed(proc: subprocess.Popen, marker: str) -> list[psutil.Process]:
    """Kill the parent alone (not its group) once its ``marker`` child is running; of every process it had started
    (the whole tree, counted at the kill), those still alive 10 s later."""
    _wait_for(lambda: _child_of(proc.pid, marker), timeout=120, what=f"the {marker} child")
    started, alive = kill_and_count(proc)
    assert started, "the parent had started no child"
    return alive


def kill_and_count(proc: subprocess.Popen, grace_s: float = 10) -> tuple[list[psutil.Process], list[psutil.Process]]:
    """SIGKILL the parent alone (not its group): (every process it had started, the whole tree counted at the kill;
    those of them still alive ``grace_s`` later, which are then killed)."""
    started = psutil.Process(proc.pid).children(recursive=True)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_alive(p) for p in started):
        time.sleep(0.1)
    alive = [p for p in started if _alive(p)]
    for leftover in alive:
        leftover.kill()
    return started, alive


def test_no_converter_outlives_a_killed_flow_process(tmp_path):
    out = tmp_path / "m-F16.gguf"
    proc = drive(f"from tasks.export import convert\nconvert({str(tmp_path)!r}, 'f16', {str(out)!r})", tmp_path)
    assert children_after_parent_killed(proc, "convert_hf_to_gguf") == []


def test_no_quantizer_outlives_a_killed_flow_process(tmp_path):
    code = f"""
        from pathlib import Path
        from tasks.export import quantize
        quantize(Path({str(tmp_path / "m-F16.gguf")!r}), "Q8_0", Path({str(tmp_path / "m-Q8_0.gguf")!r}))
    """
    assert children_after_parent_killed(drive(code, tmp_path), "quantize") == []


def test_no_smoke_child_outlives_a_killed_flow_process(tmp_path):
    code = f"""
        from r1lib.config import SmokeConfig
        from r1lib.export.gguf import GGUFFile
        from tasks.smoke import smoke_all
        gguf = GGUFFile(path={str(tmp_path / "m-Q8_0.gguf")!r}, type="Q8_0", bytes=1)
        smoke_all([gguf], ["Hi"], SmokeConfig())
    """
    assert children_after_parent_killed(drive(code, tmp_path), "smoke") == []
