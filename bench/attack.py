"""Hostile-input battery: data files, paths, configuration values and model folders of our own making, driven
through the real code paths, with the figures the project's guarantees are about.

    .venv/bin/python bench/attack.py            # everything (about 3 minutes on 2 cores)
    .venv/bin/python bench/attack.py --quick    # no flow run and no kill -9 runs (seconds)

1. Data: each file goes through tasks.validate.validate_file under data.allowed_roots, with data.placeholders whose
   values point at each other (``PLACEHOLDER_LOOP``). ``rows`` is what the file holds, counted here independently
   of the reader (lines of JSON lines / CSV bodies, array elements, Parquet rows); a file is ``lost`` rows when
   accepted + quarantined + blank lines falls short of it without a file-level refusal that names it. A crash is
   any exception other than the project's own refusals (DataValidationError, PathNotAllowed). Parquet files are
   made with pyarrow (``parquet_cases``: a column named twice, a dictionary bomb, a page bomb).
   ``unfilled_placeholders``: accepted rows still holding ``{{``.
2. Paths: specs that lead out of the roots (symlinks, folder links, /proc, ``..``, ``~``, fsspec URLs and chains);
   ``outside reads``: rows read from the outside file.
3. Configuration: ``python -m flows.finetune --set`` values (one data file under two spellings among them; folders
   that cannot be written, a Ray runner without prefect-ray, an unreachable Dask address, subnormal numbers in 11
   fields, a preset relabel) through flows.finetune.main (the flow stubbed out); a refusal must be exit 2,
   ``configuration refused``, no traceback. ``--config`` files in a child with a deadline: a FIFO (refused, not
   waited on: a wait counts in ``hangs``) and a JSON file with a byte-order mark (read).
4. Chat templates (``TEMPLATE_CASES``): each written as a model folder's chat_template.jinja, loaded by
   load_tokenizer, rendered by render_prompt and by the fast renderer; ``templates not refused``: renderings that
   did not end in TemplateRefused naming the file; ``hangs``: renderings over 30 s; ``max_peak_mib``: the largest
   growth of this process's peak RSS during one.
5. Model folders: an unknown model_type with an auto_map to a .py that writes a marker, a tokenizer auto_map, a
   known model_type with an auto_map; every loader with "y" on stdin, and the command line; ``code executions``:
   marker lines written.
6. Flow (not --quick): one ``--stop-after tokenize`` run on hostile files with HF_TOKEN and AWS keys planted in the
   environment; ``secrets leaked``: files under the run folder and PREFECT_HOME (the database included) holding a
   planted value; the summary's rows read against the rows the files hold.
7. kill -9 (not --quick): ``--stop-after tokenize`` runs (default runner and Dask) killed with SIGKILL mid-run,
   and a process running convert, quantize or the smoke test killed while its child runs; ``orphans``: their
   descendants (the local Prefect server, Dask workers, converter, quantizer, smoke child) still alive 8 s later.
8. Round three (bench/attack_round3.py): pickles in checkpoints, adapters and stored result records, GGUFs swapped
   after the run, a model folder's generation_config.json; ``code executions`` counts its pickles that ran too;
   ``pickles, records, GGUFs not refused``: checkpoints not fallen back from, adapters, records and GGUFs accepted;
   ``mispaired rows``: generations that a folder's generation_config changed. The Prefect server killed mid-run is
   tests/flows/test_server_lost.py (a server of its own).

Writes bench/results/attack-<date>.json and a row per run in bench/results/attack.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from attack_round3 import run_round3  # noqa: E402 - after the path that finds it

RESULTS = ROOT / "bench" / "results"
SECRETS = {
    "HF_TOKEN": "hf_ATTACKplanted0123456789abcdefXYZ",
    "AWS_ACCESS_KEY_ID": "AKIAATTACKPLANTED0123",
    "AWS_SECRET_ACCESS_KEY": "ATTACKplantedSECRET/abcdefghij0123456789KL",
}
J = json.dumps
GOOD = {"instruction": "What is 1+1?", "output": "<think>1 plus 1</think>2"}
TURNS = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


def lines(*rows: object, end: str = "\n") -> str:
    return end.join(r if isinstance(r, str) else J(r, ensure_ascii=False) for r in rows) + end


def data_cases() -> list[tuple[str, bytes | str, int]]:
    """(file name, content, rows it holds: non-blank lines / CSV body lines / array elements)."""
    zh = "全角：ＡＢＣ１２３，“引号”\u3000空格 ｶﾀｶﾅ ﬁ ① 𠀀 é"
    big = "1" * 5000
    deep = "[" * 100_000
    csv_turns = J(TURNS).replace('"', '""')
    return [
        ("crlf.jsonl", lines(GOOD, GOOD, GOOD, end="\r\n"), 3),
        ("bom.jsonl", b"\xef\xbb\xbf" + lines(GOOD, GOOD).encode(), 2),
        ("bom_crlf.csv", b'\xef\xbb\xbfinstruction,output\r\n"q1","a1"\r\nq2,a2\r\n', 2),
        ("nul_bytes.jsonl", lines(GOOD, '{"instruction": "a\\u0000b", "output": "x"}', "\x00\x00"), 3),
        ("lone_surrogate.jsonl", lines('{"instruction": "\\ud800", "output": "x"}', GOOD), 2),
        ("raw_surrogate_bytes.jsonl", b'{"instruction": "\xed\xa0\x80", "output": "x"}\n', 1),
        ("duplicate_key.jsonl", lines('{"instruction": "a", "instruction": "b", "output": "x"}', GOOD), 2),
        ("duplicate_key_nested.json", "[" + J({"messages": TURNS})[:-3] + ', "role": "x"}]}, ' + J(GOOD) + "]", 2),
        ("chinese_emoji.jsonl", lines({"instruction": zh + "🌍", "output": f"<think>{zh}</think>{zh}"}), 1),
        ("empty.jsonl", "", 0),
        ("empty.csv", "", 0),
        ("empty_array.json", "[]", 0),
        ("whitespace.json", "  \n", 1),
        ("not_object.jsonl", lines('"text"', "42", "null", "[]"), 4),
        ("huge_line.jsonl", lines(GOOD, {"instruction": "x" * 300_000, "output": "y"}, GOOD), 3),
        ("deep_nesting.jsonl", lines(deep, GOOD), 2),
        ("huge_int.jsonl", lines(GOOD, '{"instruction": "a", "output": "b", "n": ' + big + "}"), 2),
        ("tools_huge_int.jsonl", lines({"messages": TURNS, "tools": '[{"name": "f", "x": ' + big + "}]"}), 1),
        ("tools_deep.jsonl", lines({"messages": TURNS, "tools": '[{"name": "f", "p": ' + deep + "}]"}), 1),
        ("nan_loss.jsonl", lines('{"instruction": NaN, "output": "x"}', '{"instruction": "a", "output": Infinity}'), 2),
        ("mixed_schemas.jsonl", lines(GOOD, {"conversations": [{"from": "human", "value": "h"}]}, {"foo": 1}), 3),
        ("lone_cr.jsonl", J(GOOD) + "\r" + J(GOOD) + "\n", 1),
        ("u2028.jsonl", lines({"instruction": "a\u2028b", "output": "c"}), 1),
        ("utf16.jsonl", lines(GOOD).encode("utf-16"), 1),
        ("latin1.csv", "instruction,output\ncaf\xe9,x\n".encode("latin-1"), 1),
        (
            "csv_nested_json.csv",
            f'conversations\n"{csv_turns.replace("role", "from").replace("content", "value")}"\n',
            1,
        ),
        ("csv_nested_broken.csv", 'messages\n"[{""role"":""user"""\n', 1),
        ("csv_stray_quote.csv", 'instruction,output\nq1,a1\n"q2,a2\nq3,a3\nq4,a4\n', 4),
        ("csv_extra_cells.csv", "instruction,output\nq1,a1,extra\nq2,a2\n", 2),
        ("csv_cr_only.csv", "instruction,output\rq1,a1\rq2,a2\r", 2),
        ("csv_duplicate_header.csv", "instruction,instruction,output\nA,B,C\n", 1),
        ("sharegpt.json", J([{"conversations": [{"from": "human", "value": "h"}, {"from": "gpt", "value": "g"}]}]), 1),
        ("openai_reasoning.jsonl", lines({"messages": [*TURNS[:1], {**TURNS[1], "reasoning_content": "r"}]}), 1),
        ("firefly.jsonl", lines({"conversation": [{"human": "h", "assistant": "a"}]}), 1),
        ("dpo.jsonl", lines({"prompt": "p", "chosen": "c", "rejected": "r"}), 1),
        ("pretraining.jsonl", lines({"text": "plain text"}), 1),
        (
            "tools_system.jsonl",
            lines({"messages": TURNS, "tools": [{"type": "function", "function": {"name": "f"}}]}),
            1,
        ),
        (
            "conflicting_reasoning.jsonl",
            lines({"instruction": "q", "reasoning": "a", "output": "<think>b</think>c"}),
            1,
        ),
        ("unclosed_think.jsonl", lines({"instruction": "q", "output": "<think>never closed"}), 1),
        ("jsonl_named_json.json", lines(GOOD, GOOD), 2),
        ("turn_arrays_named_json.json", lines(TURNS, TURNS), 2),
        ("paragraphs.txt", "para one\nline two\n\n\npara two\n", 2),
        ("not_parquet.parquet", b"PAR1 not parquet PAR1", 0),
        ("placeholders_loop.jsonl", lines({"instruction": "Who?", "output": "I am {{name}} by {{author}}."}, GOOD), 2),
    ]


