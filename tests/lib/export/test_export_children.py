"""Quantize starts one child process for all the types it is given; the smoke test one child per GGUF, all at once; each
names the GGUF that fails."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from r1lib.model.generation import Decoding
from tests.stages.test_eval_export import shared_run


@pytest.fixture(scope="module")
def run():
    return shared_run()


@pytest.fixture
def children(monkeypatch):
    """The command lines of the child processes started through subprocess.run (which still runs them)."""
    started: list[list[str]] = []
    real_run = subprocess.run

    def counting_run(cmd, *args, **kwargs):
        started.append(list(cmd))
        return real_run(cmd, *args, **kwargs)

    monkeypatch.setattr(subprocess, "run", counting_run)
    return started


@pytest.fixture
def started_children(monkeypatch):
    """The command lines of the child processes started through subprocess.Popen (which still starts them)."""
    started: list[list[str]] = []
    real_popen = subprocess.Popen

    def counting_popen(cmd, *args, **kwargs):
        started.append(list(cmd))
        return real_popen(cmd, *args, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", counting_popen)
    return started


@pytest.mark.slow  # two quantizations and six whole-GGUF parses (~10 s each: the 151k-token vocabulary)
def test_every_quantization_type_in_one_child(run, children, tmp_path):
    from r1lib.export.gguf import check_gguf, gguf_metadata
    from tasks.export import quantize_all

    outs = [tmp_path / "m-Q8_0.gguf", tmp_path / "m-Q4_K_M.gguf"]
    results = quantize_all(Path(run["ggufs"]["F16"]), ["Q8_0", "Q4_K_M"], outs)
    assert len(children) == 1
    assert [r.type for r in results] == ["Q8_0", "Q4_K_M"] and [Path(r.path) for r in results] == outs
    for out in outs:
        check_gguf(out)
    # llama.cpp's file types: 7 = MOSTLY_Q8_0, 15 = MOSTLY_Q4_K_M
    assert [gguf_metadata(out, "general.file_type") for out in outs] == [7, 15]
    assert not list(tmp_path.glob(".*.tmp-*"))


def test_an_unknown_type_writes_nothing(run, tmp_path):
    from r1lib.errors import ExportCheckError
    from tasks.export import quantize_all

    with pytest.raises(ExportCheckError, match="Q9_X"):
        quantize_all(Path(run["ggufs"]["F16"]), ["Q8_0", "Q9_X"], [tmp_path / "a.gguf", tmp_path / "b.gguf"])
    assert list(tmp_path.iterdir()) == []


def _prompts():
    question = "My brother talked about the lion and the owl at the park. What is the sentence about?"
    return [f"<｜begin▁of▁sentence｜><｜User｜>{question}<｜Assistant｜><think>\n"]


DECODING = Decoding(temperature=0.0, top_p=1.0, repetition_penalty=1.2)  # as test_eval_export's smoke fixture


def test_smoke_runs_each_gguf_in_its_own_child_at_once(run, started_children, monkeypatch):
    import tasks.smoke
    from r1lib.config import SmokeConfig
    from r1lib.export.gguf import GGUFFile
    from tasks.smoke import smoke_all

    ggufs = [GGUFFile(path=path, type=qtype, bytes=Path(path).stat().st_size) for qtype, path in run["ggufs"].items()]
    # The shared run trained 5 steps: its quantized files do not always close the think block in 32 tokens. This
    # test is about the process structure; the R1-format check has its own tests (test_eval_export.py).
    monkeypatch.setattr(tasks.smoke, "extract_answer", lambda output: output[-8:] or "-")
    results = smoke_all(ggufs, _prompts(), SmokeConfig(n_threads=1, max_tokens=32, parity_tokens=8), DECODING)
    assert len(started_children) == len(ggufs)
    assert [r.type for r in results] == list(run["ggufs"])
    assert all(r.answers[0] and r.bos_count == 1 for r in results)
    assert results[0].parity_ids and not results[1].parity_ids  # parity tokens from the full-precision file only


def test_a_crash_on_the_second_gguf_names_it(run, tmp_path, started_children):
    from r1lib.config import SmokeConfig
    from r1lib.errors import ExportCheckError
    from r1lib.export.gguf import GGUFFile
    from tasks.smoke import smoke_all

    good = GGUFFile(path=run["ggufs"]["F16"], type="F16", bytes=1)
    broken = tmp_path / "broken-Q8_0.gguf"
    broken.write_bytes(Path(run["ggufs"]["Q8_0"]).read_bytes()[:4096])
    with pytest.raises(ExportCheckError) as failure:
        smoke_all([good, GGUFFile(path=str(broken), type="Q8_0", bytes=4096)], _prompts(), SmokeConfig(n_threads=1))
    assert str(failure.value).startswith(f"{broken}: llama-cpp-python exited with")
    assert len(started_children) == 2
