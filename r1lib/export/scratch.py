"""Where the temporary full-precision GGUF goes (``export.scratch_dir``): in RAM when there is room for it.

With ``export.keep_full_precision`` off the F16/BF16 GGUF is only the quantizer's input: 2 bytes a parameter (a 7B's
is 14.5 GB) written by the converter, read by every quantize child, then deleted. On a disk that writes a few hundred
MB/s, after the merge has just written as much again, that traffic is what the export waits for; in a RAM-backed
folder (``/dev/shm``, a tmpfs) it never touches the disk. ``auto`` takes ``/dev/shm`` only when it has room for the
file and the machine has the memory to spare beside it (``MEMORY_RESERVE``), else the export folder; the log says
which and why. Each run writes into its own subfolder (``r1-finetune-<run>-<key of its export folder>``: two runs of
one run name in two runs folders do not share it), removed when the run ends however it ends (flows/export.py:
``settled``). A run killed outright (SIGKILL, out of memory) cannot remove it: each subfolder names its export folder
(``owner.json``, with its host), and the next export into that root removes every subfolder whose run has ended (its
run folder's lock is free, or its run folder is gone) before it measures the room left (``remove_orphans``); in a
root two hosts share, only its own host's.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

from r1lib.errors import ExportCheckError
from r1lib.io import HOST, flock_within
from r1lib.stages import out_dir

log = logging.getLogger(__name__)

RAM_DIR = Path("/dev/shm")
MEMORY_RESERVE = 8 * 2**30  # left to the stages running beside the export (evaluation's host side, the smoke test)
HEADROOM = 1.05  # the GGUF's header and alignment padding over the tensors' bytes


def available_memory(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """MemAvailable in bytes (None where the kernel does not say)."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def full_precision_size(merged_dir: str | Path, outtype: str) -> int:
    """Bytes of the ``outtype`` GGUF the converter writes from the merged safetensors: their element count times the
    type's width (f32: 4, f16/bf16: 2), from the files' own headers. A file that is no safetensors fails naming it."""
    width = 4 if outtype.lower() == "f32" else 2
    elements = 0
    for shard in sorted(Path(merged_dir).glob("*.safetensors")):
        try:
            with open(shard, "rb") as handle:  # the safetensors header: its length, then JSON of every tensor's shape
                length = min(int.from_bytes(handle.read(8), "little"), 100 * 2**20)  # safetensors' own limit
                header = json.loads(handle.read(length))
            elements += sum(math.prod(info["shape"]) for name, info in header.items() if name != "__metadata__")
        except (ValueError, TypeError, KeyError, AttributeError) as exc:  # truncated, garbage or a foreign header
            raise ExportCheckError(
                f"{shard}: no readable safetensors header ({type(exc).__name__}: {str(exc)[:200]}); the export "
                "needs its tensors' shapes: write the model again (the merge stage)"
            ) from exc
    return int(elements * width * HEADROOM)


def run_folder(root: str | Path, run: str, export_dir: str | Path) -> Path:
    """The run's own subfolder of a scratch root, keyed by its export folder too (run names repeat across runs
    folders, and one run's end must not remove another's file)."""
    key = hashlib.sha256(str(Path(export_dir).resolve()).encode()).hexdigest()[:10]
    return Path(root) / f"r1-finetune-{run}-{key}"


def scratch_root(setting: str, need: int, promised: int = 0) -> tuple[Path | None, str]:
    """(the scratch root, why): None for the export folder itself. ``setting``: ``auto``, ``export`` or a folder.
    ``promised``: bytes that running exports into RAM have yet to write there (``promised``), not free for this one."""
    if setting == "export":
        return None, "export.scratch_dir is 'export'"
    if setting != "auto":
        return Path(setting), f"export.scratch_dir is {setting!r}"
    if not RAM_DIR.is_dir() or not os.access(RAM_DIR, os.W_OK):
        return None, f"{RAM_DIR} is not a writable folder"
    free = shutil.disk_usage(RAM_DIR).free - promised
    memory = available_memory()
    memory = None if memory is None else memory - promised
    gib = 2**30
    if free < need:
        return None, f"{RAM_DIR} has {free / gib:.1f} GiB free, the file needs {need / gib:.1f} GiB"
    if memory is None or memory < need + MEMORY_RESERVE:
        have = "unknown" if memory is None else f"{memory / gib:.1f} GiB"
        return None, (
            f"available memory {have} is under the file's {need / gib:.1f} GiB plus {MEMORY_RESERVE / gib:.0f} GiB "
            "for the stages beside it"
        )
    return RAM_DIR, (
        f"{RAM_DIR} has room ({free / gib:.1f} GiB free, {memory / gib:.1f} GiB of memory available"
        + (f", after {promised / gib:.1f} GiB that running exports have yet to write there)" if promised else ")")
    )