def parquet_cases(folder: Path) -> list[tuple[str, None, int]]:
    """Parquet files made with pyarrow: a column named twice, a 479-byte dictionary bomb (2,000 rows referencing
    one 1 MB string: 2 GB decoded), compressed pages that decompress to 100 MB from a few KB."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    twice = pa.Table.from_arrays([pa.array(["a"]), pa.array(["b"]), pa.array(["c"])], ["instruction"] * 2 + ["output"])
    pq.write_table(twice, folder / "parquet_column_twice.parquet")
    one = pa.array([0] * 2000, pa.int32())
    bomb = pa.table(
        {
            "instruction": pa.DictionaryArray.from_arrays(one, pa.array(["A" * 1_000_000])),
            "output": pa.DictionaryArray.from_arrays(one, pa.array(["x"])),
        }
    )
    pq.write_table(bomb, folder / "parquet_dictionary_bomb.parquet", compression="zstd", store_schema=False)
    pages = pa.table({"instruction": ["B" * 200_000] * 500, "output": ["x"] * 500})
    pq.write_table(pages, folder / "parquet_page_bomb.parquet", compression="zstd", use_dictionary=False)
    return [
        ("parquet_column_twice.parquet", None, 1),
        ("parquet_dictionary_bomb.parquet", None, 2000),
        ("parquet_page_bomb.parquet", None, 500),
    ]


# data.placeholders for every data case: values that point at each other (placeholders_loop.jsonl uses them)
PLACEHOLDER_LOOP = {"name": "{{author}}", "author": "{{name}}"}


def run_data(base: Path) -> tuple[list[dict], dict]:
    from r1lib.data.row_rules import RowRules
    from r1lib.errors import DataValidationError, PathNotAllowed
    from tasks.validate import validate_file

    folder = base / "data"
    folder.mkdir()
    results = []
    cases = [(name, content, rows) for name, content, rows in data_cases()]
    for name, content, _ in cases:
        (folder / name).write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    cases += parquet_cases(folder)
    rules = RowRules(placeholders=PLACEHOLDER_LOOP)
    (folder / "folder.jsonl").mkdir()
    os.symlink("loop_b.jsonl", folder / "loop_a.jsonl")
    os.symlink("loop_a.jsonl", folder / "loop_b.jsonl")
    os.mkfifo(folder / "fifo.jsonl")
    cases += [("folder.jsonl", None, 0), ("loop_a.jsonl", None, 0), ("fifo.jsonl", None, 0)]
    for name, _, rows in cases:
        path = folder / name
        entry = {"input": name, "rows": rows}
        try:
            accepted, quarantined, report = validate_file(path, 100_000, rules=rules, allowed_roots=[str(folder)])
            entry |= {"accepted": report.accepted, "quarantined": report.quarantined, "blank": report.blank_lines}
            entry["unfilled_placeholders"] = sum("{{" in J(r, ensure_ascii=False) for r in accepted)
            entry["reasons"] = report.reasons
            entry["lost"] = max(0, rows - report.accepted - report.quarantined)
            entry["named"] = all(q["message"].startswith(str(path)) for q in quarantined)
        except (DataValidationError, PathNotAllowed) as exc:
            entry |= {"refused": str(exc)[:160], "lost": 0, "named": str(path) in str(exc) or name in str(exc)}
        except Exception as exc:  # noqa: BLE001 (a crash is a finding)
            entry |= {"crash": f"{type(exc).__name__}: {str(exc)[:160]}", "lost": rows, "named": False}
        results.append(entry)
    return results, {
        "inputs": len(results),
        "rows": sum(r["rows"] for r in results),
        "rows_lost": sum(r["lost"] for r in results),
        "crashes": sum("crash" in r for r in results),
        "unnamed_errors": sum(not r["named"] for r in results),
        "unfilled_placeholders": sum(r.get("unfilled_placeholders", 0) for r in results),
    }


def run_paths(base: Path) -> tuple[list[dict], dict]:
    import fsspec

    from r1lib.data.inputs import expand_inputs
    from tasks.validate import validate_file

    inside, outside = base / "root", base / "outside"
    (inside / "sub").mkdir(parents=True)
    outside.mkdir()
    secret = lines({"instruction": "OUTSIDE-ROW", "output": "x"})
    (outside / "s.jsonl").write_text(secret)
    os.symlink(outside / "s.jsonl", inside / "link.jsonl")
    os.symlink(outside, inside / "dirlink")
    os.symlink(f"/proc/self/root{outside}/s.jsonl", inside / "proc.jsonl")
    with fsspec.open("memory://attack/s.jsonl", "w") as handle:
        handle.write(secret)
    out = f"{outside}/s.jsonl"
    specs = [
        f"{inside}/link.jsonl",
        f"{inside}/dirlink/s.jsonl",
        f"{inside}/dirlink",
        f"{inside}/*.jsonl",
        f"{inside}/**/*.jsonl",
        f"{inside}/proc.jsonl",
        f"/proc/self/root{out}",
        f"/proc/self/cwd/../../..{out}",
        f"{inside}/sub/../../outside/s.jsonl",
        f"file://{out}",
        f"file://localhost{out}",
        f"FILE://{out}",
        "memory://attack/s.jsonl",
        "http://127.0.0.1:9/s.jsonl",
        f"simplecache::file://{out}",
        f"filecache::{out}",
        f"dir::{outside}",
        f"zip://s.jsonl::{inside}/a.zip",
    ]
    results, reads = [], 0
    for spec in specs:
        entry = {"input": spec.replace(str(base), "$TMP")}
        try:
            for path in expand_inputs(spec, [str(inside)]):
                accepted, _, _ = validate_file(path, 1000, allowed_roots=[str(inside)])
                read = sum("OUTSIDE-ROW" in J(r) for r in accepted)
                reads += read
                entry["read_outside_rows"] = entry.get("read_outside_rows", 0) + read
        except Exception as exc:  # noqa: BLE001
            entry["refused"] = f"{type(exc).__name__}: {str(exc)[:120].replace(str(base), '$TMP')}"
        results.append(entry)
    return results, {"inputs": len(specs), "outside_reads": reads}


CONFIG_CASES = [
    "train.learning_rate=inf",
    "train.learning_rate=nan",
    'train.learning_rate="1e-3"',
    'train.packing="yes"',
    "train.packing=1",
    "train.max_steps=1e12",
    "train.max_steps=true",
    "run_name=../../etc",
    'run_name="x\\u0000y"',
    "train.launch=/etc/passwd.yaml",
    "train.launch=nope",
    'data.train_paths=["/etc/passwd"]',
    'model.trust_remote_code="false"',
    "model.name_or_path=/etc",
    "model.name_or_path=https://evil.example/model",
    "model.name_or_path=no/such/model/dir",
    "model.revision=../x",
    "model.hub_token_secret=hf_ABCDEF",
    "data.max_rejected_fraction=NaN",
    "data.max_rejected_fraction=1.5",
    "nosuch.key=1",
    "train=null",
    "train.lora.r=16.0",
    "train.max_steps=1" + "0" * 5000,
    "augment.templates_path=/proc/self/environ",
    "debias.blocklist_path=/etc/passwd",
    'data.train_paths=["data/sample/train.jsonl","data/sample/train.jsonl"]',
    'data.train_paths=["data/sample/train.jsonl","./data/sample/train.jsonl"]',
    'data.train_paths=["data/sample/train.jsonl","data/sample/"]',
    "train.seed=4294967296",
    "train.launch=bomb.yaml",
    "train.launch=push.yaml",
    # round three (issue 22): folders that cannot be written, runners that cannot run, subnormal numbers, relabels
    "runs_dir=/dev/null",
    "runs_dir=/proc/self",
    "cache_dir=/dev/null",
    "runner.kind=ray",
    ("runner.kind=dask", "runner.address=tcp://127.0.0.1:9"),
    *(
        f"{field}=5e-324"
        for field in (
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
        )
    ),
    "preset=r1-qwen-7b",
    ("--preset", "r1-qwen-7b", "preset=tiny"),
]


def _argv(item: tuple[str, ...]) -> list[str]:
    """A case of several settings (``--set`` each), or a case that starts with its own options."""
    if item[0].startswith("--"):
        return [*item[:2], *(a for setting in item[2:] for a in ("--set", setting))]
    return [a for setting in item for a in ("--set", setting)]


def run_config_files(base: Path) -> tuple[list[dict], dict]:
    """``--config`` files, each in a child process with a deadline: a FIFO (must be refused, not waited on), and a
    JSON config with a byte-order mark (must be read: the run starts, stubbed)."""
    fifo = base / "config.fifo"
    os.mkfifo(fifo)
    (base / "bom.json").write_bytes(b"\xef\xbb\xbf" + J({"train": {"max_steps": 3}}).encode())
    child = (  # the flow and the server it would start are stubbed: what is measured is the reading of the file
        "import contextlib, sys, flows.finetune as f, r1lib.ops.local_server as server\n"
        "server.prefect_api = contextlib.nullcontext\n"
        "f.finetune = lambda config: (print('started', config.train.max_steps, flush=True), sys.exit(0))\n"
        "sys.exit(f.main(sys.argv[1:]))\n"
    )
    results = []
    for name, path, refuse in (("config FIFO", fifo, True), ("config with a BOM", base / "bom.json", False)):
        t0 = time.monotonic()
        try:
            proc = subprocess.run(
                [sys.executable, "-c", child, "--config", str(path)],
                capture_output=True,
                text=True,
                cwd=ROOT,
                timeout=600,  # a FIFO read waits forever; the imports alone took 150 s on two busy cores
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
            code, err, out, hang = proc.returncode, proc.stderr, proc.stdout, False
        except subprocess.TimeoutExpired:
            code, err, out, hang = None, "", "", True
        ok = (code == 2 and "Traceback" not in err and "started" not in out) if refuse else "started 3" in out
        results.append(
            {
                "input": name,
                "exit": code,
                "hang": hang,
                "as_meant": ok,
                "seconds": round(time.monotonic() - t0, 2),
                "message": (err.strip().splitlines() or out.strip().splitlines() or [""])[-1][:140],
            }
        )
    return results, {
        "inputs": len(results),
        "not_as_meant": sum(not r["as_meant"] for r in results),
        "hangs": sum(r["hang"] for r in results),
    }


def run_config(base: Path) -> tuple[list[dict], dict]:
    import flows.finetune as finetune_module

    bomb = 'a0: &a0 ["x","x","x","x","x","x","x","x","x","x"]\n'
    bomb += "".join(f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 9))
    (base / "bomb.yaml").write_text(bomb + "env:\n  NCCL_DEBUG: *a8\n")
    (base / "push.yaml").write_text("trainer:\n  push_to_hub: true\n  hub_model_id: x/y\n")
    started = []
    original = finetune_module.finetune
    finetune_module.finetune = lambda config: started.append(config)
    results = []
    cwd = os.getcwd()
    try:
        for item in CONFIG_CASES:
            os.chdir(base if isinstance(item, str) and item.endswith(".yaml") and "/" not in item else ROOT)
            err = io.StringIO()
            started.clear()
            t0 = time.monotonic()
            argv = ["--set", item] if isinstance(item, str) else _argv(item)
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                try:
                    code = finetune_module.main(argv)
                except AttributeError:  # the stub returns no result to print: the flow would have run
                    code = None
                except BaseException as exc:  # noqa: BLE001
                    code = f"{type(exc).__name__}"
            text = err.getvalue()
            results.append(
                {
                    "input": (item if isinstance(item, str) else " ".join(item))[:70],
                    "exit": code,
                    "started": bool(started),
                    "traceback": "Traceback" in text,
                    "seconds": round(time.monotonic() - t0, 2),
                    "message": (text.strip().splitlines() or [""])[-1][:140],
                }
            )
    finally:
        os.chdir(cwd)
        finetune_module.finetune = original
    ok = [r for r in results if r["exit"] == 2 and not r["started"] and not r["traceback"]]
    return results, {"inputs": len(results), "refused_cleanly": len(ok), "accepted": len(results) - len(ok)}


TEMPLATE_CASES = {
    "repeat": "{% set s='A'*1500000000 %}{{ s|length }}",
    "nested_ranges": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}x",
    "doubling": "{% set ns = namespace(s='ab') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}x",
    "doubling_block": "{% set ns = namespace(s='ab') %}{% for i in range(60) %}{% set t %}{{ ns.s }}{{ ns.s }}"
    "{% endset %}{% set ns.s = t %}{% endfor %}x",
    "center": "{{ 'A'|center(1500000000) }}",
    "format_width": "{{ '{:>1500000000}'.format('x') }}",
    "percent_width": "{{ '%1500000000s' % 'x' }}",
    "join_separator": "{{ range(100000)|join('y' * 100000) }}",
    "power": "{{ 10 ** 100000000 }}",
    "lipsum": "{{ lipsum(n=100000000) }}",
    "recursion": "{% macro f(n) %}{{ f(n) }}{{ f(n) }}{% endmacro %}{{ f(1) }}",
    "split_chars": "{% set l = ('中 ' * 30000000).split() %}{{ l|length }}",
}


def run_templates(base: Path) -> tuple[list[dict], dict]:
    """Each hostile chat template in a model folder's chat_template.jinja, loaded by load_tokenizer and rendered by
    render_prompt (tokenize's Jinja path) and by the fast renderer; ``refused``: TemplateRefused naming the file;
    ``hangs``: a rendering over 30 s; ``peak_mib``: the growth of this process's peak RSS."""
    import resource

    from r1lib.data.chat_render import chat_renderer
    from r1lib.data.chat_template import render_prompt
    from r1lib.data.template_sandbox import TemplateRefused
    from r1lib.model.embedded import build_tokenizer
    from r1lib.model.loading import load_tokenizer

    folder = base / "template_model"
    build_tokenizer().save_pretrained(folder)
    turns = [*TURNS]
    results = []
    for name, template in TEMPLATE_CASES.items():
        (folder / "chat_template.jinja").write_text(template, encoding="utf-8")
        tokenizer = load_tokenizer(str(folder), trust_remote_code=False)
        entry = {"input": name}
        for path, render in (
            ("render_prompt", lambda tok=tokenizer: render_prompt(tok, {"system": "", "messages": turns})),
            ("fast", lambda tok=tokenizer: chat_renderer(tok, add_generation_prompt=True).render([turns] * 100)),
        ):
            peak, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.monotonic()
            try:
                render()
                outcome = "rendered"
            except TemplateRefused as exc:
                outcome = "refused" if str(folder / "chat_template.jinja") in str(exc) else "refused unnamed"
            except Exception as exc:  # noqa: BLE001 (anything else is a finding)
                outcome = f"{type(exc).__name__}: {str(exc)[:100]}"
            entry[path] = {
                "outcome": outcome,
                "seconds": round(time.monotonic() - t0, 2),
                "peak_mib": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak) // 1024,
            }
        results.append(entry)
    renders = [r[p] for r in results for p in ("render_prompt", "fast")]
    return results, {
        "inputs": len(results),
        "refused": sum(r["outcome"] == "refused" for r in renders),
        "not_refused": sum(r["outcome"] != "refused" for r in renders),
        "hangs": sum(r["seconds"] > 30 for r in renders),
        "max_peak_mib": max(r["peak_mib"] for r in renders),
    }


