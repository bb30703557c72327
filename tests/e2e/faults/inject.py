"""Run the real training command (`vsrpp_dist.train.cli`) with faults injected into a real process.

tests/e2e/test_faults.py runs this file in place of `vsrpp_dist/train.py` (`accelerate launch
tests/e2e/faults/inject.py --config ... key=value ...` or `python tests/e2e/faults/inject.py ...`); the
arguments are train.py's. Faults are chosen by environment variables, so every rank of a launch reads
the same plan and applies the part meant for it:

  VSRPP_FAULT_RANKS       ranks the faults below apply to, e.g. "1" (comma list; default: every rank)
  VSRPP_FAULT_NAN         "STEP[xN],...": the loss of optimizer step STEP (1-based) is NaN on its first N
                          attempts (default 1); a skipped step keeps its number and is tried again
  VSRPP_FAULT_CRASH       "STEP": computing the loss of optimizer step STEP raises RuntimeError (a bug:
                          an uncaught error, the crash-checkpoint path)
  VSRPP_FAULT_FILL_DISK   "PATH:STEP": at optimizer step STEP, write zeros to PATH until the filesystem
                          is full (a disk that something else filled up)
  VSRPP_FAULT_WRITE_FAIL  "TEXT": the first file this rank writes through torch.save or safetensors whose
                          path contains TEXT gets half its bytes, then OSError(ENOSPC), as on a full disk
  VSRPP_FAULT_SLOW_SAVE   "TEXT:SECONDS": after a rank has written its training state into a folder
                          whose name contains TEXT, sleep SECONDS: the checkpoint stays half-written
                          (no model.safetensors, no meta.json) that long, so a kill -9 or a second Ctrl-C can land
                          in the middle of a write
  VSRPP_FAULT_MARKS       a folder: each process writes `rank-R.pid` there at start, `EVENT-rank-R` when
                          an injected fault fires (nan-STEP-ATTEMPT, crash, fill-disk, write-fail,
                          slow-save) and `exit-CODE-rank-R` when the command returns, so a test knows
                          the fault really happened and how each rank ended

Nothing is patched unless its variable is set: with none set this runs exactly what train.py runs.
`kill -USR1 PID` prints every thread's Python stack (to see where a process hangs).
"""

from __future__ import annotations

import errno
import faulthandler
import os
import signal
import sys
import time
from pathlib import Path


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _applies() -> bool:
    wanted = os.environ.get("VSRPP_FAULT_RANKS", "").strip()
    return not wanted or _rank() in {int(r) for r in wanted.split(",") if r.strip()}


def _mark(event: str) -> None:
    folder = os.environ.get("VSRPP_FAULT_MARKS")
    if folder:
        Path(folder, f"{event}-rank-{_rank()}").write_text(f"{time.time()}\n")


def _fill_disk(path: str) -> None:
    chunk = b"\0" * (1 << 20)
    with open(path, "ab", buffering=0) as filler:
        for size in (1 << 20, 1 << 12):  # big writes, then pages until not even one fits
            try:
                while True:
                    filler.write(chunk[:size])
            except OSError as err:
                if err.errno != errno.ENOSPC:
                    raise


def _patch_steps(nan: str, crash: str, fill: str) -> None:
    """Wrap the trainer's loss: per optimizer step, NaN it, raise, or fill the disk first."""
    import torch

    from vsrpp_dist.training import trainer as trainer_module

    nan_budget: dict[int, int] = {}
    for item in filter(None, (i.strip() for i in nan.split(","))):
        step, _, count = item.partition("x")
        nan_budget[int(step)] = int(count or 1)
    nan_tries: dict[int, int] = {}
    crash_step = int(crash) if crash else None
    fill_path, _, fill_step = fill.rpartition(":")
    fill_at = int(fill_step) if fill else None
    real_init = trainer_module.Trainer.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        real_loss = self.training_step.loss_fn

        def loss_fn(sr, gt, weights):
            step = self.state.step + 1
            if step == fill_at:
                _fill_disk(fill_path)
                _mark("fill-disk")
            if step == crash_step:
                _mark("crash")
                raise RuntimeError(f"injected crash at step {step}")
            parts = real_loss(sr, gt, weights)
            if nan_tries.get(step, 0) < nan_budget.get(step, 0):
                nan_tries[step] = nan_tries.get(step, 0) + 1
                _mark(f"nan-{step}-{nan_tries[step]}")
                parts = dict(parts, total=parts["total"] * torch.tensor(float("nan")))
            return parts

        self.training_step.loss_fn = loss_fn

    trainer_module.Trainer.__init__ = init


def _patch_write_fail(text: str) -> None:
    """The first matching file write stops half-way with ENOSPC (a real partial file is left)."""
    import accelerate.utils.other as accelerate_other
    import safetensors.torch
    import torch

    fired: list[str] = []

    def failing(real):
        def write(obj, f, *args, **kwargs):
            path = str(f) if isinstance(f, (str, os.PathLike)) else ""
            if fired or text not in path:
                return real(obj, f, *args, **kwargs)
            fired.append(path)
            real(obj, f, *args, **kwargs)
            with open(path, "r+b") as handle:
                handle.truncate(os.path.getsize(path) // 2)
            _mark("write-fail")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

        return write

    torch.save = failing(torch.save)  # accelerate and the trainer look torch.save up at call time
    safetensors.torch.save_file = failing(safetensors.torch.save_file)
    accelerate_other.safe_save_file = failing(accelerate_other.safe_save_file)  # bound at import


def _patch_slow_save(spec: str) -> None:
    from vsrpp_dist.training.checkpoint import CheckpointContents

    text, _, seconds = spec.rpartition(":")
    real = CheckpointContents.write_state

    def write_state(self, folder):
        result = real(self, folder)
        if text in Path(folder).name:
            _mark("slow-save")
            time.sleep(float(seconds))
        return result

    CheckpointContents.write_state = write_state


def main() -> int:
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    if marks := os.environ.get("VSRPP_FAULT_MARKS"):
        Path(marks).mkdir(parents=True, exist_ok=True)
        Path(marks, f"rank-{_rank()}.pid").write_text(f"{os.getpid()}\n")
    if _applies():
        env = os.environ.get
        if env("VSRPP_FAULT_NAN") or env("VSRPP_FAULT_CRASH") or env("VSRPP_FAULT_FILL_DISK"):
            _patch_steps(env("VSRPP_FAULT_NAN", ""), env("VSRPP_FAULT_CRASH", ""), env("VSRPP_FAULT_FILL_DISK", ""))
        if text := env("VSRPP_FAULT_WRITE_FAIL"):
            _patch_write_fail(text)
        if spec := env("VSRPP_FAULT_SLOW_SAVE"):
            _patch_slow_save(spec)
    from vsrpp_dist.train import cli

    try:
        code = cli()
    except BaseException as err:
        _mark(f"exit-{type(err).__name__}")
        raise
    _mark(f"exit-{code}")
    return code


if __name__ == "__main__":
    sys.exit(main())