OWNER = "owner.json"


def run_ended(export_dir: Path) -> bool:
    """Whether the run that exports into ``export_dir`` has ended: the lock its run folder holds while it runs
    (r1lib/io.py: ``exclusive_dir``, a kernel flock released when the process dies) is free, or, without a lock
    file, the run folder is gone. A run folder without a lock file is not known to have ended."""
    import fcntl

    lock = export_dir.parent / ".lock"
    if not lock.is_file():
        return not export_dir.parent.exists()
    try:  # read-only: flock needs no write access (another user's run folder, a read-only filesystem)
        handle = open(lock, "rb")
    except OSError:
        return False
    with handle:
        try:
            if not flock_within(handle, 0):
                return False
        except OSError:
            return False
        fcntl.flock(handle, fcntl.LOCK_UN)
        return True


def _own_folder(folder: Path) -> bool:
    """A real folder of this user, no symlink: the only kind this module writes into, counts or removes."""
    try:
        info = folder.lstat()
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid()


def owners(root: Path) -> list[tuple[Path, dict]]:
    """The subfolders of ``root`` this pipeline made (this user's ``r1-finetune-*`` folders, no symlink, with an
    ``owner.json`` naming an export folder), with their record; a ``need`` that is no byte count reads as 0."""
    found = []
    for folder in sorted(root.glob("r1-finetune-*")):
        if not _own_folder(folder):
            continue  # a symlink (its target is not ours) or another user's folder
        try:
            record = json.loads((folder / OWNER).read_text())
            if not isinstance(record["export_dir"], str):
                continue
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not ours, or being made right now
        need = record.get("need")
        record["need"] = need if type(need) is int and need > 0 else 0
        found.append((folder, record))
    return found


def folder_bytes(folder: Path) -> int:
    """Bytes of the files in a scratch subfolder, its own record aside. A symlink counts as nothing (what it points
    at was not written here), a file removed while it is counted (its run ending) as nothing."""
    total = 0
    for parent, _, names in os.walk(folder):
        for name in names:
            with contextlib.suppress(OSError):
                info = os.lstat(os.path.join(parent, name))
                total += info.st_size if stat.S_ISREG(info.st_mode) and name != OWNER else 0
    return total


def remove_orphans(root: Path) -> None:
    """Remove the subfolders of ``root`` that this pipeline made for runs of this host that have ended without
    removing them; each removal is logged with its size. Anything else is left alone: another host's run folder
    (a scratch root on a shared filesystem) may be on that host's own disk, absent or another folder here."""
    for folder, record in owners(root):
        if record.get("host", HOST) != HOST:  # a root two hosts share: that run folder is not checkable here
            continue
        if run_ended(Path(record["export_dir"])):
            size = folder_bytes(folder)
            shutil.rmtree(folder, ignore_errors=True)
            log.warning("removed %s (%.1f GiB): left by a run that ended without removing it (%s)", folder,
                        size / 2**30, record["export_dir"])  # fmt: skip


def promised(root: Path) -> int:
    """Bytes the running exports into ``root`` have yet to write: each one's expected size less what its folder
    holds now. Two runs that start their exports together must not both count the same free RAM."""
    return sum(max(0, record["need"] - folder_bytes(folder)) for folder, record in owners(root))


LOCK_WAIT = 60.0  # seconds: choosing takes well under one; a holder stuck longer must not hang every export


