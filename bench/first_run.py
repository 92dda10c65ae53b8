"""A newcomer's first ten minutes: clone the repo, run the README's first command twice, time every phase.

    python bench/first_run.py                       # this machine's caches ("machine built llama-cpp-python once")
    python bench/first_run.py --fresh-machine       # empty pip/uv/wheel caches ("machine never built it")
    python bench/first_run.py --source /path/repo --branch main

It clones ``--source`` (default: this repository, its committed HEAD) into a temporary folder, reads the first command
of the README's Quickstart block, runs it there twice (the second run: model cached, nothing installed), and cuts
each run into phases from the lines the scripts and Prefect print (install, embedded-model build, Prefect's
temporary server, each stage). The 1-minute load average is sampled every 2 s; each phase shows its mean, since on a
shared machine a phase's seconds mean little without it. Writes bench/results/first_run_<date>_<case>.json and
rewrites bench/results/first_run.md from every such JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

# (phase, regex of the line that ends it); a phase starts where the previous one that occurred ended.
MARKERS = [
    ("install: dependencies", r"^bootstrap: dependencies installed"),
    ("install: embedded model build", r"pre-training the embedded model: step (\d+)/\1\b"),
    ("install: llama-cpp-python wheel, editable install", r"^bootstrap: installed in"),
    ("embedded model check", r"^\.cache/embedded/|/\.cache/embedded/"),
    ("Prefect temporary server start", r"Beginning flow run"),
    ("data stages (validate .. tokenize)", r"Task run 'tokenize train' - Finished"),
    ("train", r"Task run 'train \(.*Finished"),
    ("evaluate", r"Task run 'evaluate \(.*Finished"),
    ("merge", r"Task run 'merge adapter' - Finished"),
    ("GGUF convert + quantize", r"Task run '(?:export-gguf|quantize [^']*|convert-gguf [^']*)' - Finished"),
    ("smoke test", r"Task run 'smoke-test[^']*' - Finished"),
    ("card + summary", r"Task run 'summary[^']*' - Finished"),
]


class LoadSampler(threading.Thread):
    """The 1-minute load average every ``every`` seconds, as (monotonic time, load)."""

    def __init__(self, every: float = 2.0):
        super().__init__(daemon=True)
        self.every, self.samples, self.stop = every, [], threading.Event()

    def run(self):
        while not self.stop.is_set():
            self.samples.append((time.monotonic(), os.getloadavg()[0]))
            self.stop.wait(self.every)

    def mean(self, start: float, end: float) -> float | None:
        values = [load for t, load in self.samples if start <= t <= end]
        return round(sum(values) / len(values), 2) if values else None


def readme_first_command(readme: Path) -> str:
    """The first command line of the README's Quickstart code block (comments stripped)."""
    text = readme.read_text(encoding="utf-8")
    block = re.search(r"## Quickstart.*?```(?:bash|sh)?\n(.*?)```", text, re.S)
    if not block:
        raise SystemExit(f"{readme}: no Quickstart code block")
    return next(line.split("#")[0].strip() for line in block.group(1).splitlines() if line.split("#")[0].strip())


