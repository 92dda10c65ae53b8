"""Shared fixtures. Prefect runs against a throwaway local API (one per session: it takes ~15 s to start)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.chdir(ROOT)  # the configuration's default paths (data/..., .cache) are relative to the project root


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):
    from prefect.testing.utilities import prefect_test_harness

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    with prefect_test_harness(server_startup_timeout=600):  # a loaded two-core machine took over 120 s
        yield


@pytest.fixture(scope="session")
def tokenizer():
    from r1lib.model.embedded import build_tokenizer

    return build_tokenizer()


# 120 tokenized sample rows (the tiny model's tokenizer), for the training fault and multi-process tests: one copy per
# session (every reader only reads it).
@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory, tokenizer):
    from datasets import Dataset

    from r1lib.config import TokenizeConfig
    from r1lib.data.records import make_record
    from r1lib.data.row_formats import normalize
    from r1lib.io import read_jsonl
    from tasks.tokenize import tokenize_records

    rows = read_jsonl(ROOT / "data/sample/train.jsonl")[:120]
    records = [make_record(normalize(r), "train.jsonl", i) for i, r in enumerate(rows, 1)]
    tokenized, _, _ = tokenize_records(tokenizer, records, TokenizeConfig())
    path = tmp_path_factory.mktemp("data") / "dataset"
    Dataset.from_list(tokenized).save_to_disk(str(path))
    return str(path)


# --- the whole flow on the tiny preset, once a session -------------------------------------------------------------
# tests/flows/test_flow.py (the whole DAG, the broken file, planted secrets, the learning signal) and
# tests/flows/test_tracking_flow.py (the MLflow run, the lm-eval task) read the same run: the tiny preset with
# data/sample/broken.jsonl mixed in, 60 of its 90 steps, the loss logged every 10, one checkpoint at the last step,
# tracking.report_to=mlflow on the session's MLflow server (mlflow_server below) and the shipped lm-eval task scored.
# (The tracking run used to be a second whole flow of 90 steps; the tracker and lm-eval change no figure of the
# run: loss, perplexity, accuracy and parity are those of the untracked run.) 45 steps were too few: held-out
# accuracy 48%, where the test asks for 40% at least. The preset's own 90 steps are what ./scripts/demo runs
# (README.md shows that run's figures). A run shorter than one logging interval is
# tests/stages/test_layouts_train.py's whole flow.
TINY_FLOW_STEPS = 60
TINY_FLOW_LOGGING_STEPS = 10
TINY_FLOW_EXPERIMENT = "acceptance"
TINY_FLOW_LM_EVAL = {
    "lm_eval_tasks": ["r1_sample_topic"],
    "lm_eval_path": "data/lm_eval",
    "lm_eval_limit": 8,
    "lm_eval_thinking_tokens": 48,
    "lm_eval_answer_tokens": 24,
}


@pytest.fixture(scope="session")
def tiny_flow_run(prefect_harness, tmp_path_factory, request):
    import importlib.util

    from flows.finetune import finetune
    from r1lib.presets import preset
    from tests.flows.test_flow import BROKEN, PLANTED_SECRET

    # A hub token and a storage credential in the environment, as a worker would have them, and the same token in
    # the configuration: they must reach no output (the tracker gets the configuration redacted).
    os.environ["HF_TOKEN"] = os.environ["AWS_SECRET_ACCESS_KEY"] = PLANTED_SECRET
    runs = tmp_path_factory.mktemp("runs")
    config = preset("tiny")
    dumped = config.model_dump()
    train = {**dumped["train"], "max_steps": TINY_FLOW_STEPS}
    assert train["max_steps"] % TINY_FLOW_LOGGING_STEPS == 0
    data = {**dumped["data"], "train_paths": ["data/sample/train.jsonl", BROKEN]}
    update = {
        "runs_dir": str(runs),
        "data": {**data, "placeholders": {"api_token": PLANTED_SECRET}},
        "train": {**train, "logging_steps": TINY_FLOW_LOGGING_STEPS, "save_steps": train["max_steps"]},
    }
    # Without the tracking extra the run is untracked and without lm-eval (test_tracking_flow.py then skips itself).
    if importlib.util.find_spec("mlflow") and importlib.util.find_spec("lm_eval"):
        tracking = {"report_to": "mlflow", "uri": request.getfixturevalue("mlflow_server")}
        update["tracking"] = {**dumped["tracking"], **tracking, "experiment": TINY_FLOW_EXPERIMENT}
        update["evaluate"] = {**dumped["evaluate"], **TINY_FLOW_LM_EVAL}
    config = config.model_validate({**dumped, **update})
    try:
        return finetune(config)
    finally:
        del os.environ["HF_TOKEN"], os.environ["AWS_SECRET_ACCESS_KEY"]


# --- the real Prefect server stack, once a session -----------------------------------------------------------------
# tests/flows/test_server.py and tests/flows/test_server_crash.py run against one server, deployed once by the
# README's command, with one worker per pool (tests/server_stack.py: running_stack); every run they start has a name
# and a run directory of its own. (They used to start a stack each.)
# It is stopped right after the last test that uses it (pytest_runtest_teardown below), not at the end of the session:
# the server and its workers would otherwise idle beside every later test.
_STACK_EXITS: list = []


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    import contextlib

    from server_stack import running_stack

    with contextlib.ExitStack() as exits:
        running = exits.enter_context(running_stack(tmp_path_factory.mktemp("server")))
        _STACK_EXITS.append(exits)
        yield running


# One finetune deployment run, crashed twice, failed once and retried to completion (tests/server_stack.py:
# crash_fail_and_retry): test_server_crash.py checks the kills, test_server.py the failed late stage and what the run
# shows (artifacts, run graph, UI). (They used to start a run each.)
@pytest.fixture(scope="session")
def crashed_run(stack):
    from server_stack import crash_fail_and_retry

    return crash_fail_and_retry(stack)


def pytest_runtest_teardown(item, nextitem):
    if not _STACK_EXITS:
        return
    later = item.session.items[item.session.items.index(item) + 1 :] if nextitem is not None else []
    if not any("stack" in getattr(other, "fixturenames", ()) for other in later):
        _STACK_EXITS.pop().close()  # the fixture's own exit then finds nothing left to stop


# --- trainings shared by tests/lib/training/test_faults.py and test_resume_accounting.py ------------------------------
# Those two modules used to train the same 12-step run (uninterrupted, then killed at a checkpoint and resumed) and the
# same 6-step "rerun after the final checkpoint" each for themselves; each of those runs now happens once a session:
# - clean_training: test_faults.TRAIN_SCRIPT's 12 steps (checkpoints every 4, the loss logged every 5) in a child
#   process, uninterrupted; while it runs, a second training on its run directory is started in this process and must
#   be refused (what it raised is kept for the test that checks it);
# - killed_and_resumed: the same training SIGKILLed after its checkpoint-8 is complete, then run again (its first
#   process runs beside clean_training's: fault_trainings);
# - rerun_after_final_checkpoint: 6 steps in this process, the published adapter removed, the same training again.


@pytest.fixture(scope="session")
def fault_trainings(small_dataset, tmp_path_factory):
    """clean_training's and killed_and_resumed's first child processes, started together: a step of the tiny model
    keeps about one core busy (Python overhead more than arithmetic), so on two cores the two take about the time of
    one. A thread SIGKILLs the second once its checkpoint-8 is complete."""
    import threading

    from tests.lib.training.test_faults import start_training

    clean_dir = tmp_path_factory.mktemp("clean-training") / "shared"
    killed_dir = tmp_path_factory.mktemp("killed-training") / "killed"
    clean, killed = start_training(small_dataset, clean_dir), start_training(small_dataset, killed_dir)
    missed: list[str] = []  # why the kill did not happen, for killed_and_resumed to say

    def kill_after_checkpoint_8() -> None:
        deadline = time.monotonic() + 600  # two trainings share the cores meanwhile
        while not list((killed_dir / "checkpoints").glob("*/checkpoint-8/checkpoint-complete.json")):
            if killed.poll() is not None or time.monotonic() > deadline:
                missed.append("training ended before it could be killed" if killed.poll() is not None else "timeout")
                return
            time.sleep(0.2)
        killed.send_signal(signal.SIGKILL)

    watcher = threading.Thread(target=kill_after_checkpoint_8, name="kill-at-checkpoint-8", daemon=True)
    watcher.start()
    return {"clean": (clean, clean_dir), "killed": (killed, killed_dir, watcher, missed)}


@pytest.fixture(scope="session")
def clean_training(small_dataset, fault_trainings):
    from r1lib.config import TrainConfig
    from r1lib.presets import preset
    from tasks.resolve_model import resolve_model
    from tasks.train import train
    from tests.lib.training.test_faults import finish

    first, out = fault_trainings["clean"]
    lock = out / ".lock"
    deadline = time.monotonic() + 300
    while not (lock.exists() and lock.read_text().startswith("pid")):
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    cfg = preset("tiny")
    busy = None
    try:
        train(
            small_dataset,
            None,
            resolve_model(cfg.model, cfg.cache_dir),
            cfg.model,
            TrainConfig(**{**cfg.train.model_dump(), "max_steps": 12}),
            cfg.tokenize,
            out,
        )
    except Exception as exc:  # noqa: BLE001 - the test asserts what it was
        busy = exc
    finally:
        result = finish(first)
    return {"result": result, "dir": out, "pid": first.pid, "second_training": busy}


@pytest.fixture(scope="session")
def killed_and_resumed(small_dataset, fault_trainings):
    from tests.lib.training.test_faults import finish, start_training

    proc, out, watcher, missed = fault_trainings["killed"]
    watcher.join()
    assert not missed, missed
    proc.wait()
    [checkpoint] = (out / "checkpoints").glob("*/checkpoint-8")
    info = {
        "dir": out,
        "checkpoint": checkpoint,
        "adapter_after_kill": (out / "adapter").exists(),
        "totals_before": json.loads((checkpoint / "run_totals.json").read_text()),
    }
    info["resumed"] = finish(start_training(small_dataset, out))
    return info


@pytest.fixture(scope="session")
def rerun_after_final_checkpoint(small_dataset, tmp_path_factory):
    """120 rows at 8 a step: 15 steps an epoch, so max_steps=6 ends mid-epoch, where transformers' resume would run
    one more step (the epoch loop trains before it checks for the end). The 8 rows a step are 4 x 2 accumulated, as
    tests/lib/training/test_distributed.py trains over two processes: the first training's losses are its
    one-process reference."""
    from r1lib.config import TrainConfig
    from r1lib.presets import preset
    from tasks.resolve_model import resolve_model
    from tasks.train import train

    cfg = preset("tiny")
    train_cfg = TrainConfig(
        **{
            **cfg.train.model_dump(),
            "max_steps": 6,
            "save_steps": 3,
            "logging_steps": 1,
            "micro_batch_size": 4,
            "gradient_accumulation": 2,
            "learning_rate": 3e-3,
        }
    )
    model_dir = resolve_model(cfg.model, cfg.cache_dir)
    out = tmp_path_factory.mktemp("rerun") / "train"
    first = train(small_dataset, None, model_dir, cfg.model, train_cfg, cfg.tokenize, out)
    # Read now: the rerun writes its own history to the same file.
    first_losses = [h["loss"] for h in json.loads(Path(first.log_history).read_text()) if "loss" in h]
    finals = list((out / "checkpoints").glob("*/checkpoint-6"))
    shutil.rmtree(out / "adapter")  # the task died while publishing it
    again = train(small_dataset, None, model_dir, cfg.model, train_cfg, cfg.tokenize, out)
    return {"first": first, "first_losses": first_losses, "again": again, "dir": out, "final_checkpoints": finals}


def write_lines(path: Path, rows: list) -> Path:
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows), encoding="utf-8"
    )
    return path


def r1(reasoning: str, answer: str) -> str:
    return f"<think>\n{reasoning}\n</think>\n\n{answer}"


# The command line with the finetune flow stubbed: what a configuration test runs instead of a flow.
@pytest.fixture
def cli(monkeypatch, capsys):
    """``cli(*argv)`` -> (exit status or None when the flow would have run, stderr, the configuration the flow got
    or None)."""
    import flows.finetune as finetune_module

    started = []
    monkeypatch.setattr(finetune_module, "finetune", lambda config: started.append(config))
    # The stub calls no API: a configured URL keeps the command line from starting a server for it.
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")

    def run(*argv: str):
        try:
            code = finetune_module.main(list(argv))
        except AttributeError:  # the stub returns no result to print: the flow would have run
            code = None
        return code, capsys.readouterr().err, started[-1] if started else None

    return run


# --- a real MLflow tracking server and model registry, once a session -----------------------------------------------
# tests/lib/ops/test_tracking.py, tests/lib/ops/test_mlflow_registry.py and the tiny flow run (tiny_flow_run, read by
# tests/flows/test_tracking_flow.py) log to and read from it through MlflowClient: `mlflow server` on loopback, a free
# port, a SQLite backend and a local artifact folder in a temp dir, stopped (its process group) at the end of the
# session. It is started as soon as the collected tests are known to need it (pytest_collection_finish), in the
# background: its imports and SQLite migrations (a minute and more on a busy two-core machine) then overlap the tests
# that run before the first one that uses it, instead of delaying that one.
_MLFLOW: dict = {}
MLFLOW_USERS = {"mlflow_server", "tiny_flow_run"}  # tiny_flow_run asks for it with request.getfixturevalue


def _start_mlflow(home: Path) -> dict:
    import subprocess
    import sys

    from server_stack import free_port

    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--backend-store-uri", f"sqlite:///{home}/mlflow.db", "--artifacts-destination", str(home / "art")]
    log = open(home / "server.log", "wb")
    # No job runner: its seven huey consumers poll for work (GenAI jobs no test uses) at a third of a core in all.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen(
        [*command, "--workers", "1"], cwd=home, stdout=log, stderr=log, start_new_session=True, env=env
    )
    return {"server": server, "log": log, "home": home, "uri": f"http://127.0.0.1:{port}"}


def _stop_mlflow() -> None:
    import subprocess

    started = _MLFLOW.pop("started", None)
    if started is None:
        return
    server = started["server"]
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 15)):
        if server.poll() is None:
            os.killpg(server.pid, sig)
            try:
                server.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
    started["log"].close()
    shutil.rmtree(started["home"], ignore_errors=True)  # a temp dir of its own: nothing in it outlives the session


@pytest.hookimpl(tryfirst=True)  # an xdist worker writes its groups before it tells the controller it has collected
def pytest_collection_finish(session):
    import importlib.util

    if XDIST_WORKER:
        from parallel import write_groups

        write_groups(session.items)

    wanted = any(MLFLOW_USERS & set(getattr(item, "fixturenames", ())) for item in session.items)
    # An xdist worker starts it with the first test of its group instead (pytest_runtest_setup): only one worker
    # runs that group, and every worker collects every test.
    if wanted and not XDIST_WORKER and importlib.util.find_spec("mlflow") and not session.config.option.collectonly:
        import tempfile

        _MLFLOW["started"] = _start_mlflow(Path(tempfile.mkdtemp(prefix="r1-test-mlflow-")))


def pytest_sessionfinish(session, exitstatus):
    _stop_mlflow()  # when no test asked for it after all (a -x stop, a skip); else the fixture stopped it


@pytest.fixture(scope="session")
def mlflow_server():
    import urllib.request

    pytest.importorskip("mlflow", reason="the tracking extra: scripts/bootstrap dev,server,tracking")
    if "started" not in _MLFLOW:  # collection did not foresee it
        import tempfile

        _MLFLOW["started"] = _start_mlflow(Path(tempfile.mkdtemp(prefix="r1-test-mlflow-")))
    started = _MLFLOW["started"]
    server, home, uri = started["server"], started["home"], started["uri"]
    deadline = time.monotonic() + 300  # its SQLite migrations take a minute and more on a busy two-core machine
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=5) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not start: {(home / 'server.log').read_text()[-2000:]}")
            time.sleep(1)
        yield uri
    finally:
        _stop_mlflow()


# --- parallel runs (pytest-xdist: scripts/test runs -n 2 --dist loadgroup; tests/parallel.py says how it groups) ----
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if XDIST_WORKER and Path(os.environ.get("PREFECT_HOME", "")).name != f"xdist-{XDIST_WORKER}":  # imported twice
    # Each worker gets its own Prefect home (the local server's SQLite database, the stage result storage): two
    # servers on one SQLite file lock each other out. Kept between runs like .prefect/ itself.
    _home = Path(os.environ.get("PREFECT_HOME") or ROOT / ".prefect") / f"xdist-{XDIST_WORKER}"
    _home.mkdir(parents=True, exist_ok=True)
    os.environ["PREFECT_HOME"] = str(_home)


@pytest.hookimpl(tryfirst=True)  # before xdist appends the group to the node ids
def pytest_collection_modifyitems(config, items):
    """Under xdist: the tests sharing a fixture become one group, and the longest groups and tests run first."""
    if XDIST_WORKER:
        from parallel import group_and_order

        _MLFLOW["group"] = group_and_order(items)["mlflow_server"]


def pytest_xdist_make_scheduler(config, log):
    """--dist loadgroup schedules by tests/parallel.py's groups (xdist's own cannot see them under pytest 9.2)."""
    if config.getvalue("dist") == "loadgroup":
        from parallel import GroupScheduling

        return GroupScheduling(config, log)


def pytest_runtest_setup(item):
    """Under xdist: the worker that runs the MLflow users' group starts the server at the group's first test."""
    import importlib.util
    import tempfile

    mark = item.get_closest_marker("xdist_group")
    first = mark and mark.args[0] == _MLFLOW.get("group") and "started" not in _MLFLOW
    if first and importlib.util.find_spec("mlflow"):
        _MLFLOW["started"] = _start_mlflow(Path(tempfile.mkdtemp(prefix="r1-test-mlflow-")))
