"""What the run does when something goes wrong, so that nothing trained is lost and every rank ends the
same way: non-finite steps (skip, then roll back with a lower learning rate, then stop), stop signals
(an emergency checkpoint written by all ranks together), crashes (rank 0 saves what it holds), a lost
rank (one clear line instead of gloo's traceback) and the replica check after every checkpoint.
"""

from __future__ import annotations

import traceback

import torch

from ..errors import CheckpointError, CheckpointWriteError, TrainingError, UserError
from .state import StepResult

# What gloo and NCCL say when the other end of a collective has gone away.
PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "NCCL communicator was aborted")


def says_peer_gone(err: BaseException) -> bool:
    """Whether `err` is gloo's or NCCL's word that the other end of a collective went away."""
    import torch.distributed as dist

    return isinstance(err, getattr(dist, "DistNetworkError", ())) or (
        isinstance(err, RuntimeError) and any(text in str(err) for text in PEER_GONE))


def out_of_memory(err: BaseException) -> bool:
    """A GPU or host allocation that failed: torch's OutOfMemoryError, Python's MemoryError, or the CPU
    allocator's RuntimeError."""
    return isinstance(err, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(err, RuntimeError) and ("DefaultCPUAllocator: can't allocate memory" in str(err)
                                           or "CUDA out of memory" in str(err)))


def peer_gone_reason(err: BaseException) -> str:
    """The words that matter in gloo's several-line message (a source path, then advice)."""
    return next((text for text in PEER_GONE if text in str(err)), type(err).__name__)