def evil_models(base: Path) -> list[Path]:
    """Three model folders whose code writes a marker line when it runs."""
    embedded = next((ROOT / ".cache" / "embedded").glob("*/config.json"), None)
    code = "import os\nopen(os.environ['ATTACK_MARKER'], 'a').write('ran\\n')\n"
    code += (
        "from transformers import PretrainedConfig\nclass EvilConfig(PretrainedConfig):\n    model_type = 'evilarch'\n"
    )
    folders = []
    one = base / "models" / "unknown_type"
    one.mkdir(parents=True)
    (one / "config.json").write_text(
        J({"model_type": "evilarch", "auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.M"}})
    )
    (one / "evil.py").write_text(code)
    if embedded is not None:
        shutil.copy(embedded.parent / "model.safetensors", one / "model.safetensors")
    folders.append(one)
    if embedded is not None:
        for name, edit in (("tokenizer_map", "tokenizer"), ("known_type_map", "config")):
            folder = base / "models" / name
            shutil.copytree(embedded.parent, folder)
            (folder / "evil.py").write_text(code)
            if edit == "tokenizer":
                path = folder / "tokenizer_config.json"
                data = json.loads(path.read_text())
                data |= {"auto_map": {"AutoTokenizer": ["evil.Tok", "evil.Tok"]}, "tokenizer_class": "Tok"}
            else:
                path = folder / "config.json"
                data = json.loads(path.read_text())
                data["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.M"}
            path.write_text(J(data))
            folders.append(folder)
    return folders


