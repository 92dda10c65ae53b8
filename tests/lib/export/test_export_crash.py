"""Export without network, and export killed mid-write: never a partial GGUF under its final name; a retry succeeds.

The children get a ``sitecustomize`` (through PYTHONPATH, so every child process of the export loads it too) that
- refuses every IPv4/IPv6 connection and logs the attempt (proof of no network use, beside HF_HUB_OFFLINE=1 and a
  bogus HTTPS_PROXY), and
- on request stalls the converter after it has started writing the GGUF, or the quantize child after llama.cpp wrote
  its output but before the rename, so the test can SIGKILL it at a known point while the temporary file exists.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.stages.test_eval_export import ROOT, shared_run

# Real exports in child processes, killed mid-write and retried (several minutes on two cores): the full suite only.
pytestmark = pytest.mark.slow

SITECUSTOMIZE = textwrap.dedent("""
    import os, socket

    _log = os.environ.get("NETWORK_ATTEMPTS_LOG")
    if _log:
        _connect = socket.socket.connect

        def _blocked_connect(self, address, *args):
            if self.family in (socket.AF_INET, socket.AF_INET6):
                with open(_log, "a") as handle:
                    handle.write(f"{os.getpid()} {address!r}\\n")
                raise OSError("network disabled by the test")
            return _connect(self, address, *args)

        socket.socket.connect = _blocked_connect
        socket.create_connection = lambda address, *a, **k: _blocked_connect(socket.socket(), address)

    _stall = float(os.environ.get("STALL_GGUF_WRITE", "0"))
    if _stall:
        import sys, time
        # at startup a "-m module" child's argv is ["-m", <its arguments>]
        if "--outtype" in sys.argv and "--outfile" in sys.argv:
            import gguf

            _write = gguf.GGUFWriter.write_tensors_to_file

            def _slow_write(self, *args, **kwargs):
                for handle in getattr(self, "fout", None) or []:
                    handle.flush()  # header and metadata are on disk: the file exists, incomplete
                time.sleep(_stall)
                return _write(self, *args, **kwargs)

            gguf.GGUFWriter.write_tensors_to_file = _slow_write
        if sys.argv[:2] == ["-c", "quantize"]:  # the quantize child: python -c CODE quantize SRC QTYPE DEST
            import llama_cpp

            _quantize = llama_cpp.llama_model_quantize

            def _slow_quantize(*args):
                code = _quantize(*args)
                time.sleep(_stall)  # written under its temporary name, not yet renamed
                return code

            llama_cpp.llama_model_quantize = _slow_quantize
