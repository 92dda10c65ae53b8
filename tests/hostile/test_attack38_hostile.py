"""Hostile inputs for the run folder's lock (r1lib/io.py: exclusive_dir), the scratch root's lock
(r1lib/export/scratch.py), the recorded-step decoder on a CPU (r1lib/model/graph_decode.py) with the path evaluation
reports for it (r1lib/model/generation.py), and the rehearsal's CPU sizing (r1lib/rehearsal/run.py)."""

from __future__ import annotations

import errno
import logging
import multiprocessing
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.hostile.test_graph_decode_hostile import left_padded, rollout_config, same_tokens, tiny_llama
from tests.lib.model.test_graph_decode import EMBEDDED, QUESTIONS

# --- the run folder's lock ------------------------------------------------------------------------------------------


def test_a_symlinked_lock_file_is_refused_and_its_target_left_as_it_was(tmp_path):
    """``.lock`` a symlink to a user's file: exclusive_dir truncated the file and wrote its pid into it."""
    from r1lib.errors import PermanentError
    from r1lib.io import exclusive_dir

    notes = tmp_path / "notes.txt"
    notes.write_text("three weeks of notes\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").symlink_to(notes)
    with pytest.raises(PermanentError, match=r"\.lock is a symlink"), exclusive_dir(run):
        pass
    assert notes.read_text() == "three weeks of notes\n"


def test_a_filesystem_without_flock_names_the_lock_and_the_setting(tmp_path, monkeypatch):
    """flock failing with ENOSYS (a Lustre mount without the flock option) came out as a bare ``[Errno 38] Function
    not implemented``, naming neither the file nor what to change."""
    import fcntl

    from r1lib.errors import ConfigError
    from r1lib.io import exclusive_dir

    def no_flock(*args):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    with pytest.raises(ConfigError, match=r"run/\.lock.*runs_dir"), exclusive_dir(tmp_path / "run"):
        pass


def _hold_for(path: str, start: float, results) -> None:
    from r1lib.io import DirectoryBusy, exclusive_dir

    time.sleep(max(0.0, start - time.time()))
    try:
        with exclusive_dir(path):
            results.put("held")
            time.sleep(2.5)  # past PROBE_GRACE: the others give up while this one holds it
    except DirectoryBusy as exc:
        results.put(str(exc))


def test_processes_racing_for_one_run_folder_let_exactly_one_in(tmp_path):
    """Three processes take one run folder's lock at the same instant (real flock, no stale file)."""
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    start = time.time() + 0.5
    racers = [context.Process(target=_hold_for, args=(str(tmp_path), start, results)) for _ in range(3)]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(20)
    told = sorted(results.get(timeout=5) for _ in racers)
    held = [t for t in told if t == "held"]
    assert len(held) == 1, told
    assert all(t.startswith(f"{tmp_path} is in use by pid ") and "run_name" in t for t in told if t != "held")


def test_a_scratch_root_whose_lock_is_a_symlink_says_it_chooses_without_it(tmp_path, caplog):
    """A symlink planted as ``.r1-finetune.lock`` (in world-writable /dev/shm anyone can) silently turned the lock
    off: two exports could count the same free RAM, and nothing said so."""
    from r1lib.export import scratch

    (tmp_path / ".r1-finetune.lock").symlink_to(tmp_path / "elsewhere")
    with caplog.at_level(logging.WARNING, logger="r1lib.export.scratch"), scratch.root_lock(tmp_path):
        pass
    assert f"{tmp_path / '.r1-finetune.lock'} cannot be a lock" in caplog.text
    assert not (tmp_path / "elsewhere").exists()


