"""Writing a file so that readers see the old one or the new one, never half of one; and the machine's
usable cores (the one place they are counted)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def atomic_write_text(path: str | Path, text: str, *, durable: bool = False, temporary: Path | None = None,
                      overwrite: bool = True) -> None:
    """Write `text` to a temporary file beside `path`, then rename it over `path` (atomic on POSIX).

    durable: fsync the file before the rename and the folder after it, so that a crash or power loss
    leaves the old file or the complete new one (manifests, auto-tune records).
    temporary: the temporary file's path (default `.NAME.tmp-PID` beside `path`).
    overwrite: False refuses to replace a file that appeared meanwhile (FileExistsError).
    A failed write (disk full) removes its temporary file and raises; the old file stays."""
    path = Path(path)
    tmp = temporary or path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        if durable:
            with open(tmp, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
        else:
            tmp.write_text(text, encoding="utf-8")
        if not overwrite and path.exists():
            raise FileExistsError(f"{path} appeared meanwhile; not overwriting it")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_folder(path.parent)


def fsync_folder(folder: Path) -> None:
    """Make the renames in `folder` durable; where a folder cannot be opened for that (some platforms),
    the renames are still atomic and this does nothing."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    """The SHA-256 of a file, read in chunks (shards, weights files)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, which a batch scheduler sets), not the
    machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
