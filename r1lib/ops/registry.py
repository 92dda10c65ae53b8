"""A small model registry: one JSON index of every trained version, its lineage, and which one is the champion.

Layout under the registry folder::

    index.json            {"champion": 3, "versions": [{version, created_at, status, champion, data_fingerprint,
                           drop_files, train_paths, config, config_fingerprint, code_version, metrics, adapter,
                           ggufs, run_dir, flow_run_id, decision}, ...]}
    data/<sha12>-<name>   every accepted drop file, snapshotted (the drop location may be cleaned up)
    models/v<N>/          the version's adapter and GGUF files (hard links or copies of the run's outputs)

Why atomic updates: the index is the single source of truth for "what is serving". It is rewritten whole through
``r1lib.io.write_json`` (a temporary file, fsync, rename), so a crash or a kill in the middle of an update leaves the
previous index intact and a reader (a serving box, the UI, a concurrent nightly) never sees a half-written file.
Read-modify-write cycles also hold an exclusive ``flock`` on ``index.lock`` so two writers cannot lose each other's
update.

    python -m r1lib.ops.registry list registry/          # versions, metrics, champion
    python -m r1lib.ops.registry rollback registry/      # make the previous champion the champion again

A second home (``registry.backend: mlflow``, r1lib/ops/mlflow_registry.py) is recorded in the index (``attach``):
from then on every version, promotion, rejection and removal is mirrored into that MLflow model registry, and the
champion is read from its ``champion`` alias.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import errno
import fcntl
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from r1lib.errors import ConfigError
from r1lib.export.gguf import GGUFFile
from r1lib.io import write_json
from r1lib.paths import PROJECT_DIR

INDEX = "index.json"


ACCEPTED = ("champion", "retired")  # version statuses whose drop files later trainings include


class DropSnapshot(BaseModel):
    """A drop file accepted for training, and the registry's own copy of it."""

    sha256: str
    snapshot: str  # data/<sha12>-<name> under the registry
    name: str = ""
    url: str = ""
    bytes: int = 0


class RegisteredGGUF(GGUFFile):
    """A version's GGUF file: the registry's hard link or copy (``path``) of the run's file (``source``)."""

    source: str | None = None

    def file(self) -> GGUFFile:
        """As the smoke test takes it."""
        return GGUFFile(**self.model_dump(exclude={"source"}))


class VersionEntry(BaseModel):
    """What is registered about a trained model: its lineage (data, configuration, code, run) and its figures."""

    data_fingerprint: str
    code_version: str
    drop_files: list[DropSnapshot] = []
    train_paths: list[str] = []
    config: dict[str, Any] = {}
    config_fingerprint: str | None = None
    metrics: dict[str, float | int | None] = {}
    model_dir: str | None = None
    run_dir: str | None = None
    flow_run_id: str | None = None
    decision: str | None = None
    compared_with: int | None = None  # the champion's version it was compared with


class Version(VersionEntry):
    """One version in the index: the entry, its number and state, and its own copies of the adapter and GGUFs."""

    version: int
    created_at: str
    status: str  # candidate, champion, retired, rejected, rolled-back
    champion: bool = False
    adapter: str | None = None
    ggufs: list[RegisteredGGUF] = []


def code_version(root: str | Path | None = None) -> str:
    """The git commit of the code that trained (``-dirty`` with uncommitted changes), else ``unknown``."""
    root = Path(root or PROJECT_DIR)
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        if not sha:
            return os.environ.get("R1_CODE_VERSION", "unknown")
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("R1_CODE_VERSION", "unknown")


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