LOADERS_CHILD = """
import sys
from r1lib.config import ModelConfig
from r1lib.model import loading as models
for d in sys.argv[1:]:
    cfg = ModelConfig(name_or_path=d, allowed_roots=[d], load_in_4bit=False)
    for what, fn in [("check", lambda: models.check_model_config(cfg, ["q_proj"])),
                     ("config", lambda: models.load_config(d, cfg)),
                     ("tokenizer", lambda: models.load_tokenizer(d, trust_remote_code=False)),
                     ("model", lambda: models.load_causal_lm(d, cfg, False))]:
        try:
            fn(); print(d, what, "loaded")
        except BaseException as exc:
            print(d, what, type(exc).__name__)
"""


def run_models(base: Path) -> tuple[list[dict], dict]:
    marker = base / "marker"
    folders = evil_models(base)
    env = {**os.environ, "ATTACK_MARKER": str(marker), "PYTHONPATH": str(ROOT)}
    results = []
    child = subprocess.run(
        [sys.executable, "-c", LOADERS_CHILD, *map(str, folders)],
        input="y\n" * 100,
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )
    for line in child.stdout.splitlines():
        folder, what, outcome = line.rsplit(" ", 2)
        results.append({"input": f"{Path(folder).name} {what}", "outcome": outcome})
    for folder in folders:
        cli = subprocess.run(
            [sys.executable, "-m", "flows.finetune", "--stop-after", "tokenize"]
            + ["--set", f"model.name_or_path={folder}", "--set", f'model.allowed_roots=["{folder}"]']
            + ["--set", f"runs_dir={base / 'runs-models'}"],
            input="y\n" * 100,
            capture_output=True,
            text=True,
            env={**env, "PREFECT_HOME": str(base / "prefect-models")},
            cwd=ROOT,
            timeout=600,
        )
        last = (cli.stderr.strip().splitlines() or [""])[-1]
        results.append({"input": f"{folder.name} cli", "outcome": f"exit {cli.returncode}: {last[:120]}"})
    runs = len(marker.read_text().splitlines()) if marker.exists() else 0
    return results, {"inputs": len(folders), "code_executions": runs}