""")


@pytest.fixture(scope="module")
def run():
    return shared_run()


@pytest.fixture
def child_env(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update(
        PYTHONPATH=f"{site}{os.pathsep}{ROOT}",
        HF_HUB_OFFLINE="1",
        HTTPS_PROXY="http://127.0.0.1:9",
        HTTP_PROXY="http://127.0.0.1:9",
        https_proxy="http://127.0.0.1:9",
        http_proxy="http://127.0.0.1:9",
        NETWORK_ATTEMPTS_LOG=str(tmp_path / "network-attempts.log"),
    )
    return env


def _driver(code: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def _wait_for(predicate, timeout: float = 240, what: str = ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _child_of(pid: int, marker: str):
    import psutil

    for child in psutil.Process(pid).children(recursive=True):
        with_marker = any(marker in part for part in child.cmdline())
        if with_marker:
            return child
    return None


def _tmp_files(final: Path) -> list[Path]:
    return list(final.parent.glob(f".{final.name}.tmp-*"))


def _assert_nothing_whole(final: Path):
    assert not final.exists(), f"{final} exists after a killed export"
    leftovers = [p.name for p in final.parent.iterdir()]
    assert all(name.startswith(f".{final.name}.tmp-") for name in leftovers), leftovers


def test_export_runs_offline_without_network(run, child_env, tmp_path):
    out = tmp_path / "export"
    proc = _driver(
        f"""
        import socket
        from pathlib import Path
        from r1lib.config import ModelConfig
        from tasks.export import convert, merge, quantize
        assert socket.socket.connect.__name__ == "_blocked_connect"  # the guard is active
        merged = merge({run["model_dir"]!r}, {run["adapter"]!r}, ModelConfig(), Path({str(out / "merged")!r}))
        f16 = convert(merged, "f16", Path({str(out / "m-F16.gguf")!r}))
        print(quantize(Path(f16.path), "Q8_0", Path({str(out / "m-Q8_0.gguf")!r})).path)
    """,
        child_env,
    )
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    assert (out / "m-F16.gguf").stat().st_size > 0 and (out / "m-Q8_0.gguf").stat().st_size > 0
    attempts = tmp_path / "network-attempts.log"
    assert not attempts.exists(), f"network use during export: {attempts.read_text()}"
    assert not list(out.glob(".*.tmp-*"))


def test_convert_killed_mid_write_leaves_no_gguf_and_a_retry_succeeds(run, child_env, tmp_path):
    from r1lib.export.gguf import check_gguf
    from tasks.export import convert

    def code(final: Path) -> str:
        return f"""
            from pathlib import Path
            from tasks.export import convert
            convert({run["merged"]!r}, "f16", Path({str(final)!r}))
        """

    env = {**child_env, "STALL_GGUF_WRITE": "120"}
    # Cases 1 and 2 run side by side, each into a folder of its own: a converter's start is one busy core.
    final_1, final = tmp_path / "out-1" / "m-F16.gguf", tmp_path / "out" / "m-F16.gguf"
    proc_1, proc_2 = _driver(code(final_1), env), _driver(code(final), env)

    # 1. the converter child dies mid-write: the export step fails and removes its temporary file
    _wait_for(lambda: any(p.stat().st_size > 0 for p in _tmp_files(final_1)), what="the converter's temporary GGUF")
    converter = _wait_for(lambda: _child_of(proc_1.pid, "convert_hf_to_gguf"), what="the converter process")
    os.kill(converter.pid, signal.SIGKILL)
    _, stderr = proc_1.communicate(timeout=120)
    assert proc_1.returncode != 0 and "convert_hf_to_gguf failed (-9)" in stderr
    _assert_nothing_whole(final_1)
    assert not _tmp_files(final_1)

    # 2. the whole export (worker and converter) dies mid-write: only the temporary file may remain
    _wait_for(lambda: any(p.stat().st_size > 0 for p in _tmp_files(final)), what="the converter's temporary GGUF")
    os.killpg(proc_2.pid, signal.SIGKILL)
    proc_2.communicate(timeout=60)
    _assert_nothing_whole(final)
    assert _tmp_files(final)

    # 3. the retry cleans up and succeeds
    result = convert(run["merged"], "f16", final)
    check_gguf(final)
    assert result.bytes == final.stat().st_size and not _tmp_files(final)


def test_quantize_killed_mid_write_leaves_no_gguf_and_a_retry_succeeds(run, child_env, tmp_path):
    from r1lib.export.gguf import check_gguf
    from tasks.export import quantize

    final = tmp_path / "out" / "m-Q8_0.gguf"
    code = f"""
        from pathlib import Path
        from tasks.export import quantize
        quantize(Path({run["ggufs"]["F16"]!r}), "Q8_0", Path({str(final)!r}))
    """
    env = {**child_env, "STALL_GGUF_WRITE": "120"}

    proc = _driver(code, env)
    _wait_for(lambda: _tmp_files(final), what="the quantizer's temporary GGUF")
    child = _wait_for(lambda: _child_of(proc.pid, "quantize"), what="the quantize process")
    os.kill(child.pid, signal.SIGKILL)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "failed (-9)" in stderr
    _assert_nothing_whole(final)
    assert not _tmp_files(final)

    proc = _driver(code, env)
    _wait_for(lambda: _tmp_files(final), what="the quantizer's temporary GGUF")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    _assert_nothing_whole(final)
    assert _tmp_files(final)

    result = quantize(Path(run["ggufs"]["F16"]), "Q8_0", final)
    check_gguf(final)
    assert result.bytes == final.stat().st_size and not _tmp_files(final)
