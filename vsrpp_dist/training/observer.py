"""Rank-0 side effects behind one object: training.log, training_status.txt, TensorBoard, the other
experiment trackers (trackers.py), progress bar.

On other ranks the same object does nothing except pass warnings and errors to stderr (tagged with the
rank), so call sites never branch on rank, and no collective ever sits behind an `is_main` check.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any, Mapping

import torch

from ..config import Config, LogConfig
from ..files import atomic_write_text
from ..masking import mask
from .trackers import TENSORBOARD, Trackers, tracker_params

LOG_NAME = "training.log"
STATUS_NAME = "training_status.txt"
TB_DIR = "logs"


TB_RETRY_SECONDS = 60.0  # after a failed TensorBoard write, how long before a new event file is tried


def _quiet_tensorboard_thread_errors() -> None:
    """TensorBoard writes events from a thread of its own; when the disk is full that thread dies with a
    traceback on the console, and the writer raises the same OSError at our next write, where the
    Observer reports it in one line. The thread's own traceback is therefore left out."""
    from tensorboard.summary.writer.event_file_writer import _AsyncWriterThread

    previous = threading.excepthook
    if getattr(previous, "quiet_tensorboard", False):
        return

    def hook(args) -> None:
        if not (isinstance(args.thread, _AsyncWriterThread) and isinstance(args.exc_value, OSError)):
            previous(args)

    hook.quiet_tensorboard = True
    threading.excepthook = hook