def flow_files(base: Path) -> tuple[Path, int]:
    folder = base / "flowdata"
    folder.mkdir()
    rows = [
        {
            "instruction": f"问题{i}：{i}加{i}等于几？",
            "output": f"<think>{i}+{i}={2 * i}，他说。</think>答案是{2 * i}。🙂",
        }
        for i in range(40)
    ]
    rows += [{"messages": [{"role": "user", "content": f"{i} times 3? She asks."}, TURNS[1]]} for i in range(40)]
    text = [J(r, ensure_ascii=False) for r in rows] + [J(rows[0], ensure_ascii=False), '{"instruction": "broken",']
    text += [J({"prompt": "p", "chosen": "c", "rejected": "r"}), "", '{"instruction": "a", "n": ' + "1" * 5000 + "}"]
    text += ['{"instruction": "x", "instruction": "y", "output": "z"}']
    (folder / "mix.jsonl").write_text("\r\n".join(text) + "\r\n", encoding="utf-8")
    turns = [J([{"from": "human", "value": f"hi {i}"}, {"from": "gpt", "value": f"yo {i}"}]) for i in range(20)]
    body = ['"' + t.replace('"', '""') + '"' for t in turns]
    (folder / "sg.csv").write_text("conversations\n" + "\n".join(body) + '\n"[broken\nnext line\n', encoding="utf-8")
    (folder / "test.jsonl").write_text(
        lines(*({"instruction": f"测试{i}", "output": f"<think>t</think>{i}"} for i in range(10)))
    )
    general = sum(1 for line in open(ROOT / "data/sample/general.jsonl", encoding="utf-8") if line.strip())
    held = (len(text) - 1) + 22 + 10 + general  # non-blank lines of mix.jsonl, CSV body lines, test, replay
    return folder, held