def timed_run(command: str, cwd: Path, env: dict, log_path: Path, sampler: LoadSampler) -> dict:
    """Run ``command``, time-stamp each output line, cut the run into phases."""
    started = time.monotonic()
    events: list[tuple[float, str]] = []
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(
            command, shell=True, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for line in proc.stdout:
            now = time.monotonic() - started
            log.write(f"{now:8.2f} {line}")
            events.append((now, line.rstrip("\n")))
        code = proc.wait()
    ended = time.monotonic() - started
    phases, last = [], 0.0
    for name, pattern in MARKERS:
        hits = [t for t, line in events if re.search(pattern, line)]
        if not hits:
            continue
        end = hits[-1]
        phases.append(
            {"phase": name, "seconds": round(end - last, 1), "load": sampler.mean(started + last, started + end)}
        )
        last = end
    phases.append({"phase": "rest (imports, exit)", "seconds": round(ended - last, 1), "load": None})
    warnings = [line for _, line in events if re.search(r"\bWARNING\b|^warning:|Warning:", line)]
    summary = next((i for i, (_, line) in enumerate(events) if "r1-finetune run summary" in line), None)
    return {
        "command": command,
        "exit_code": code,
        "total_seconds": round(ended, 1),
        "mean_load": sampler.mean(started, started + ended),
        "phases": phases,
        "warning_lines": warnings,
        "summary": [line for _, line in events[summary:]] if summary is not None else [],
        "log": str(log_path),
    }


def render_markdown() -> str:
    """bench/results/first_run.md from every first_run_*.json."""
    out = [
        "# First run: fresh clone -> summary (bench/first_run.py)",
        "",
        "Each table is one bench run: the README's first command in a fresh clone (run 1), then again in the same",
        "clone (run 2: nothing installed, the model and every stage's result cached), and, with --recompute, once more",
        "with a new run name (every stage runs again; only the install and the embedded model are reused).",
        "Load = mean 1-minute load average over the phase (2 cores).",
        "",
    ]
    for path in sorted(RESULTS.glob("first_run_*.json")):
        data = json.loads(path.read_text())
        runs = data["runs"]
        out += [
            f"## {data['date']} {data['case']} ({data['source_commit'][:10]})",
            "",
            f"`{data['command']}`; {data['case_note']}",
            "",
            *[f"- run {i + 1}: `{r['command']}`" for i, r in enumerate(runs)],
            "",
            "| phase | " + " | ".join(f"run {i + 1} s | load" for i in range(len(runs))) + " |",
            "|---|" + "---|---|" * len(runs),
        ]
        names = list(dict.fromkeys(p["phase"] for run in runs for p in run["phases"]))
        for name in names:
            cells = []
            for run in runs:
                phase = next((p for p in run["phases"] if p["phase"] == name), None)
                cells += [str(phase["seconds"]) if phase else "–", str(phase["load"] or "–") if phase else "–"]
            out.append(f"| {name} | " + " | ".join(cells) + " |")
        out.append(
            "| **total** | "
            + " | ".join(
                f"**{r['total_seconds']}** ({r['total_seconds'] / 60:.1f} min) | {r['mean_load']}" for r in runs
            )
            + " |"
        )
        warnings = sorted({w for r in runs for w in r["warning_lines"]})
        out += ["", f"WARNING lines: {len(warnings)}" + "".join(f"\n- `{w[:160]}`" for w in warnings), ""]
        if runs[-1]["summary"]:
            out += ["Summary of the last run:", "", "```", *runs[-1]["summary"][:24], "```", ""]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=str(ROOT), help="repository to clone (default: this one)")
    parser.add_argument("--branch", default=None, help="branch to clone (default: the source's HEAD)")
    parser.add_argument("--fresh-machine", action="store_true", help="empty pip, uv and wheel caches")
    parser.add_argument("--runs", type=int, default=2, help="runs of the command as the README gives it")
    parser.add_argument(
        "--recompute",
        action="store_true",
        help="one more run with a new run name: every stage runs again, only the install and the model are reused",
    )
    parser.add_argument("--keep", action="store_true", help="keep the clone (printed)")
    parser.add_argument("--tag", default="", help="suffix of the result file name")
    parser.add_argument("--render-only", action="store_true", help="rewrite first_run.md from the JSON files")
    args = parser.parse_args()
    if args.render_only:
        (RESULTS / "first_run.md").write_text(render_markdown())
        return 0

    work = Path(tempfile.mkdtemp(prefix="r1-first-run-"))
    clone = work / "r1-finetune"
    branch = ["--branch", args.branch] if args.branch else []
    subprocess.run(["git", "clone", "--quiet", *branch, args.source, str(clone)], check=True)
    commit = subprocess.run(["git", "-C", str(clone), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    command = readme_first_command(clone / "README.md")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "VIRTUAL_ENV", "R1_"))}
    if args.fresh_machine:
        env["XDG_CACHE_HOME"] = str(work / "cache")  # pip, uv and the llama-cpp-python wheel folder all live there
        for var in ("PIP_CACHE_DIR", "UV_CACHE_DIR"):
            env.pop(var, None)
        case = "fresh-machine"
        note = "empty pip, uv and llama-cpp-python wheel caches (XDG_CACHE_HOME in the temp folder)"
    else:
        case, note = "machine-cache", "this machine's pip, uv and llama-cpp-python wheel caches as they were"
    sampler = LoadSampler()
    sampler.start()
    runs = []
    commands = [command] * args.runs + ([f"{command} --set run_name=first-run-recompute"] if args.recompute else [])
    for number, run_command in enumerate(commands, 1):
        print(f"run {number}: {run_command} in {clone} (load {os.getloadavg()[0]:.2f})", flush=True)
        runs.append(timed_run(run_command, clone, env, work / f"run{number}.log", sampler))
        print(json.dumps({k: runs[-1][k] for k in ("exit_code", "total_seconds", "mean_load")}), flush=True)
        for phase in runs[-1]["phases"]:
            print(f"  {phase['phase']:52} {phase['seconds']:8.1f} s  load {phase['load']}", flush=True)
    sampler.stop.set()
    stamp = datetime.now().strftime("%Y-%m-%d")
    result = {
        "date": datetime.now().isoformat(timespec="minutes"),
        "case": case,
        "case_note": note,
        "source_commit": commit.strip(),
        "command": command,
        "cpus": os.cpu_count(),
        "runs": runs,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"first_run_{stamp}_{case}{'_' + args.tag if args.tag else ''}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "first_run.md").write_text(render_markdown())
    print(f"wrote {out} and {RESULTS / 'first_run.md'}")
    if args.keep:
        print(f"clone kept in {clone}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(r["exit_code"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