class LogFileHandler(logging.FileHandler):
    """training.log; when the disk is full, one line on the console instead of logging's traceback per
    record, and training goes on (the console still has every message)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, encoding="utf-8")
        self.failing = False

    def handleError(self, record: logging.LogRecord) -> None:
        if not self.failing:
            self.failing = True
            error = sys.exc_info()[1]
            sys.stderr.write(f"{time.strftime('%H:%M:%S')} ERROR cannot write {self.baseFilename} ({error}); "
                             "training goes on, messages reach the console only until it can be written\n")


class Observer:
    def __init__(self, run_dir: Path, *, rank: int, is_main: bool, total_steps: int,
                 progress_bar: bool | None = None, log: LogConfig = LogConfig()) -> None:
        self.run_dir = run_dir
        self.rank = rank
        self.is_main = is_main
        self.total_steps = total_steps
        self.logger = logging.getLogger(f"vsrpp_dist.rank{rank}")
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = False
        for handler in list(self.logger.handlers):
            self.logger.removeHandler(handler)
        console = logging.StreamHandler(sys.stderr)
        if is_main:
            console.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
            file_handler = LogFileHandler(run_dir / LOG_NAME)
            file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            self.logger.addHandler(file_handler)
        else:
            # other ranks: warnings and errors still reach the user, with their rank
            console.setLevel(logging.WARNING)
            console.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s [rank {rank}] %(message)s", "%H:%M:%S"))
        self.logger.addHandler(console)
        # Python warnings (ours from the data stream, libraries') go to the same place.
        logging.captureWarnings(True)
        warnings_logger = logging.getLogger("py.warnings")
        warnings_logger.handlers = list(self.logger.handlers)
        warnings_logger.propagate = False

        self.writer = None
        self.bar = None
        self.disk_trouble: set[str] = set()  # files that could not be written (reported once per outage)
        self._tb_retry_at = 0.0
        self._closed = False
        # TensorBoard stays this object's own writer (not Accelerate's TensorBoardTracker, a thin wrapper
        # round the same SummaryWriter): it keeps RUN/logs as it was and survives a full disk (below).
        self.tensorboard = TENSORBOARD in log.trackers
        self.trackers = Trackers(log, run_dir, report=self.error, inform=self.info) if is_main else None
        if is_main:
            if self.tensorboard:
                self.writer = self._open_tensorboard()
            if progress_bar is None:
                progress_bar = sys.stderr.isatty()
            if progress_bar:
                from tqdm import tqdm

                self.bar = tqdm(total=total_steps, unit="step", dynamic_ncols=True, file=sys.stderr)

    # -- text ---------------------------------------------------------------------------------------

    def info(self, message: str) -> None:
        if self.is_main:
            self._emit(logging.INFO, message)

    def warn(self, message: str, all_ranks: bool = True) -> None:
        """A warning; from every rank by default (each may see something different), or from rank 0
        alone for events all ranks share."""
        if all_ranks or self.is_main:
            self._emit(logging.WARNING, message)

    def error(self, message: str) -> None:
        self._emit(logging.ERROR, message)

    def _emit(self, level: int, message: str) -> None:
        if self.bar is not None:
            self.bar.clear()
        self.logger.log(level, mask(message))  # training.log is shared and copied: no credentials in it
        if self.bar is not None:
            self.bar.refresh()

    # -- TensorBoard --------------------------------------------------------------------------------

    # A full disk must not end a run over its logs: a failed write is reported once, the records are
    # dropped, and after TB_RETRY_SECONDS a new event file is tried (TensorBoard reads every event file
    # in the folder, so the curves continue where space came back).

    def _open_tensorboard(self):
        from torch.utils.tensorboard import SummaryWriter

        _quiet_tensorboard_thread_errors()
        return SummaryWriter(log_dir=str(self.run_dir / TB_DIR))

    def _tensorboard(self):
        if (self.writer is None and self.is_main and self.tensorboard and not self._closed
                and time.monotonic() >= self._tb_retry_at):
            try:
                self.writer = self._open_tensorboard()
            except OSError as err:
                self._write_failed("TensorBoard events", err)
            else:
                self._write_recovered("TensorBoard events")
        return self.writer

    def _write_failed(self, what: str, err: OSError) -> None:
        if what.startswith("TensorBoard"):
            writer, self.writer = self.writer, None
            self._tb_retry_at = time.monotonic() + TB_RETRY_SECONDS
            if writer is not None:
                try:
                    writer.close()
                except Exception:  # its background thread already failed; nothing more to save
                    pass
        if what not in self.disk_trouble:
            self.disk_trouble.add(what)
            self.error(f"cannot write {what} in {self.run_dir} ({err}); training goes on and tries again later")

    def _write_recovered(self, what: str) -> None:
        if what in self.disk_trouble:
            self.disk_trouble.discard(what)
            self.warn(f"{what}: written again", all_ranks=False)

    def start_trackers(self, cfg: Config, *, resume: bool) -> None:
        """Start the trackers other than TensorBoard with the run's (masked) config as parameters; on resume
        they continue the tracker runs this run directory started."""
        if self.trackers is not None:
            self.trackers.start(tracker_params(cfg), resume=resume)

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """Every tracker gets the same tags at the same step."""
        if self.trackers is not None:
            self.trackers.log(step, values)
        writer = self._tensorboard()
        if writer is None:
            return
        try:
            for tag, value in values.items():
                writer.add_scalar(tag, value, step)
        except OSError as err:
            self._write_failed("TensorBoard events", err)

    def image(self, step: int, tag: str, image_chw: torch.Tensor) -> None:
        if self.trackers is not None:
            self.trackers.log_image(step, tag, image_chw)
        writer = self._tensorboard()
        if writer is None:
            return
        try:
            writer.add_image(tag, image_chw.clamp(0, 1), step)
        except OSError as err:
            self._write_failed("TensorBoard events", err)

    def flush(self) -> None:
        if self.writer is None:
            return
        try:
            self.writer.flush()
        except OSError as err:
            self._write_failed("TensorBoard events", err)

    # -- status file and progress bar ---------------------------------------------------------------

    def status(self, fields: Mapping[str, Any]) -> None:
        if not self.is_main:
            return
        width = max(len(k) for k in fields)
        lines = [f"vsrpp-dist training status ({time.strftime('%Y-%m-%d %H:%M:%S')})"]
        lines += [f"{key.ljust(width)}  {value}" for key, value in fields.items()]
        try:
            atomic_write_text(self.run_dir / STATUS_NAME, "\n".join(lines) + "\n")
        except OSError as err:
            self._write_failed(STATUS_NAME, err)
        else:
            self._write_recovered(STATUS_NAME)

    def progress(self, step: int, postfix: str = "") -> None:
        if self.bar is not None:
            self.bar.n = step
            if postfix:
                self.bar.set_postfix_str(postfix, refresh=False)
            self.bar.refresh()

    def close(self) -> None:
        self._closed = True
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.trackers is not None:
            self.trackers.finish()
        if self.writer is not None:
            try:
                self.writer.close()
            except OSError as err:
                self._write_failed("TensorBoard events", err)
            self.writer = None
        for handler in list(self.logger.handlers):
            try:
                handler.flush()
                if isinstance(handler, logging.FileHandler):
                    handler.close()
            except OSError:  # a full disk, already reported by LogFileHandler; the console had every line
                pass
            if isinstance(handler, logging.FileHandler):
                self.logger.removeHandler(handler)