def run_flow(base: Path) -> dict:
    folder, held = flow_files(base)
    home, runs = base / "prefect-flow", base / "runs-flow"
    env = {**os.environ, **SECRETS, "PREFECT_HOME": str(home), "PYTHONPATH": str(ROOT)}
    sets = [
        f'data.allowed_roots=["{folder}","{{project}}/data"]',
        f'data.train_paths=["{folder}/mix.jsonl","{folder}/sg.csv"]',
        f"data.test_path={folder}/test.jsonl",
        f"runs_dir={runs}",
        "data.max_rejected_fraction=0.3",
    ]
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "flows.finetune", "--stop-after", "tokenize", *(a for s in sets for a in ("--set", s))],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=900,
    )
    (base / "flow.log").write_text(proc.stdout + proc.stderr)
    leaked = []
    for path in [*runs.rglob("*"), *home.rglob("*"), base / "flow.log"]:
        if path.is_file():
            blob = path.read_bytes()
            leaked += [f"{path.name}: {k}" for k, v in SECRETS.items() if v.encode() in blob]
    summary = next(runs.rglob("summary.json"), None)
    read = json.loads(summary.read_text())["data"]["rows_read"] if summary else None
    return {
        "exit": proc.returncode,
        "seconds": round(time.monotonic() - t0, 1),
        "rows_in_files": held,
        "rows_read": read,
        "rows_lost": None if read is None else held - read,
        "files_scanned": sum(1 for p in [*runs.rglob("*"), *home.rglob("*")] if p.is_file()),
        "secrets_leaked": len(leaked),
        "leaks": leaked,
        "tail": (proc.stderr.strip().splitlines() or [""])[-1][:160],
    }


