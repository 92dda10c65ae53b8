"""The stages of the pipeline, declared once: name, order, folder, configuration, what each consumes and produces.

Every reader of stage names reads them here: the flows (each stage's output folder and configuration sections), the
run summary and the model card (results in stage order), the rehearsal's stage table and its report's groups, and the
tests. A new stage is one more line in ``STAGES``; a new *data filter* (a map over the training shards followed by a
merge, as augment and debias are) is a line with ``filter=True``, its module ``tasks/<name>.py`` and its configuration
section: the data flow iterates the filters in order (flows/data.py).

The order is the order of the flow: validate -> dedup -> augment -> debias -> tokenize -> train -> evaluate ->
fairness -> merge -> convert -> quantize -> smoke -> card -> summary. Merge, convert and quantize share one folder
(``export/``: the merged model and the GGUF files).

What travels between stages are small typed values: the results (``r1lib.stage.StageResult``) and the inputs below
(``Candidate``, ``HeldOut``, ``DataFingerprint``), all with declared paths (r1lib/paths.py) so that a stage's cache key
covers the files it reads.
"""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from r1lib.paths import InputPath

Group = Literal["data", "train", "evaluate", "export", "smoke", "card"]


class Stage(BaseModel, frozen=True):
    """One stage of the pipeline."""

    name: str  # label in the summary, the rehearsal's table, the UI; the task functions are <name>_..._task
    group: Group  # the part of the flow the rehearsal's report adds it to
    consumes: tuple[str, ...] = ()
    produces: tuple[str, ...] = ()
    # The configuration sections the stage's task takes, as {keyword: PipelineConfig field}: ``settings`` hands them.
    sections: dict[str, str] = {}
    folder: str | None = None  # under runs/<run>/; None: the stage writes nothing there (or, summary, the run's root)
    filter: bool = False  # a data filter over the training shards (tasks/<name>.py: shard_task, merge_task)

    @property
    def order(self) -> int:
        return STAGES.index(self)

    @property
    def section(self) -> str | None:
        """The stage's own configuration section (its ``cfg``)."""
        return self.sections.get("cfg")


STAGES: tuple[Stage, ...] = (
    Stage(
        name="resolve-model",
        group="data",
        consumes=("model.name_or_path",),
        produces=("model_dir",),
        sections={"cfg": "model"},
    ),
    Stage(
        name="validate",
        group="data",
        consumes=("data files",),
        produces=("ValidatedData: records in shards, quarantine, data fingerprint",),
        sections={"cfg": "data"},
        folder="validate",
    ),
    Stage(
        name="dedup",
        group="data",
        consumes=("ValidatedData",),
        produces=("DedupedData: train/test records",),
        sections={"cfg": "dedup"},
        folder="dedup",
    ),
    Stage(
        name="augment",
        group="data",
        consumes=("training shards", "replay records"),
        produces=("AugmentedData: training shards",),
        sections={"cfg": "augment"},
        folder="augment",
        filter=True,
    ),
    Stage(
        name="debias",
        group="data",
        consumes=("training shards",),
        produces=("DebiasedData: training shards",),
        sections={"cfg": "debias"},
        folder="debias",
        filter=True,
    ),
    Stage(
        name="tokenize",
        group="data",
        consumes=("training shards", "test records", "replay records", "model_dir"),
        produces=("TokenizedData per split",),
        sections={"cfg": "tokenize"},
        folder="tokenize",
    ),
    Stage(
        name="train",
        group="train",
        consumes=("TokenizedData train/test", "model_dir"),
        produces=("TrainResult: adapter, loss curve",),
        sections={"model_cfg": "model", "cfg": "train", "tokenize_cfg": "tokenize", "tracking_cfg": "tracking"},
        folder="train",
    ),
    Stage(
        name="evaluate",
        group="evaluate",
        consumes=("Candidate", "HeldOut"),
        produces=("Evaluation: scores, Decoding",),
        sections={"model_cfg": "model", "cfg": "evaluate", "tokenize_cfg": "tokenize"},
        folder="evaluate",
    ),
    Stage(
        name="fairness",
        group="evaluate",
        consumes=("Candidate", "HeldOut"),
        produces=("FairnessReport",),
        sections={
            "model_cfg": "model",
            "eval_cfg": "evaluate",
            "tokenize_cfg": "tokenize",
            "debias_cfg": "debias",
            "cfg": "fairness",
        },
        folder="fairness",
    ),
    Stage(
        name="merge",
        group="export",
        consumes=("Candidate",),
        produces=("merged model",),
        sections={"model_cfg": "model"},
        folder="export",
    ),
    Stage(name="convert", group="export", consumes=("merged model",), produces=("F16 GGUF",), folder="export"),
    Stage(
        name="quantize",
        group="export",
        consumes=("F16 GGUF", "export.quantizations"),
        produces=("quantized GGUFs",),
    ),
    Stage(
        name="smoke",
        group="smoke",
        consumes=("merged model", "GGUFs", "TokenizedData test", "Decoding"),
        produces=("SmokeReport",),
        sections={"cfg": "smoke"},
        folder="smoke",
    ),
    Stage(
        name="card",
        group="card",
        consumes=("GGUFs", "Decoding", "DataFingerprint", "stage results"),
        produces=("CardResult: README.md, Modelfiles",),
        folder="card",
    ),
    Stage(name="summary", group="card", consumes=("stage results",), produces=("summary.json",)),
)

