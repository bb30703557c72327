"""The run directory and the start decision: new run, resume, or fresh start with the old run moved aside.

One run directory holds one run: rank 0 takes an exclusive lock on `RUN/run.lock` (RunLock) before
anything in the directory is written and holds it for the run's lifetime; a second start is refused
with one line naming the holder. Then every rank evaluates the same facts from the shared filesystem,
so they agree without talking; only rank 0 changes the directory, between two barriers.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

CHECKPOINTS = "checkpoints"
LOCK_NAME = "run.lock"
from ..errors import StartError


@dataclass(frozen=True)
class StartRequest:
    resume: str | None = None  # "latest" or a checkpoint path
    fresh: bool = False
    auto_resume: bool = False  # resume when the run has checkpoints, else start new (cluster requeues)
    # How often the launcher has restarted this job (torch elastic's TORCHELASTIC_RESTART_COUNT): a
    # restart continues the run it restarts, whatever the command line asked of the first attempt.
    restart: int = 0


@dataclass(frozen=True)
class StartDecision:
    mode: str  # "new", "resume", "fresh"
    resume_from: str | None = None  # "latest" or a path, when mode == "resume"
    moved_to: Path | None = None


def has_checkpoints(run_dir: Path) -> bool:
    """Whether the run has checkpoint folders of its own (symbolic links in checkpoints/ are not)."""
    folder = run_dir / CHECKPOINTS
    return folder.is_dir() and any(not p.name.startswith(".") and not p.is_symlink() for p in folder.iterdir())


def _ask(run_dir: Path, read: Callable[[str], str]) -> str:
    prompt = (f"{run_dir} already holds a run with checkpoints.\n"
              "[F]ortsetzen / resume, [L]öschen / fresh (the old run is moved aside, not deleted)? ")
    while True:
        answer = read(prompt).strip().lower()
        if answer in ("f", "fortsetzen", "r", "resume"):
            return "resume"
        if answer in ("l", "löschen", "loeschen", "fresh"):
            return "fresh"


def decide_start(run_dir: Path, request: StartRequest, *, num_processes: int,
                 interactive: bool | None = None, read: Callable[[str], str] = input) -> StartDecision:
    """What to do with `run_dir`. Pure apart from reading the filesystem and, when allowed, asking."""
    if sum(map(bool, (request.resume, request.fresh, request.auto_resume))) > 1:
        raise StartError("--resume, --fresh and --auto-resume contradict each other; choose one")
    existing = has_checkpoints(run_dir)
    if request.restart:  # the launcher restarted the job after a rank failed: continue, never start over
        if existing:
            return StartDecision("resume", resume_from="latest")
        if request.resume and request.resume != "latest":
            return StartDecision("resume", resume_from=request.resume)  # nothing newer was written yet
        return StartDecision("new")
    if request.auto_resume:
        return StartDecision("resume", resume_from="latest") if existing else StartDecision("new")
    if request.fresh:
        return StartDecision("fresh" if run_dir.exists() else "new")
    if request.resume:
        if request.resume == "latest" and not existing:
            raise StartError(f"--resume: {run_dir} holds no checkpoint to resume from (start without --resume)")
        return StartDecision("resume", resume_from=request.resume)
    if not existing:
        return StartDecision("new")
    if interactive is None:
        interactive = sys.stdin.isatty() and sys.stdout.isatty()
    if num_processes == 1 and interactive:
        choice = _ask(run_dir, read)
        return StartDecision(choice, resume_from="latest" if choice == "resume" else None)
    raise StartError(f"{run_dir} already holds checkpoints: pass --resume to continue it or --fresh to move it "
                     "aside and start over")


def move_aside(run_dir: Path) -> Path:
    """Rename the run to RUN.bak-TIMESTAMP (never deletes). When RUN is a symbolic link, the run is the
    folder it points to: that folder is moved aside where it lies and an empty one takes its place, so
    the link keeps pointing where the user put the run (on the disk they chose) and the new run starts
    there too. A failure moves nothing and is one line."""
    real = Path(os.path.realpath(run_dir)) if run_dir.is_symlink() else run_dir
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = real.with_name(f"{real.name}.bak-{stamp}")
    suffix = 1
    while os.path.lexists(target):
        target = real.with_name(f"{real.name}.bak-{stamp}-{suffix}")
        suffix += 1
    try:
        os.rename(real, target)
    except OSError as err:
        raise StartError(f"--fresh: cannot move {real} aside to {target.name} ({err.strerror or err}); "
                         "nothing was moved") from None
    if real != run_dir:
        try:
            real.mkdir()
        except OSError as err:
            raise StartError(f"--fresh: moved the old run to {target}, but cannot make a new {real} for the "
                             f"symbolic link {run_dir} ({err.strerror or err})") from None
    return target


def check_writable(run_dir: Path) -> None:
    """Fail before any work when the run directory cannot be written."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise StartError(f"run.dir={run_dir}: not writable ({err.strerror or err})") from None