def _procs() -> dict[int, tuple[int, str, str, str]]:
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError, IndexError):
            rest = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            out[int(pid)] = (int(rest[1]), rest[19], rest[0], cmd[:160])
    return out


def _tree(root: int) -> dict:
    procs, found, grew = _procs(), {root}, True
    while grew:
        grew = False
        for pid, (ppid, *_) in procs.items():
            if ppid in found and pid not in found:
                found.add(pid)
                grew = True
    return {pid: procs[pid] for pid in found - {root} if pid in procs}


def kill_and_count_survivors(proc: subprocess.Popen, seen: dict[tuple[int, str], str]) -> tuple[bool, list[str]]:
    """SIGKILL ``proc`` if it still runs; after 8 s, the commands of the descendants in ``seen`` (pid, start time)
    still alive, which this harness then kills (what it started must not outlive it). Returns (was running, left)."""
    running = proc.poll() is None
    if running:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(8)
    now = _procs()
    left = [cmd for (pid, start), cmd in seen.items() if pid in now and now[pid][1] == start and now[pid][2] != "Z"]
    for (pid, start), _ in seen.items():
        if pid in now and now[pid][1] == start:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return running, left


def kill_trial(base: Path, tag: str, pattern: str, delay: float, extra: list[str]) -> dict:
    """Start a data-only run, SIGKILL it ``delay`` s after ``pattern`` shows in its log, list survivors 8 s later."""
    log_path = base / f"kill-{tag}.log"
    env = {**os.environ, "PREFECT_HOME": str(base / f"prefect-{tag}"), "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "flows.finetune", "--stop-after", "tokenize"]
    command += ["--set", f"runs_dir={base / f'runs-{tag}'}", *extra]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    seen: dict[tuple[int, str], str] = {}
    t0, at = time.monotonic(), None
    while time.monotonic() - t0 < 300 and proc.poll() is None:
        for pid, (_, start, _, cmd) in _tree(proc.pid).items():
            seen[(pid, start)] = cmd
        if at is None and pattern in log_path.read_text(errors="replace"):
            at = time.monotonic()
        if at is not None and time.monotonic() - at >= delay:
            break
        time.sleep(0.2)
    running, left = kill_and_count_survivors(proc, seen)
    return {
        "input": f"{tag}: SIGKILL {delay:g} s after {pattern!r}",
        "killed_mid_run": running,
        "descendants": len(seen),
        "orphans": left,
    }


# The export children stall at their start (a sitecustomize in the driver's PYTHONPATH), so the kill finds them
# running; the driver is the process a flow run would be, calling the stage's own function.
STALL_AT_START = """
import sys, time
if sys.argv[:2] in (["-c", "quantize"], ["-c", "smoke"]) or "--outtype" in sys.argv:
    time.sleep(120)
"""
EXPORT_DRIVERS = {
    "convert": ("convert_hf_to_gguf", "from tasks.export import convert\nconvert({d!r}, 'f16', {d!r} + '/m-F16.gguf')"),
    "quantize": (
        "quantize",
        "from pathlib import Path\nfrom tasks.export import quantize\n"
        "quantize(Path({d!r}, 'm-F16.gguf'), 'Q8_0', Path({d!r}, 'm-Q8_0.gguf'))",
    ),
    "smoke": (
        "smoke",
        "from r1lib.config import SmokeConfig\nfrom r1lib.export.gguf import GGUFFile\n"
        "from tasks.smoke import smoke_all\n"
        "smoke_all([GGUFFile(path={d!r} + '/m-Q8_0.gguf', type='Q8_0', bytes=1)], ['Hi'], SmokeConfig())",
    ),
}


def export_kill_trial(base: Path, stage: str) -> dict:
    """SIGKILL a process running ``stage``'s function once its child runs; its descendants alive 8 s later."""
    marker, code = EXPORT_DRIVERS[stage]
    folder = base / f"kill-{stage}"
    (folder / "site").mkdir(parents=True)
    (folder / "site" / "sitecustomize.py").write_text(STALL_AT_START)
    env = {**os.environ, "PYTHONPATH": f"{folder / 'site'}{os.pathsep}{ROOT}"}
    proc = subprocess.Popen([sys.executable, "-c", code.format(d=str(folder))], cwd=ROOT, env=env)
    seen: dict[tuple[int, str], str] = {}
    t0 = time.monotonic()
    while time.monotonic() - t0 < 180 and proc.poll() is None:
        tree = _tree(proc.pid)
        for pid, (_, start, _, cmd) in tree.items():
            seen[(pid, start)] = cmd
        if any(marker in cmd for *_, cmd in tree.values()):
            break
        time.sleep(0.2)
    running, left = kill_and_count_survivors(proc, seen)
    return {
        "input": f"{stage}: SIGKILL while its child runs",
        "killed_mid_run": running,
        "descendants": len(seen),
        "orphans": left,
    }


def run_kills(base: Path) -> tuple[list[dict], dict]:
    trials = [
        kill_trial(base, "server-up", "Beginning flow run", 0.5, []),
        kill_trial(base, "data-stages", "Beginning subflow run", 2, []),
        kill_trial(base, "dask", "Beginning subflow run", 3, ["--set", "runner.kind=dask"]),
        *(export_kill_trial(base, stage) for stage in EXPORT_DRIVERS),
    ]
    return trials, {
        "runs": len(trials),
        "killed_mid_run": sum(t["killed_mid_run"] for t in trials),
        "orphans": sum(len(t["orphans"]) for t in trials),
    }


def markdown(result: dict) -> str:
    f = result["figures"]
    return (
        f"| {result['date']} | {f['hostile_inputs']} | {f['rows_lost']} | {f['crashes']} | {f['outside_reads']} | "
        f"{f['config_accepted']} | {f['code_executions']} | {f['secrets_leaked']} | {f['orphans_after_kill9']} | "
        f"{f['templates_not_refused']} | {f['hangs']} | {f['unfilled_placeholders']} | {f['not_refused_round3']} | "
        f"{f['mispaired_rows']} | {result['commit']} {'quick' if result['quick'] else 'full'} |\n"
    )


HEADER = """# Hostile-input battery

`bench/attack.py` (its docstring defines every count): data files, paths, configuration values and model folders of
our own making, driven through `tasks.validate.validate_file`, `r1lib.data.inputs.expand_inputs`,
`flows.finetune.main`, the model loaders (with "y" on stdin), one `--stop-after tokenize` run with planted secrets, and
`--stop-after tokenize` runs killed with SIGKILL. Raw results: `attack-<date>.json`.

"""
COLUMNS = ["date", "inputs", "rows lost", "crashes", "outside reads", "config accepted", "code runs"]
COLUMNS += ["secrets leaked", "orphans", "templates not refused", "hangs", "unfilled placeholders"]
COLUMNS += ["pickles, records, GGUFs not refused", "mispaired rows", "rev"]
HEADER += "| " + " | ".join(COLUMNS) + " |\n" + "|---" * len(COLUMNS) + "|\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="no flow run and no kill -9 runs")
    args = parser.parse_args()
    os.chdir(ROOT)
    base = Path(tempfile.mkdtemp(prefix="attack-"))
    sections: dict = {}
    try:
        sections_run = (
            ("data", run_data),
            ("paths", run_paths),
            ("config", run_config),
            ("config_files", run_config_files),
            ("templates", run_templates),
            ("models", run_models),
            ("round3", lambda b: run_round3(b, ROOT)),
        )
        for name, fn in sections_run:
            t0 = time.monotonic()
            rows, figures = fn(base)
            sections[name] = {"figures": figures, "seconds": round(time.monotonic() - t0, 1), "cases": rows}
            print(f"{name}: {figures}", flush=True)
        if not args.quick:
            sections["flow"] = run_flow(base)
            print(f"flow: { {k: v for k, v in sections['flow'].items() if k != 'leaks'} }", flush=True)
            rows, figures = run_kills(base)
            sections["kill9"] = {"figures": figures, "cases": rows}
            print(f"kill9: {figures}", flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    flow = sections.get("flow", {})
    figures = {
        "hostile_inputs": sum(
            s["figures"]["inputs"]
            for k, s in sections.items()
            if k in ("data", "paths", "config", "config_files", "templates", "models", "round3")
        )
        + (1 if flow else 0)
        + sections.get("kill9", {}).get("figures", {}).get("runs", 0),
        "rows_lost": sections["data"]["figures"]["rows_lost"] + (flow.get("rows_lost") or 0),
        "crashes": sections["data"]["figures"]["crashes"],
        "outside_reads": sections["paths"]["figures"]["outside_reads"],
        "config_accepted": sections["config"]["figures"]["accepted"]
        + sections["config_files"]["figures"]["not_as_meant"],
        "code_executions": sections["models"]["figures"]["code_executions"]
        + sections["round3"]["figures"]["code_executions"],
        "templates_not_refused": sections["templates"]["figures"]["not_refused"],
        "hangs": sections["templates"]["figures"]["hangs"] + sections["config_files"]["figures"]["hangs"],
        "not_refused_round3": sections["round3"]["figures"]["not_refused"],
        "mispaired_rows": sections["round3"]["figures"]["mispaired"],
        "unfilled_placeholders": sections["data"]["figures"]["unfilled_placeholders"],
        "secrets_leaked": flow.get("secrets_leaked"),
        "orphans_after_kill9": sections.get("kill9", {}).get("figures", {}).get("orphans"),
    }
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout
    result = {
        "date": datetime.date.today().isoformat(),
        "commit": commit.strip(),
        "quick": args.quick,
        "figures": figures,
        "sections": sections,
    }
    print(json.dumps(figures, indent=2))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"attack-{result['date']}{'-quick' if args.quick else ''}.json").write_text(
        json.dumps(result, indent=2, ensure_ascii=False, default=str) + "\n"
    )
    table = RESULTS / "attack.md"
    text = table.read_text() if table.exists() else HEADER
    table.write_text(text + markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
