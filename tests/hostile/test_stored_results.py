"""A stored stage result replaced by someone who can write the result folder never runs code: records are JSON that
names only this project's result models, and a record in any other format is passed over before Prefect reads it."""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path

import pytest
from prefect import flow, task

from r1lib.export.gguf import GGUFFile
from r1lib.policy import stage_options
from r1lib.results import StageResultSerializer, StoredError, UntrustedRecord, check_record
from r1lib.stage import StageResult

CALLS: list[int] = []


class LocalModel(StageResult):
    """A model defined outside the project's packages: never read back from a record."""

    value: int


def result(value: int) -> GGUFFile:
    return GGUFFile(path="pyproject.toml", type="Q8_0", bytes=value)


@task(**stage_options(retries=0))
def cached_stage(value: int) -> GGUFFile:
    CALLS.append(value)
    return result(value)


@flow
def one_stage(value: int) -> GGUFFile:
    return cached_stage(value)


class Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def stored_records() -> list[Path]:
    from prefect.settings import get_current_settings

    storage = Path(get_current_settings().results.local_storage_path)  # PREFECT_HOME/storage unless set otherwise
    return sorted(storage.iterdir(), key=lambda p: p.stat().st_mtime)


def test_results_round_trip_as_json_naming_their_model():
    serializer = StageResultSerializer()
    value = [result(3), {"k": (1, Path("/x"))}, None, "s"]
    assert serializer.loads(serializer.dumps(value)) == value
    with pytest.raises(UntrustedRecord, match="outside this project's packages"):
        serializer.loads(serializer.dumps(LocalModel(value=1)))
    error = serializer.loads(serializer.dumps(ValueError("bad row")))
    assert isinstance(error, StoredError) and "ValueError: bad row" in str(error)


@pytest.mark.parametrize(
    "payload",
    [
        {"__model__": "os:system", "data": "echo hi"},
        {"__model__": "subprocess:Popen", "data": ["echo", "hi"]},
        {"__model__": "r1lib.io:write_json", "data": {}},  # a project function, not a result model
        {"__error__": "os.system", "message": "echo hi"},  # read back as text, never called
    ],
)
def test_a_record_naming_a_class_outside_the_project_is_refused_or_inert(payload):
    serializer = StageResultSerializer()
    try:
        value = serializer.loads(json.dumps(payload).encode())
    except UntrustedRecord:
        return
    assert isinstance(value, StoredError)


def test_a_record_of_another_serializer_is_refused_by_its_metadata():
    record = {"metadata": {"serializer": {"type": "pickle", "picklelib": "cloudpickle"}}, "result": "gASVAA=="}
    with pytest.raises(UntrustedRecord, match="written with 'pickle'"):
        check_record(json.dumps(record).encode(), "storage/key")
    with pytest.raises(UntrustedRecord, match="not a result record"):
        check_record(b"\x80\x04K\x01.", "storage/key")


def test_a_replaced_record_never_runs_and_the_stage_runs_again(prefect_harness, tmp_path):
    import cloudpickle

    CALLS.clear()
    value = time.time_ns()  # a key no earlier session stored
    assert one_stage(value).bytes == value and one_stage(value).bytes == value
    assert CALLS == [value]  # the second run read the stored result
    record = stored_records()[-1]
    assert json.loads(record.read_text())["metadata"]["serializer"]["type"] == "r1-json"

    marker = tmp_path / "pickle-ran"
    payload = base64.b64encode(cloudpickle.dumps(Exploit(marker))).decode()
    forged = {"metadata": {"serializer": {"type": "pickle", "picklelib": "cloudpickle"}}, "result": payload}
    record.write_text(json.dumps(forged))
    assert one_stage(value).bytes == value
    assert not marker.exists() and CALLS == [value, value]

    # A record that claims the project's format but names a function of the standard library.
    newest = stored_records()[-1]
    named = json.dumps({"__model__": "os:system", "data": f"touch {marker}"})
    newest.write_text(json.dumps({"metadata": {"serializer": {"type": "r1-json"}}, "result": named}))
    assert one_stage(value).bytes == value
    assert not marker.exists() and CALLS == [value] * 3