@contextlib.contextmanager
def root_lock(root: Path) -> Iterator[None]:
    """One export at a time chooses its place in ``root`` (a flock on a file there, never opened through a symlink;
    none where it cannot be made, or after ``LOCK_WAIT`` seconds of another holder, logged)."""
    lock = root / ".r1-finetune.lock"
    try:
        root.mkdir(parents=True, exist_ok=True)
        handle = os.fdopen(os.open(lock, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644), "rb")
    except OSError as exc:  # a symlink or a folder in its place, a read-only root: another export is not kept out
        log.warning("%s cannot be a lock (%s): choosing the scratch place without it", lock, exc.strerror or exc)
        yield
        return
    with handle:
        try:
            held = not flock_within(handle, LOCK_WAIT, poll=0.1)
        except OSError:  # a filesystem without flock: as where the lock file cannot be made
            held = False
        if held:
            log.warning("%s held for over %.0f s: choosing the scratch place without it (export.scratch_dir can name "
                        "another folder, or 'export')", lock, LOCK_WAIT)  # fmt: skip
        yield


def scratch_folder(setting: str, export_dir: str | Path, need: int, run: str) -> Path:
    """The folder the temporary full-precision GGUF is written to (made here, with its ``owner.json``: export
    folder and expected size), logged with the reason. First the root's orphaned subfolders go (``remove_orphans``);
    the choice is made under the root's lock, counting what running exports will still write there (``promised``).
    A subfolder that cannot be made there as this user's own folder (a symlink or a file in its place, a read-only or
    unwritable root): ``auto`` falls back to the export folder, a named folder fails naming the setting."""
    if setting == "export":
        root, why = scratch_root(setting, need)
        return _made(Path(export_dir), need, why)
    base = RAM_DIR if setting == "auto" else Path(setting)
    with root_lock(base) if base.is_dir() or setting != "auto" else contextlib.nullcontext():
        remove_orphans(base)
        mine = run_folder(base, run, export_dir)
        if _own_folder(mine):  # left by an earlier attempt at this export folder (a killed run restarted, a retry)
            shutil.rmtree(mine, ignore_errors=True)
        root, why = scratch_root(setting, need, promised(base))
        if root is None:
            return _made(Path(export_dir), need, why)
        record = {"export_dir": str(Path(export_dir).resolve()), "need": need, "host": HOST}
        refused = _claim(mine, record)  # root is base here
        if refused is None:
            return _made(mine, need, why)
        if setting != "auto":
            raise ExportCheckError(
                f"export.scratch_dir {setting!r}: {refused}; name a writable folder, or set it to auto or export"
            )
        return _made(Path(export_dir), need, f"{refused} ({why})")


def _claim(folder: Path, record: dict) -> str | None:
    """Make ``folder`` with its ``owner.json`` (written to a temporary name, then renamed); None, or why it cannot:
    nothing is written through a symlink or into a folder that is not this user's."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not _own_folder(folder):
            return f"{folder} is a symlink or not this user's folder"
        temporary = folder / f".{OWNER}.tmp"
        temporary.unlink(missing_ok=True)
        temporary.write_text(json.dumps(record))
        os.replace(temporary, folder / OWNER)
    except OSError as exc:
        return f"{folder} cannot be made ({exc.strerror or exc})"
    return None


def _made(folder: Path, need: int, why: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    log.info("temporary full-precision GGUF (%.1f GiB) in %s: %s", need / 2**30, folder, why)
    return folder


def discard(path: str | Path) -> None:
    """Delete the temporary full-precision GGUF and, where it lies in a scratch subfolder, that folder too: an empty
    one would still count as what its export has yet to write (``promised``) until the run ends."""
    path = Path(path)
    path.unlink(missing_ok=True)
    folder = path.parent
    if folder.name.startswith("r1-finetune-") and _own_folder(folder) and (folder / OWNER).is_file():
        shutil.rmtree(folder, ignore_errors=True)


def remove_run_scratch(setting: str, run_dir: str | Path) -> None:
    """``remove_scratch`` for the finetune flow's run folder: its name is the GGUF's stem and its ``convert`` stage
    folder the export folder (flows/export.py), however the run ends (``settled``, the rehearsal's deadline)."""
    remove_scratch(setting, Path(run_dir).name, out_dir(run_dir, "convert"))


def remove_scratch(setting: str, run: str, export_dir: str | Path) -> None:
    """Remove the run's scratch subfolder (nothing for ``export``: that file is deleted where it lies)."""
    if setting == "export":
        return
    folder = run_folder(RAM_DIR if setting == "auto" else setting, run, export_dir)
    if _own_folder(folder):
        shutil.rmtree(folder, ignore_errors=True)
        log.info("removed the scratch folder %s", folder)