def test_a_scratch_roots_lock_another_process_keeps_names_the_lock_and_the_setting(tmp_path, monkeypatch, caplog):
    """Another process holds the root's lock past LOCK_WAIT: the warning named the lock but not what to change."""
    import subprocess
    import sys

    from r1lib.export import scratch

    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time\n"
         f"handle = open({str(tmp_path / '.r1-finetune.lock')!r}, 'a')\n"
         "fcntl.flock(handle, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setattr(scratch, "LOCK_WAIT", 0.3)
        with caplog.at_level(logging.WARNING, logger="r1lib.export.scratch"), scratch.root_lock(tmp_path):
            pass
    finally:
        holder.kill()
        holder.wait()
    assert f"{tmp_path / '.r1-finetune.lock'} held for over" in caplog.text and "export.scratch_dir" in caplog.text


# --- the recorded-step decoder against HF generate ------------------------------------------------------------------


def right_padded(rows: list[list[int]], pad: int = 0):
    import torch

    width = max(len(r) for r in rows)
    return (
        torch.tensor([r + [pad] * (width - len(r)) for r in rows]),
        torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows]),
    )


SHORT_AND_LONG = [[3], [9, 2, 7, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41]]


def test_a_right_padded_rollout_batch_goes_to_hf_generate():
    """A right-padded batch (a tokenizer left at padding_side='right'): the decoder took each row's last column as
    its last token, so the 1-token row continued from its padding: [50, 20, 24, ...] where HF gave [29, 87, 58, ...]."""
    import torch

    from r1lib.model.graph_decode import recorded_generate

    model = tiny_llama()
    ids, mask = right_padded(SHORT_AND_LONG)
    config = rollout_config(max_new_tokens=6)
    with torch.no_grad():
        expected = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
        got = recorded_generate(model)(input_ids=ids, attention_mask=mask, generation_config=config)
    assert same_tokens(expected, got)


def test_a_first_batch_with_padding_in_every_row_keeps_the_recorded_path(monkeypatch, caplog):
    """Every row padded (a batch padded past its longest prompt): the decoder's check ran the model on no rows and
    raised, so every later rollout of the training went to HF generate."""
    import torch

    from r1lib.model import graph_decode

    model, built, real = tiny_llama(), [], graph_decode.decoder_for
    monkeypatch.setattr(graph_decode, "decoder_for", lambda *a: built.append(a) or real(*a))
    ids, mask = left_padded([[0, 0, 3, 4, 8], [0, 0, 0, 2, 7]])
    mask[0, :2] = mask[1, :3] = 0  # the longest row padded too
    drop_in = graph_decode.recorded_generate(model)
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="r1lib.model.graph_decode"):
        for _ in range(2):
            expected = model.generate(input_ids=ids, attention_mask=mask, generation_config=rollout_config())
            assert same_tokens(
                expected, drop_in(input_ids=ids, attention_mask=mask, generation_config=rollout_config())
            )
    assert len(built) == 2 and "failed" not in caplog.text


@pytest.mark.parametrize(
    ("rows", "new_tokens", "eos", "batch"),
    [
        (SHORT_AND_LONG, 1, 5, None),
        (SHORT_AND_LONG, 2, 5, None),
        (SHORT_AND_LONG, 6, 5, 4),  # fewer rows than the decoder's fixed batch
        ([[3], [4], [8]], 4, 5, None),  # every prompt a single token
        (SHORT_AND_LONG, 6, 20, None),  # 20: the 1-token row's first greedy token, so that row ends at once
        (SHORT_AND_LONG, 2, [20, 22], None),  # both rows end on their first token
    ],
)
def test_short_and_long_prompts_decode_as_hf_generate_does(rows, new_tokens, eos, batch):
    import torch
    from transformers import GenerationConfig

    from r1lib.model.graph_decode import GraphDecoder

    model = tiny_llama()
    ids, mask = left_padded(rows)
    config = GenerationConfig(max_new_tokens=new_tokens, do_sample=False, pad_token_id=0, eos_token_id=eos)
    decoder = GraphDecoder(model, batch or len(rows), ids.shape[1] + new_tokens, eos, 0, capture=False)
    with torch.no_grad():
        expected = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
        got = decoder.generate(ids, mask, new_tokens)
    assert same_tokens(expected, got)
    if eos == 20:
        assert expected[0, ids.shape[1]] == 20  # the row did end on its first token