class Registry:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    # --- the index ------------------------------------------------------------------------------------------------

    @property
    def index_path(self) -> Path:
        return self.root / INDEX

    def load(self) -> dict:
        """The index as stored; ConfigError naming the file when it is not one this registry could have written
        (truncated, a version number twice, an entry or a champion that does not validate): every reader and
        writer would otherwise act on it, each failing its own way or promoting a duplicate."""
        if not self.index_path.exists():
            return {"champion": None, "versions": []}
        fix = f"restore it or fix it by hand (the nightly's registry_dir is {str(self.root)!r})"
        try:
            index = json.loads(self.index_path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ConfigError(f"{self.index_path} is not readable JSON ({exc}): {fix}") from None
        if not (isinstance(index, dict) and isinstance(index.get("versions"), list)):
            raise ConfigError(f"{self.index_path} holds no list of versions: {fix}")
        numbers = []
        for position, entry in enumerate(index["versions"]):
            try:
                numbers.append(Version.model_validate(entry).version)
            except ValidationError as exc:
                problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:3])
                named = entry.get("version") if isinstance(entry, dict) else None
                raise ConfigError(
                    f"{self.index_path}: entry {position} (version {named!r}) is not valid ({problems}): {fix}"
                ) from None
        if twice := sorted({n for n in numbers if numbers.count(n) > 1}):
            raise ConfigError(f"{self.index_path} lists version(s) {twice} more than once: {fix}")
        champion = index.get("champion")
        if champion is not None and champion not in numbers:
            raise ConfigError(f"{self.index_path} names champion {champion!r}, which is not one of its versions: {fix}")
        return index

    # --- the MLflow home ------------------------------------------------------------------------------------------

    def attach(self, backend: str, uri: str | None = None, model_name: str = "r1-finetune") -> None:
        """Record where this registry is mirrored (``mlflow``: the model ``model_name`` at ``uri``; ``folder``:
        nowhere). Versions registered before stay where they were."""
        if backend == "mlflow" and not uri:
            raise ConfigError("registry.backend = mlflow needs registry.uri (or tracking.uri): the MLflow server")
        home = {"uri": uri, "model_name": model_name} if backend == "mlflow" else None
        if self.load().get("mlflow") == home:
            return  # nothing changes (a folder registry that was never mirrored stays untouched)
        with self.update() as index:
            if backend == "mlflow":
                index["mlflow"] = {"uri": uri, "model_name": model_name}
            else:
                index.pop("mlflow", None)

    @property
    def mirror(self):
        """The attached MLflow registry (``MlflowRegistry``), or None."""
        home = self.load().get("mlflow")
        if not home:
            return None
        from r1lib.ops.mlflow_registry import MlflowRegistry

        return MlflowRegistry(home["uri"], home["model_name"])

    @contextlib.contextmanager
    def update(self) -> Iterator[dict]:
        """Lock, read, let the block change the index, write it back atomically (only if the block finished)."""
        self.root.mkdir(parents=True, exist_ok=True)
        lock_path = self.root / "index.lock"
        try:  # never through a symlink: opening one for writing emptied the file it pointed at
            descriptor = os.open(lock_path, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            raise ConfigError(f"{lock_path} is a symlink, not this registry's lock file: remove it") from None
        with os.fdopen(descriptor, "rb") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            index = self.load()
            yield index
            write_json(self.index_path, index)

    def versions(self) -> list[Version]:
        return [Version.model_validate(v) for v in self.load()["versions"]]

    def get(self, version: int) -> Version | None:
        return next((v for v in self.versions() if v.version == version), None)

    def champion(self) -> Version | None:
        """The champion: the version the MLflow home's ``champion`` alias names when attached, else the index's."""
        if (mirror := self.mirror) is not None:
            number = mirror.champion_number()
            if number is not None and (found := self.get(number)) is None:
                raise ConfigError(
                    f"the MLflow registry's champion alias names v{number}, which {self.index_path} does not list: "
                    "point the alias at a version it lists (or remove the alias)"
                )
            return None if number is None else found
        index = self.load()
        return next((Version.model_validate(v) for v in index["versions"] if v["version"] == index["champion"]), None)

    def processed_files(self) -> set[str]:
        """sha256 of every drop file some version has already been trained on."""
        return {f.sha256 for v in self.versions() for f in v.drop_files}

    def accepted_data(self) -> list[str]:
        """Snapshots of the drop files of every version that was promoted (champion now or before), oldest first.
        The files of a rejected challenger are held, not trained on again: they stay in ``data/`` for review, and
        ``processed_files`` keeps the nightly from retrying them; a corrected file (new content) is new data."""
        seen, paths = set(), []
        for v in self.versions():
            if v.status not in ACCEPTED:
                continue
            for f in v.drop_files:
                if f.sha256 not in seen:
                    seen.add(f.sha256)
                    paths.append(f.snapshot)
        return paths

    # --- data snapshots -------------------------------------------------------------------------------------------

    def snapshot_path(self, name: str, sha256: str) -> Path:
        return self.root / "data" / f"{sha256[:12]}-{Path(name).name}"

    # --- versions -------------------------------------------------------------------------------------------------

    def add_version(
        self, entry: VersionEntry | dict[str, Any], adapter: str | None, ggufs: list[GGUFFile | dict]
    ) -> Version:
        """Record a new (not yet promoted) version; its adapter and GGUFs are linked into ``models/v<N>/``."""
        entry = VersionEntry.model_validate(entry)
        ggufs = [GGUFFile.model_validate(g) for g in ggufs]
        with self.update() as index:
            number = max((v["version"] for v in index["versions"]), default=0) + 1
            home = self.root / "models" / f"v{number}"
            if home.exists():
                shutil.rmtree(home)
            stored_adapter = None
            if adapter and Path(adapter).is_dir():
                for file in Path(adapter).rglob("*"):
                    if file.is_file():
                        _link_or_copy(file, home / "adapter" / file.relative_to(adapter))
                stored_adapter = str(home / "adapter")
            stored_ggufs = []
            for g in ggufs:
                dst = home / Path(g.path).name
                _link_or_copy(Path(g.path), dst)
                stored_ggufs.append(RegisteredGGUF(**{**g.model_dump(), "path": str(dst), "source": g.path}))
            record = Version(
                **entry.model_dump(),
                version=number,
                created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                status="candidate",
                champion=False,
                adapter=stored_adapter,
                ggufs=stored_ggufs,
            )
            if (mirror := self.mirror) is not None:  # inside the update: a failed mirror leaves the index as it was
                mirror.add(record)
            index["versions"].append(record.model_dump(mode="json"))
        return record

    def remove_version(self, number: int) -> None:
        """Undo ``add_version`` (a rolled-back nightly): forget the entry and delete its files."""
        with self.update() as index:
            index["versions"] = [v for v in index["versions"] if v["version"] != number]
            if index["champion"] == number:
                index["champion"] = None
        if (mirror := self.mirror) is not None:
            mirror.remove(number)
        shutil.rmtree(self.root / "models" / f"v{number}", ignore_errors=True)

    def set_status(self, number: int, status: str, decision: str | None = None) -> None:
        with self.update() as index:
            for v in index["versions"]:
                if v["version"] == number:
                    v["status"] = status
                    if decision is not None:
                        v["decision"] = decision
        if (mirror := self.mirror) is not None:
            mirror.set_status(number, status, decision)

    def set_champion(self, number: int | None) -> int | None:
        """Make ``number`` the champion (None: no champion); returns the previous champion's number."""
        with self.update() as index:
            previous = index["champion"]
            if number is not None and not any(v["version"] == number for v in index["versions"]):
                raise KeyError(f"no version {number} in {self.index_path}")
            index["champion"] = number
            for v in index["versions"]:
                v["champion"] = v["version"] == number
                if v["version"] == number:
                    v["status"] = "champion"
                elif v["version"] == previous and v["status"] == "champion":
                    v["status"] = "retired"
        if (mirror := self.mirror) is not None:
            mirror.set_champion(number)
        return previous

    def rollback(self) -> int | None:
        """Re-promote the most recent earlier champion (one that was retired); returns the new champion's number."""
        index = self.load()
        current = index["champion"]
        earlier = [
            v for v in index["versions"] if v["status"] == "retired" and (current is None or v["version"] < current)
        ]
        if not earlier:
            raise LookupError("no earlier champion to roll back to")
        target = earlier[-1]["version"]
        self.set_champion(target)
        if current is not None:
            self.set_status(current, "rolled-back")
        return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m r1lib.ops.registry", description="The model registry.")
    parser.add_argument("command", choices=["list", "rollback"])
    parser.add_argument("root", nargs="?", default="registry")
    args = parser.parse_args(argv)
    registry = Registry(args.root)
    if args.command == "rollback":
        print(f"champion is now v{registry.rollback()}")
    for v in registry.versions():
        mark = "*" if v.champion else " "
        print(
            f"{mark} v{v.version:<3} {v.status:11} {v.created_at}  data {v.data_fingerprint[:12]}  "
            f"code {v.code_version[:12]}  {json.dumps(v.metrics)}"
        )


if __name__ == "__main__":
    main()
