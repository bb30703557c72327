"""The run directory and the start decision: new run, resume, or fresh start with the old run moved aside.

Every rank evaluates the same facts from the shared filesystem, so they agree without talking; only
rank 0 changes the directory, between two barriers.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

CHECKPOINTS = "checkpoints"
from ..errors import StartError


@dataclass(frozen=True)
class StartRequest:
    resume: str | None = None  # "latest" or a checkpoint path
    fresh: bool = False
    auto_resume: bool = False  # resume when the run has checkpoints, else start new (cluster requeues)


@dataclass(frozen=True)
class StartDecision:
    mode: str  # "new", "resume", "fresh"
    resume_from: str | None = None  # "latest" or a path, when mode == "resume"
    moved_to: Path | None = None


def has_checkpoints(run_dir: Path) -> bool:
    folder = run_dir / CHECKPOINTS
    return folder.is_dir() and any(not p.name.startswith(".") for p in folder.iterdir())


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
    """Rename RUN to RUN.bak-TIMESTAMP (never deletes)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = run_dir.with_name(f"{run_dir.name}.bak-{stamp}")
    suffix = 1
    while target.exists():
        target = run_dir.with_name(f"{run_dir.name}.bak-{stamp}-{suffix}")
        suffix += 1
    os.replace(run_dir, target)
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
