"""attack5: change a GGUF's bytes so that verify_digests still trusts its stamp (dev, inode, size, mtime, ctime).

A process holding a shared writable mapping of the file, with the page already dirtied before the export hashed
it, writes through that mapping afterwards: the page is already writable, so no page fault updates mtime/ctime (the
kernel stamps the time on the write fault, not on each store) until writeback write-protects the page again (ext4:
dirty_expire_centisecs, 30 s by default). The stamp still matches, the bytes do not, verify_digests passes.
Case B: the same with a mapping made only after the stamp (its first store faults: the ctime moves, it is caught).
Run: python bench/attack5/gguf_mmap_swap.py [folder]   (default: a temp folder on the project's disk)"""

import mmap
import os
import sys
import tempfile
import time
from pathlib import Path

from r1lib.errors import ExportCheckError
from r1lib.export.gguf import GGUFFile, verify_digests
from r1lib.io import FileStamp, sha256_file, sha256_stamped

folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(dir=Path(__file__).parent))


def gguf_at(path: Path) -> GGUFFile:
    digest, stamp = sha256_stamped(path)
    assert stamp is not None, "stamp not taken (file changed too recently)"
    return GGUFFile(path=str(path), type="Q4_K_M", bytes=path.stat().st_size, sha256=digest, stamp=stamp)


def verdict(gguf: GGUFFile, path: Path) -> str:
    changed = sha256_file(path) != gguf.sha256
    try:
        verify_digests([gguf])
        passed = True
    except ExportCheckError:
        passed = False
    same = FileStamp.of(path) == tuple(gguf.stamp)
    return f"bytes changed: {changed}; stamp still equal: {same}; verify_digests passed: {passed}"


for case, predirty in (("A pre-dirtied mapping", True), ("B mapping made after the stamp", False)):
    path = folder / f"model-{case[0]}.gguf"
    path.write_bytes(b"GGUF" + bytes(1 << 16))
    fd = os.open(path, os.O_RDWR)
    mapped = mmap.mmap(fd, 0) if predirty else None
    if predirty:
        mapped[100] = 1  # dirty the page now: the store that faults, and stamps the time
    time.sleep(1.3)  # past STAMP_SETTLED_NS, as an export's hashing of a large file is
    gguf = gguf_at(path)
    if mapped is None:
        mapped = mmap.mmap(fd, 0)
    mapped[8:16] = b"TAMPERED"  # the change after the stamp
    print(f"{case}: {verdict(gguf, path)}")
    mapped.close()
    os.close(fd)
    path.unlink()


# Other swaps, each expected to be caught (ctime or inode moves).
def swap_rename(path: Path) -> None:
    other = path.with_suffix(".new")
    other.write_bytes(path.read_bytes().replace(b"GGUF", b"GGUG", 1))
    st = path.stat()
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(other, path)


def swap_hardlink(path: Path) -> None:
    link = path.with_suffix(".link")
    os.link(path, link)
    st = path.stat()
    with open(link, "r+b") as handle:
        handle.seek(8)
        handle.write(b"TAMPERED")
    os.utime(link, ns=(st.st_atime_ns, st.st_mtime_ns))
    link.unlink()


def swap_same_size_utime(path: Path) -> None:
    st = path.stat()
    with open(path, "r+b") as handle:
        handle.seek(8)
        handle.write(b"TAMPERED")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


for name, swap in (("C rename onto it, mtime copied", swap_rename), ("D write via a hardlink, mtime restored",
                   swap_hardlink), ("E same-size write, mtime restored", swap_same_size_utime)):  # fmt: skip
    path = folder / "model-x.gguf"
    path.write_bytes(b"GGUF" + bytes(1 << 16))
    time.sleep(1.3)
    gguf = gguf_at(path)
    swap(path)
    print(f"{name}: {verdict(gguf, path)}")
    path.unlink()
if len(sys.argv) == 1:
    folder.rmdir()