@pytest.fixture(scope="module")
def embedded():
    from r1lib.config import ModelConfig
    from r1lib.model.loading import load_causal_lm, load_tokenizer

    assert EMBEDDED is not None, "the embedded model is built by scripts/bootstrap"
    model = load_causal_lm(str(EMBEDDED), ModelConfig(), four_bit=False).eval()
    tokenizer = load_tokenizer(str(EMBEDDED), trust_remote_code=False)
    return model, tokenizer


def test_the_pass_says_why_hf_generate_did_it(embedded):
    """evaluate.kv_cache = static with a repetition penalty: the pass reported plain ``HF generate``, the same as a
    pass that asked for it; the why was only in the log."""
    from r1lib.config import EvalConfig
    from r1lib.model.generation import generate

    model, tokenizer = embedded
    cfg = EvalConfig(max_new_tokens=2, batch_size=2, repetition_penalty=1.2)
    _, static = generate(model, tokenizer, list(QUESTIONS[:2]), cfg.model_copy(update={"kv_cache": "static"}))
    _, dynamic = generate(model, tokenizer, list(QUESTIONS[:2]), cfg.model_copy(update={"kv_cache": "dynamic"}))
    assert static.decoder == "HF generate: a repetition penalty or no_repeat_ngram_size needs it"
    assert dynamic.decoder == "HF generate"


