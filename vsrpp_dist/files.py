"""Writing a file so that readers see the old one or the new one, never half of one."""

from __future__ import annotations

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
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