class Recovery:
    def __init__(self, cfg, accelerator, observer, *, state, schedule, checkpoints, contents, report,
                 compatibility) -> None:
        self.guard = cfg.guard
        self.accelerator = accelerator
        self.observer = observer
        self.state = state
        self.schedule = schedule
        self.checkpoints = checkpoints
        self.contents = contents  # the model whose replicas are compared
        self.report = report
        self.compatibility = compatibility
        self.stopped_alone = False  # set when a stop ended the run without the ranks agreeing on it

    # -- non-finite steps -----------------------------------------------------------------------------

    def nonfinite_step(self, result: StepResult) -> None:
        """Every rank skipped the step (they agree through the all-reduce); after
        guard.max_nonfinite_in_row in a row, roll back."""
        state = self.state
        state.nonfinite_total += 1
        state.nonfinite_in_row += 1
        self.observer.warn(f"step {state.step + 1}: non-finite loss or gradient (loss {result.stats.total:.4g}, "
                           f"gradient norm {result.stats.grad_norm:.4g}); step skipped "
                           f"({state.nonfinite_in_row} in a row, {state.nonfinite_total} in total)")
        self.observer.scalars(state.step, {"Guard/NonFinite_Steps": state.nonfinite_total})
        if state.nonfinite_in_row >= self.guard.max_nonfinite_in_row:
            self.rollback()

    def rollback(self) -> None:
        """Back to the newest checkpoint, with the learning rate lowered once more for every rollback of
        the run; the data stream keeps going forward so the batches that blew up are not replayed."""
        guard, state = self.guard, self.state
        if state.rollbacks >= guard.max_rollbacks:
            raise TrainingError(f"{guard.max_nonfinite_in_row} non-finite steps in a row after {state.rollbacks} "
                                f"rollbacks (guard.max_rollbacks={guard.max_rollbacks}); the run keeps diverging: "
                                "lower optim.lr_peak or check the data, then continue with --resume")
        # What the run has lived through since that checkpoint is not undone by loading it.
        keep = {k: getattr(state, k) for k in ("batches_consumed", "nonfinite_total", "rollbacks",
                                                "skipped_samples", "bad_shards", "train_seconds")}
        try:
            info = self.checkpoints.load("latest", self.compatibility)
        except CheckpointError as err:
            raise TrainingError(f"{guard.max_nonfinite_in_row} non-finite steps in a row and no checkpoint "
                                f"to roll back to ({err}); lower optim.lr_peak or check the data") from None
        for key, value in keep.items():
            setattr(state, key, value)
        state.rollbacks += 1
        state.nonfinite_in_row = 0
        # The checkpoint restored the schedule's rollback count as it was when it was written; the run's
        # own count (kept above) is the truth, so every rollback lowers the LR again, even to one checkpoint.
        self.schedule.state.rollbacks = state.rollbacks
        self.observer.warn(f"rolled back to {info.path.name} (step {state.step}) after "
                           f"{guard.max_nonfinite_in_row} non-finite steps; learning rate now "
                           f"{self.schedule.learning_rate(state.step):.3g} (rollback {state.rollbacks})")
        self.observer.scalars(state.step, {"Guard/Rollbacks": state.rollbacks})

    # -- after a checkpoint ---------------------------------------------------------------------------

    def checkpoint_written(self, path) -> None:
        """After a collective save (every rank is here): record the event and check the replicas agree."""
        if path is None:
            return
        self.report.checkpoint(path)
        self.verify_replicas()

    def verify_replicas(self) -> None:
        """DDP keeps every rank's weights identical; a silent desync (a bug, a bad node) would make
        checkpoints reflect rank 0 alone. Compare per-tensor sums of all ranks, exactly."""
        acc = self.accelerator
        if acc.num_processes == 1:
            return
        model = acc.unwrap_model(self.contents.model)
        fingerprint = torch.stack([p.detach().double().sum() for p in model.parameters()])
        table = acc.gather(fingerprint.unsqueeze(0))
        if bool((table == table[0]).all()):
            self.observer.info(f"weights identical on all {acc.num_processes} ranks at step {self.state.step} "
                               f"(fingerprint {float(table[0].sum()):.12g})")
        else:
            differing = [r for r in range(table.shape[0]) if not torch.equal(table[r], table[0])]
            self.observer.warn(f"weights differ between ranks at step {self.state.step} (ranks {differing} vs 0); "
                               "the gradients are not being synchronised", all_ranks=False)

    # -- stops and crashes ----------------------------------------------------------------------------

    def stop_for_signal(self, signals) -> int:
        """Every rank agreed to stop (one got SIGTERM/SIGINT): write the emergency checkpoint together;
        returns the exit code (128 + the signal, 1 when the checkpoint could not be written)."""
        name = signals.received or "a signal on another rank"
        self.observer.warn(f"stop requested ({name}): writing an emergency checkpoint at step {self.state.step}",
                           all_ranks=False)
        code = signals.exit_code if signals.received else 143
        try:
            path = self.checkpoints.save(self.state.step, ["emergency"])
        except CheckpointWriteError as err:
            self.observer.error(f"emergency {err}")
            return 1
        self.checkpoint_written(path)
        self.observer.warn(f"emergency checkpoint written: {path}; continue with --resume", all_ranks=False)
        return code

    def something_to_save(self) -> bool:
        """Has a step been trained since the checkpoint this run last saved or started from? (Not at step 0
        of a new run, not right after a checkpoint of this very step.)"""
        from .checkpoint import NAME_RE

        match = NAME_RE.match(self.checkpoints.last_saved or "")
        return self.state.step > 0 and (match is None or int(match.group(2)) != self.state.step)

    def stop_while_waiting(self, signals) -> int:
        """A stop arrived while this rank waited for data that did not come (signals.StopWhileWaiting):
        there is no step boundary for the ranks to agree at, so rank 0 saves the last finished step alone
        (as after a crash) when something was trained since the last checkpoint, and the rank leaves without a
        collective; a rank that still waits for it sees it gone and ends with one line. Returns 128 + the
        signal."""
        self.stopped_alone = True
        name = signals.received or "a stop signal"
        self.observer.warn(f"stop requested ({name}) while waiting for data (step {self.state.step + 1} had no "
                           "batch yet); stopping without waiting for it")
        if self.accelerator.is_main_process and self.something_to_save():
            try:
                path = self.checkpoints.save(self.state.step, ["emergency"], collective=False)
                self.observer.warn(f"emergency checkpoint written: {path}; continue with --resume")
            except CheckpointWriteError as err:
                self.observer.error(f"emergency {err}")
                return 1
        elif self.accelerator.is_main_process:
            self.observer.warn(f"nothing new to save: no step trained since the last checkpoint (step "
                               f"{self.state.step})")
        return signals.exit_code or 143

    def lost_a_rank(self, err: BaseException) -> bool:
        return self.accelerator.num_processes > 1 and says_peer_gone(err)

    def crashed(self, err: BaseException) -> None:
        """On an uncaught error, rank 0 saves what it holds without waiting for other ranks (they may be
        gone). Not after a forced second Ctrl-C (the user asked to leave now), nor after a TrainingError
        (a diverged run whose state would only diverge again)."""
        if isinstance(err, (KeyboardInterrupt, TrainingError)):
            self.observer.error(f"stopped: {err}")
            return
        if self.lost_a_rank(err):  # not a bug here: the traceback would only point at the next collective
            self.observer.error(f"lost contact with another rank at step {self.state.step}: {peer_gone_reason(err)}")
        elif isinstance(err, UserError):  # the data or a setting (no usable sample left): one line says it all
            self.observer.error(f"stopped at step {self.state.step}: {err}")
        else:
            self.observer.error(f"training failed at step {self.state.step}: {type(err).__name__}: {err}\n"
                                + "".join(traceback.format_exception(err)))
        if self.accelerator.is_main_process and not self.something_to_save():
            self.observer.error(f"no emergency checkpoint: no step trained since the last checkpoint "
                                f"(step {self.state.step})")
            return
        try:
            path = self.checkpoints.save(self.state.step, ["emergency"], collective=False)
            if self.accelerator.is_main_process:
                self.observer.error(f"emergency checkpoint written: {path}")
        except Exception as save_err:  # never hide the original error behind a failed save
            self.observer.error(f"emergency checkpoint failed: {type(save_err).__name__}: {save_err}")