def test_a_decoder_failing_mid_pass_is_reported_as_the_fallback(embedded, monkeypatch):
    """Chinese and 1-token prompts, the recorded step failing on the second batch: the rows still match HF generate
    and the pass names the fallback, not the recorded step."""
    from r1lib.config import EvalConfig
    from r1lib.model.generation import generate
    from r1lib.model.graph_decode import GraphDecoder

    model, tokenizer = embedded
    prompts = ["你", "狮子在公园里做什么？", "?", "Where is the lion?"]
    cfg = EvalConfig(max_new_tokens=3, batch_size=2)
    expected, _ = generate(model, tokenizer, prompts, cfg.model_copy(update={"kv_cache": "dynamic"}))
    calls, real = [], GraphDecoder.generate

    def second_fails(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(GraphDecoder, "generate", second_fails)
    got, stats = generate(model, tokenizer, prompts, cfg.model_copy(update={"kv_cache": "static"}))
    assert got == expected and len(calls) == 2
    assert stats.decoder == "HF generate after the recorded step failed (RuntimeError)"


# --- the rehearsal on a CPU -----------------------------------------------------------------------------------------


def rehearsal(tmp_path: Path, monkeypatch, *argv: str):
    import torch

    from r1lib.rehearsal.run import parse_args, rehearsal_config

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = parse_args(["--shape", "tiny-qwen", *argv])
    data = {"train": {"path": str(tmp_path / "train.jsonl")}, "test": {"path": str(tmp_path / "test.jsonl")}}
    return args, rehearsal_config(args, tmp_path / "model", data, tmp_path)


def test_a_cpu_rehearsal_validates_and_keeps_the_users_batch(tmp_path, monkeypatch):
    _, sized = rehearsal(tmp_path, monkeypatch)
    assert (sized.train.micro_batch_size, sized.train.gradient_accumulation) == (1, 1)
    _, mine = rehearsal(
        tmp_path, monkeypatch, "--set", "train.micro_batch_size=2", "--set", "train.gradient_accumulation=3"
    )
    assert (mine.train.micro_batch_size, mine.train.gradient_accumulation) == (2, 3)


def measured_grpo_train_configs(tmp_path, monkeypatch) -> tuple[list, SimpleNamespace]:
    """The train sections the rehearsal's GRPO stage measures with (``measure_grpo`` records them instead of
    training), and a finished rehearsal result for the stage to start from."""
    from r1lib.rehearsal import grpo

    seen = []
    monkeypatch.setattr(grpo, "measure_grpo", lambda model, model_cfg, train, *rest: seen.append(train) or {})
    result = SimpleNamespace(
        trained=SimpleNamespace(adapter=str(tmp_path / "adapter"), backend="hf"),
        model_dir=str(tmp_path / "model"),
        data=SimpleNamespace(train=SimpleNamespace(dataset=str(tmp_path / "tokenized"))),
    )
    return seen, result


def test_the_grpo_stage_keeps_the_runs_own_grpo_settings(tmp_path, monkeypatch):
    """``--set train.grpo.beta=0.3 --set train.grpo.rollouts=hf``: the GRPO stage rebuilt train.grpo from its own
    four fields, so it trained with beta 0.04 and the recorded rollouts, and said nothing."""
    from r1lib.rehearsal.run import grpo_stage

    args, config = rehearsal(
        tmp_path, monkeypatch, "--grpo-steps", "1", "--set", "train.grpo.beta=0.3", "--set", 'train.grpo.rollouts="hf"'
    )
    seen, result = measured_grpo_train_configs(tmp_path, monkeypatch)
    assert grpo_stage(args, config, result, tmp_path) == ({}, None)
    settings = seen[0].grpo
    assert (settings.beta, settings.rollouts) == (0.3, "hf")
    assert (settings.num_generations, settings.max_completion_length) == (8, 1024)  # train.grpo's defaults


@pytest.mark.parametrize(
    ("flags", "expected"),
    [((), (4, 512)), (("--grpo-generations", "6", "--grpo-completion-tokens", "32"), (6, 32))],
)
def test_the_grpo_stage_takes_the_group_and_length_the_user_set(tmp_path, monkeypatch, flags, expected):
    """``--set train.grpo.num_generations=4``: the stage's flags, defaulting to 8 and 1024, replaced it silently."""
    from r1lib.rehearsal.run import grpo_stage

    args, config = rehearsal(
        tmp_path, monkeypatch, "--grpo-steps", "1", *flags, "--set", "train.grpo.num_generations=4",
        "--set", "train.grpo.max_completion_length=512",
    )  # fmt: skip
    seen, result = measured_grpo_train_configs(tmp_path, monkeypatch)
    grpo_stage(args, config, result, tmp_path)
    assert (seen[0].grpo.num_generations, seen[0].grpo.max_completion_length) == expected


def test_another_hosts_scratch_folder_in_a_shared_root_is_left_alone(tmp_path, monkeypatch):
    """export.scratch_dir on a filesystem two hosts share, each run folder on its host's own disk: from the other host
    the run folder is not there, so its export judged the run ended and removed the F16 GGUF being written."""
    from r1lib.export import scratch
    from r1lib.io import exclusive_dir

    shared, run = tmp_path / "shared", tmp_path / "node-a" / "run"
    shared.mkdir()
    monkeypatch.setattr(scratch.shutil, "disk_usage", lambda _: SimpleNamespace(free=2**40))
    monkeypatch.setattr(scratch, "available_memory", lambda: 2**40)
    with exclusive_dir(run):
        monkeypatch.setattr(scratch, "HOST", "node-a", raising=False)
        written = scratch.scratch_folder(str(shared), run / "export", 10, "run")
    monkeypatch.setattr(scratch, "HOST", "node-b", raising=False)
    mine = tmp_path / "node-b" / "run"
    with exclusive_dir(mine):
        dead = scratch.scratch_folder(str(shared), mine / "export", 10, "dead")
    run.parent.rename(tmp_path / "elsewhere")  # as node-b sees node-a's run folder: not there
    scratch.remove_orphans(shared)
    assert written.is_dir()  # node-a's, in flight
    assert not dead.exists()  # node-b's own ended run: still removed