# -- one run directory, one run ------------------------------------------------------------------------

_HELD_LOCK_FDS: set[int] = set()


def _close_held_locks_in_child() -> None:
    # flock belongs to the open file, which a fork shares: a loader worker that outlived its rank would
    # keep the run locked. Closing the child's copy leaves the parent's lock as it is.
    for fd in _HELD_LOCK_FDS:
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD_LOCK_FDS.clear()


os.register_at_fork(after_in_child=_close_held_locks_in_child)

# errno values of a filesystem that offers no file locks: Lustre mounted without -o flock (ENOSYS),
# NFSv3 without a running lock daemon (ENOLCK), filesystems that do not implement flock (EOPNOTSUPP, EINVAL).
NO_LOCKS = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL}


class RunLock:
    """An exclusive `flock` on RUN/run.lock for as long as the run lives. The operating system drops it
    when the process ends, however it ends (kill -9 included), so a stale lock cannot outlive its run;
    the file itself is never deleted (deleting it would let two processes lock two different files).
    The holder writes its pid, host and start time into the file, which is how a refused start names it.

    Only the main process (rank 0) takes it; other ranks follow rank 0's decision. Across nodes it is as
    good as the shared filesystem's flock: local filesystems and NFS (Linux clients send flock to the
    server as a whole-file lock) hold it for every node; see README, "One run directory, one run"."""

    def __init__(self, path: Path, fd: int | None, warning: str = "") -> None:
        self.path = path
        self._fd = fd
        self.warning = warning  # why the run is not locked (a filesystem without locks), for the log

    @classmethod
    def acquire(cls, run_dir: Path) -> "RunLock":
        path = run_dir / LOCK_NAME
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as err:
            raise StartError(f"run.dir={run_dir}: not writable ({err.strerror or err})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StartError(f"run.dir={run_dir} is in use by {read_holder(path)}: one run directory holds one "
                             "run; wait for that run to end (or stop it), or choose another run.dir") from None
        except OSError as err:
            if err.errno not in NO_LOCKS:
                os.close(fd)
                raise StartError(f"run.dir={run_dir}: cannot lock {path} ({err.strerror or err})") from None
            os.close(fd)
            return cls(path, None, f"{path}: the filesystem does not support file locks ({err.strerror}); nothing "
                                   "stops a second start in this run directory while this run lives")
        # No command line: it may carry a pipe: location's credentials.
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        except OSError as err:  # a full disk: the lock holds anyway, only the name is missing
            holder_warning = f"{path}: cannot record this process as the holder ({err.strerror or err})"
        else:
            holder_warning = ""
        _HELD_LOCK_FDS.add(fd)
        return cls(path, fd, holder_warning)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Unlock now (the end of the run); the OS does the same when the process dies."""
        fd, self._fd = self._fd, None
        if fd is not None:
            _HELD_LOCK_FDS.discard(fd)
            os.close(fd)

    def __del__(self) -> None:  # a Trainer that failed half-way through __init__ (tests build many)
        try:
            self.release()
        except Exception:  # interpreter shutdown
            pass


def read_holder(path: Path) -> str:
    """Who holds the lock, from what it wrote into the file: 'pid 1234 on host node7 (started ...)'.
    Never called by the holder: on NFS, where flock is a POSIX lock underneath, closing any descriptor
    of the file would drop the holder's lock."""
    for _ in range(20):  # the holder writes its name just after locking: give it a moment
        try:
            holder = json.loads(path.read_text())
            return f"pid {holder['pid']} on host {holder['host']} (started {holder['started']})"
        except (OSError, ValueError, KeyError, TypeError):
            time.sleep(0.05)
    return f"another process (its {path.name} names no holder)"
