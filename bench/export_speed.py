"""Export speed, the path before issue #26 against the one after it, on the same checkpoint in one run.

    python bench/export_speed.py --shape tiny-qwen --out bench/results     # a CPU, seconds
    python bench/export_speed.py --shape r1-qwen-7b --out $OUT              # GPU machine: bench/gpu_rehearse_all.sh

A random-weight bf16 checkpoint of the shape (r1lib/rehearsal/shapes.py) stands for the merged model (the merge
itself streams shard by shard and did not change). Paths, each timed from the merged model to the requested files:

  before      convert to F16 (kept), then every quantized type one after the other in one child (the old flow)
  after       convert to F16 (a temporary input), then one quantize child per type at once, the cores shared
              (flows/export.py), the F16 deleted
  q8_direct   the converter straight to Q8_0 (its own quantizer; for a Q8_0-only export: no F16 at all)

Each quantized file of ``after`` must be byte-identical to ``before``'s (llama.cpp's quantizers are deterministic
whatever the thread count). Writes export-speed-<shape>-<date>.json and .md.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()[:16]


def before(merged: Path, out: Path, qtypes: list[str]) -> dict:
    from tasks.export import convert, quantize_all

    started = time.monotonic()
    f16 = convert(str(merged), "f16", out / "m-F16.gguf")
    converted = time.monotonic()
    files = quantize_all(Path(f16.path), qtypes, [out / f"m-{q}.gguf" for q in qtypes])
    done = time.monotonic()
    return {
        "seconds": round(done - started, 2),
        "convert_s": round(converted - started, 2),
        "quantize_s": round(done - converted, 2),
        "files": {f.type: f.path for f in [f16, *files]},
    }


def after(merged: Path, out: Path, qtypes: list[str]) -> dict:
    from flows.export import quantize_threads
    from tasks.export import convert, quantize

    started = time.monotonic()
    f16 = convert(str(merged), "f16", out / "m-F16.gguf")
    converted = time.monotonic()
    threads = quantize_threads()
    with ThreadPoolExecutor(len(qtypes)) as pool:  # as the flow's task runner runs the quantize tasks
        files = list(pool.map(lambda q: quantize(Path(f16.path), q, out / f"m-{q}.gguf", threads), qtypes))
    Path(f16.path).unlink()
    done = time.monotonic()
    return {
        "seconds": round(done - started, 2),
        "convert_s": round(converted - started, 2),
        "quantize_s": round(done - converted, 2),
        "threads_per_child": threads,
        "files": {f.type: f.path for f in files},
    }


def q8_direct(merged: Path, out: Path) -> dict:
    from tasks.export import convert

    started = time.monotonic()
    result = convert(str(merged), "q8_0", out / "m-direct-Q8_0.gguf")
    return {"seconds": round(time.monotonic() - started, 2), "files": {"Q8_0": result.path}}


def markdown(record: dict) -> str:
    rows = record["paths"]
    lines = [
        f"# Export speed: {record['shape']}, {record['date']}",
        "",
        f"`{record['command']}` on {record['device']} ({record['cpus']} CPUs, load {record['load']}). A random-weight "
        f"checkpoint of {record['params'] / 1e9:.2f}B parameters stands for the merged model; requested types "
        f"{', '.join(record['qtypes'])}.",
        "",
        "| path | seconds | convert s | quantize s | files kept |",
        "|---|---:|---:|---:|---|",
    ]
    for name, row in rows.items():
        lines.append(
            f"| {name} | {row['seconds']} | {row.get('convert_s', '–')} | {row.get('quantize_s', '–')} | "
            f"{', '.join(row['files'])} |"
        )
    lines += [
        "",
        f"after vs before: **{record['speedup']}x**; quantized files byte-identical: {record['identical']}.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="tiny-qwen")
    parser.add_argument("--qtypes", default="Q4_K_M,Q8_0")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--work", default="/tmp/r1-export-speed")
    parser.add_argument("--skip-direct", action="store_true", help="leave out the converter's own Q8_0")
    args = parser.parse_args(argv)

    from r1lib.io import write_json, write_text
    from r1lib.rehearsal.meter import cpu_count
    from r1lib.rehearsal.run import device_name
    from r1lib.rehearsal.shapes import build_random_model

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    merged = work / "merged"
    built = build_random_model(args.shape, merged)
    print(f"[export_speed] built {built}", flush=True)
    qtypes = args.qtypes.split(",")
    paths = {}
    for name, run in (("before", lambda o: before(merged, o, qtypes)), ("after", lambda o: after(merged, o, qtypes))):
        out = work / name
        out.mkdir()
        paths[name] = run(out)
        print(f"[export_speed] {name}: {paths[name]}", flush=True)
    if not args.skip_direct:
        out = work / "direct"
        out.mkdir()
        paths["q8_direct"] = q8_direct(merged, out)
        print(f"[export_speed] q8_direct: {paths['q8_direct']}", flush=True)
    before_files, after_files = paths["before"]["files"], paths["after"]["files"]
    identical = all(digest(Path(before_files[q])) == digest(Path(after_files[q])) for q in qtypes)
    started = datetime.now(UTC)
    record = {
        "shape": args.shape,
        "date": started.strftime("%Y-%m-%d"),
        "command": "python bench/export_speed.py " + " ".join(argv),
        "device": device_name(),
        "cpus": cpu_count(),
        "load": round(os.getloadavg()[0], 2),
        "params": built["params"],
        "qtypes": qtypes,
        "paths": {k: {**v, "files": sorted(v["files"])} for k, v in paths.items()},
        "speedup": round(paths["before"]["seconds"] / max(paths["after"]["seconds"], 1e-9), 2),
        "identical": identical,
    }
    name = f"export-speed-{args.shape}-{record['date']}"
    write_json(Path(args.out) / f"{name}.json", record)
    write_text(Path(args.out) / f"{name}.md", markdown(record))
    print(markdown(record), flush=True)
    shutil.rmtree(work, ignore_errors=True)
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