BY_NAME: dict[str, Stage] = {s.name: s for s in STAGES}
NAMES: tuple[str, ...] = tuple(BY_NAME)
DATA_FILTERS: tuple[Stage, ...] = tuple(s for s in STAGES if s.filter)


def stage(name: str) -> Stage:
    """The declared stage ``name``; a name nobody declared is an error, not a new folder."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"no stage {name!r}; the stages are {', '.join(NAMES)} (r1lib/stages.py)") from None


def out_dir(run_dir: str | Path, name: str) -> str:
    """The output folder of stage ``name`` in the run folder: the flow hands it to the stage."""
    folder = stage(name).folder
    if folder is None:
        raise ValueError(f"stage {name!r} has no folder of its own (r1lib/stages.py)")
    return str(Path(run_dir, folder))


def folders(run_dir: str | Path) -> dict[str, str]:
    """{stage name: its output folder} for every stage that has one."""
    return {s.name: out_dir(run_dir, s.name) for s in STAGES if s.folder}


def settings(config, name: str) -> dict:
    """The configuration sections stage ``name`` takes, as its task's keyword arguments: ``{"cfg": config.<section>,
    ...}`` (``config``: a PipelineConfig)."""
    return {keyword: getattr(config, section) for keyword, section in stage(name).sections.items()}


def stage_of_result(result) -> str:
    """The stage a result comes from: the module its class is defined in (``tasks.<stage>``, dashes as ``_``)."""
    return type(result).__module__.rsplit(".", 1)[-1].replace("_", "-")


def in_stage_order(results: list) -> list:
    """``results`` sorted by their stage's place in ``STAGES`` (stable: a stage's several results keep their order;
    results of no declared stage go last)."""

    def place(result) -> int:
        name = stage_of_result(result)
        return BY_NAME[name].order if name in BY_NAME else len(STAGES)

    return sorted(results, key=place)


def stage_of_task(function: str, run_name: str = "") -> str:
    """The stage a Prefect task belongs to, from its function's name (``dedup_keys_task`` -> ``dedup``); a quantize
    run keeps its run name (``quantize Q4_K_M``: the flow runs one child process per type, at the same time), and the
    smoke test's HF reference, which runs beside the export, is a row of its own (``smoke reference``)."""
    name = function.removesuffix("_task")
    if name == "smoke_reference":
        return "smoke reference"
    for s in sorted(STAGES, key=lambda s: -len(s.name)):
        key = s.name.replace("-", "_")
        if name == key or name.startswith(key + "_"):
            return run_name if s.name == "quantize" and run_name else s.name
    return name.split("_", 1)[0]


# The context manager that writes the failure summary (tasks/summary.py): an error of the flow's body is thrown into
# it, so its frame ends every such traceback, but it never raised one.
REPORTERS = frozenset({"summary_on_failure"})


def failed_stage(error: BaseException) -> str | None:
    """The stage an error came from: its ``stage`` attribute, else the deepest frame of its traceback in a stage
    module (``tasks/<module>.py``: the module's stage, or in a module of several stages the function's, as
    ``stage_of_task`` reads it). None when no stage code raised it."""
    if isinstance(getattr(error, "stage", None), str):
        return error.stage
    tasks = Path(__file__).resolve().parent.parent / "tasks"
    frames = [
        f
        for f in traceback.extract_tb(error.__traceback__)
        if Path(f.filename).resolve().parent == tasks and f.name not in REPORTERS
    ]
    if not frames:
        return None
    module = Path(frames[-1].filename).stem.replace("_", "-")
    if module in BY_NAME:
        return module
    name = stage_of_task(frames[-1].name.lstrip("_"))  # tasks/export.py: merge, convert, quantize
    return name if name in BY_NAME else module


def group_of(stage_name: str) -> Group:
    """The rehearsal's group of a stage-table row (``quantize Q8_0`` is the quantize stage's)."""
    name = stage_name.split(" ", 1)[0]
    return BY_NAME[name].group if name in BY_NAME else "card"


# --- what travels between stages ----------------------------------------------------------------------------------


class Candidate(BaseModel):
    """A base model and a LoRA adapter on it: what evaluate, fairness and merge read (the challenger, or in the
    nightly a champion)."""

    model_dir: InputPath
    adapter_dir: InputPath


class HeldOut(BaseModel):
    """The held-out data a candidate is scored on: the test records (deduplicated, leak-free), their tokenization,
    the general replay set (forgetting), if any, and the held-out preference pairs, if any."""

    records: InputPath
    dataset: InputPath | None  # None: the test rows are preference pairs only
    replay: InputPath | None = None
    pairs: InputPath | None = None  # held-out preference pairs (a dpo/orpo/kto run): preference accuracy
    pairs_from: str = ""  # where those pairs come from: the test file, or a stable hash split of the training pairs


class DataFingerprint(BaseModel):
    """sha256 of every local input file of the run, and one sha256 over them all (the validate stage's)."""

    sha256: str
    files: dict[str, str]


class FilterContext(BaseModel):
    """What a data filter may read besides its shard of training records: the validated general replay records."""

    replay: InputPath | None = None
