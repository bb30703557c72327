"""The Trainer: everything is built in __init__, the loop in `train()` reads top to bottom, and each
concern lives in its component: start-up (startup.py), the step's numbers (state.py), what the user sees
(report.py), what happens when things go wrong (recovery.py), checkpoints, validation, the LR schedule,
the adaptive system, the data stream.

Per optimizer step there is exactly one collective of our own and one host synchronisation: a small
vector (loss parts, gradient norm, branch activity, stop flag) is all-reduced after backward and read
once. It tells every rank the same thing at the same time: whether the step is finite (else all skip
it), whether any rank was asked to stop (then all save together), and the numbers the adaptive system
and the logs need.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from ..config import Config
from ..data.stream import ClipStream, end_loader_workers, to_device, train_loader
from ..errors import RankLostError, TrainingError
from ..model.architecture import count_parameters
from ..signals import StopSignals, StopWhileWaiting
from .adaptive import AdaptiveController
from .autotune import Ranks
from .builder import build_optimizer, build_training_model
from .checkpoint import CheckpointContents, CheckpointManager, list_complete
from .ema import WeightEMA
from .lr_schedule import LRSchedule
from .observer import Observer
from .recovery import Recovery, out_of_memory, peer_gone_reason
from .report import Report, log_start
from .run_dir import StartRequest
from .initial_weights import describe as describe_initial
from .initial_weights import load_into, match, read_initial_weights
from .runtime import join_restarted_process_group, plan_device
from .shape import decide_run_shape
from .startup import (CompatibilityCheck, apply_device_plan, check_memory_fits, open_data, prepare_run_dir, resume,
                      will_resume)
from .trackers import require_installed
from .state import REDUCED, IntervalMeter, StepResult, StepStats, TrainState
from .step import TrainingStep
from .step import photometric_weight as photometric_weight_for
from .validation import Validator
from .wrapping import BranchActivity


class Trainer:
    def __init__(self, cfg: Config, request: StartRequest = StartRequest(), *, interactive: bool | None = None) -> None:
        self.cfg = cfg
        require_installed(cfg.log.trackers)  # before anything is made: a missing library costs one line
        # Accelerate's optimizer step asks importlib twice whether the optional lomo_optim is installed; that
        # costs 0.05-0.10 ms of a 13 ms tiny step and is left to Accelerate: caching it meant replacing
        # functions inside Accelerate's modules for the whole process (BENCHMARKS.md, "Training step").
        self.device_plan = plan_device(cfg.train, int(os.environ.get("WORLD_SIZE", "1")))
        join_restarted_process_group(self.device_plan)
        self.accelerator = acc = Accelerator(mixed_precision=self.device_plan.mixed_precision)
        apply_device_plan(acc, self.device_plan)
        check_memory_fits(cfg, self.device_plan)
        data = open_data(cfg, world_size=acc.num_processes)
        self.degradation = data.degradation
        self.run_dir = Path(cfg.run.dir).absolute()
        # A new run's starting weights are read and matched before the run directory is touched; a
        # resumed run restores its own checkpoint and never reads init.from again.
        initial = None if will_resume(self.run_dir, request) else read_initial_weights(cfg)
        init_report = match(cfg, initial) if initial is not None else None
        start, self.run_lock = prepare_run_dir(cfg, self.run_dir, request, acc, interactive)
        if start.mode == "resume":
            initial = init_report = None  # a resume chosen at the prompt continues the run's own weights
        try:
            self._build(cfg, acc, data, start, request, initial, init_report)
        except BaseException:
            if self.run_lock is not None:  # a run that never started holds nothing
                self.run_lock.release()
            raise

    def _build(self, cfg: Config, acc, data, start, request: StartRequest, initial, init_report) -> None:
        """Everything after the run directory is ours: its writers, the model, the components."""
        self.observer = Observer(self.run_dir, rank=acc.process_index, is_main=acc.is_main_process,
                                 total_steps=cfg.train.total_steps, log=cfg.log)
        log_start(self.observer, cfg, acc, self.device_plan, start, self.run_dir)
        self.observer.start_trackers(cfg, resume=start.mode == "resume")
        if self.run_lock is not None and self.run_lock.warning:
            self.observer.warn(self.run_lock.warning)
        if request.restart:
            self.observer.warn(f"the launcher restarted this job after a failure (restart {request.restart}): "
                               + ("continuing from the newest checkpoint" if start.mode == "resume" else
                                  "no checkpoint was written before it, starting again from step 0"), all_ranks=False)

        # Before the model exists: auto-tune's trials need the GPU to themselves (and leave the RNG untouched).
        self.shape = decide_run_shape(cfg, self.device_plan, self.run_dir, Ranks.from_accelerator(acc),
                                      device=acc.device, degradation=data.degradation, log=self.observer.info)
        self.batches = self.shape.batches

        set_seed(cfg.run.seed)
        model = build_training_model(cfg.model, device=acc.device,
                                     activation_checkpointing=self.shape.activation_checkpointing,
                                     channels_last=self.shape.channels_last)
        self.observer.info(f"model {cfg.model.name}: {count_parameters(model):,} parameters")
        if initial is not None:
            load_into(model, initial, init_report)
            self.observer.info(describe_initial(initial))
            for line in init_report.lines():
                self.observer.info(line)
            if cfg.init.freeze:
                self.observer.info(f"init: {', '.join(cfg.init.freeze)} fixed (LR factor 0) until step "
                                   f"{cfg.init.freeze_steps}")
        self.activity = BranchActivity(model)
        optimizer, self.lr_factors = build_optimizer(model, cfg.optim,
                                                     alignment_lr_factor=cfg.alignment_training.lr_factor,
                                                     device_type=acc.device.type, frozen=cfg.init.freeze,
                                                     freeze_steps=cfg.init.freeze_steps)
        model = self._maybe_compile(model)
        self.model, self.optimizer = acc.prepare(model, optimizer)
        acc.gradient_accumulation_steps = self.batches.grad_accum_steps
        self.training_step = TrainingStep(acc, self.model, self.optimizer)

        self.state = TrainState()
        self.schedule = LRSchedule(cfg.optim, cfg.plateau, cfg.guard, cfg.train.total_steps)
        self.adaptive = AdaptiveController(cfg.adaptive, cfg.loss)
        self.ema = WeightEMA(acc.unwrap_model(self.model), cfg.ema)
        # Provenance: where this run's weights started (a resumed run reads its own from the checkpoint).
        self.contents = CheckpointContents(cfg, acc, self.model, self.optimizer, self.ema, self.batches, self.state,
                                           initial.provenance() if initial is not None else [],
                                           data_summaries=data.summaries())
        self.checkpoints = CheckpointManager(self.run_dir, acc, cfg.checkpoint, self.observer, self.contents)
        self.contents.register(state=self.state, schedule=self.schedule, adaptive=self.adaptive,
                               checkpoints=self.checkpoints, ema=self.ema, provenance=self.contents)
        self.validator = (Validator(data.validation_set, cfg.validation, acc, self.observer,
                                    degradation=data.validation_degradation, seed=cfg.run.seed)
                          if data.validation_set is not None else None)
        self.report = Report(cfg, self.observer, acc, run_dir=self.run_dir, state=self.state, batches=self.batches,
                             adaptive=self.adaptive, checkpoints=self.checkpoints)
        compatibility = CompatibilityCheck(cfg)
        self.recovery = Recovery(cfg, acc, self.observer, state=self.state, schedule=self.schedule,
                                 checkpoints=self.checkpoints, contents=self.contents, report=self.report,
                                 compatibility=compatibility)
        if start.mode == "resume":
            resume(self.checkpoints, start.resume_from, compatibility, cfg=cfg, world_size=acc.num_processes,
                   batches=self.batches, state=self.state, observer=self.observer)
        self.observer.info(self.shape.describe())
        if unreachable := self.shape.unreachable_global_batch():
            self.observer.warn(unreachable)
        # The stream, once its batch size (the run's shape) and its first batch (a resume's) are known.
        stream = ClipStream(data.shards, seed=cfg.run.seed, rank=acc.process_index,
                            batch_size=self.batches.batch_size_per_gpu, start_batch=self.state.batches_consumed,
                            degradation=data.degradation)
        self.loader = train_loader(stream, cfg.data, pin_memory=cfg.data.pin_memory and acc.device.type == "cuda")
        self.signals: StopSignals | None = None

    # ------------------------------------------------------------------------------------------------
    # The loop

    def train(self) -> int:
        """Train to total_steps; returns the process exit code (0, or 128+signal after a stop).

        Every rank that returns here has ended with the others (the last step, an agreed stop, a final
        checkpoint they all failed to write), so they leave the process group together. A rank that simply
        exits while another still writes its last files tears gloo down under it and can die in its
        destructors ("terminate called without an active exception", SIGABRT); on several machines the
        other launchers then wait out torch elastic's 300 s exit barrier."""
        code = self._train_to_the_end()
        if self.recovery.stopped_alone and self.accelerator.num_processes > 1:
            return code  # the others may sit in a collective this rank never joins: no barrier to wait at
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()
        return code

    def _train_to_the_end(self) -> int:
        cfg, state, obs = self.cfg, self.state, self.observer
        self.signals = StopSignals()
        batches = iter(self.loader)
        meter = IntervalMeter()
        obs.info(f"training from step {state.step} to {cfg.train.total_steps}")
        try:
            while state.step < cfg.train.total_steps:
                result = self.train_step(batches)
                meter.add(result)
                if result.finite:
                    stats = result.stats
                    self.adaptive.observe(stats.l1, stats.ms, stats.grad, stats.sharpness, stats.grad_norm)
                    self.adaptive.maybe_update(state.step)
                    self.report.interval(meter, result)
                    final = state.step == cfg.train.total_steps
                    validation = self._maybe_validate(final)
                    ki_psnr = validation["KI_PSNR"] if validation else None
                    self.recovery.checkpoint_written(self.checkpoints.maybe_save(state.step, ki_psnr, final=final))
                    self.report.status(result)
                else:
                    self.recovery.nonfinite_step(result)
                if result.stop:
                    return self.recovery.stop_for_signal(self.signals)
            if self.checkpoints.failed_final:
                # The trained weights exist only in memory now: not a success, whatever else went well.
                on_disk = list_complete(self.run_dir)  # newest first
                fallback = f"{on_disk[0].path.name} (step {on_disk[0].step})" if on_disk else "none"
                obs.error(f"training reached step {state.step} but its final checkpoint could not be written; "
                          f"newest checkpoint on disk: {fallback}; free space and run again with --resume")
                return 1
            self.report.finished()
            return 0
        except StopWhileWaiting:
            # stopped while this rank waited for data that did not come: no step boundary to agree at
            code = self.recovery.stop_while_waiting(self.signals)
            end_loader_workers()  # stuck on the same data; the DataLoader would wait 5 s for each
            return code
        except BaseException as err:
            if out_of_memory(err):  # the settings' doing, not a bug: one line naming them
                err = TrainingError(f"out of memory in training step {state.step + 1} ({type(err).__name__}) with "
                                    f"data.batch_size_per_gpu={self.batches.batch_size_per_gpu}, data.lr_patch_size="
                                    f"{cfg.data.lr_patch_size}, model.channels={cfg.model.channels}; lower one of "
                                    "them, then continue with --resume")
            self.recovery.crashed(err)
            if self.recovery.lost_a_rank(err):
                end_loader_workers()  # they may wait on the same stalled data as the rank that left
                raise RankLostError(f"another rank stopped at step {state.step} ({peer_gone_reason(err)}); this rank "
                                    "stops too; see that rank's output for why, then continue with --resume") from err
            if isinstance(err, TrainingError):
                raise err from None
            raise
        finally:
            self.signals.restore()
            obs.flush()

    def train_step(self, batches) -> StepResult:
        """One optimizer step: grad_accum_steps micro-batches, then the all-reduced step statistics."""
        acc, model = self.accelerator, self.model
        started = time.perf_counter()
        # The one place the LR is computed; the result carries it to the logs and the status file.
        learning_rate, phase = self.schedule.learning_rate(self.state.step), self.schedule.phase(self.state.step)
        for group, factor in zip(self.optimizer.param_groups, self.lr_factors.at(self.state.step)):
            group["lr"] = learning_rate * factor
        weights = self.adaptive.weights
        photometric_weight = photometric_weight_for(self.cfg, self.state.step)
        sums = torch.zeros(len(StepStats.PARTS), device=acc.device)
        data_wait = 0.0
        skipped = [0, 0]  # corrupt samples, bad shards this rank's stream met during this step
        for _ in range(self.batches.grad_accum_steps):
            fetch = time.perf_counter()
            try:
                with self.signals.interrupting() if self.signals else contextlib.nullcontext():
                    batch = next(batches)
            except StopWhileWaiting:
                # the step is abandoned: the state stays that of the last finished step (batches are counted
                # when a step ends), so a resume continues the stream exactly where that step left it
                self.optimizer.zero_grad(set_to_none=True)
                raise
            data_wait += time.perf_counter() - fetch
            skipped = [a + b for a, b in zip(skipped, batch["skipped"])]
            gt_btchw, lq_btchw = self.degradation.model_input(to_device(batch, acc.device))
            parts = self.training_step.micro_batch(gt_btchw, lq_btchw, weights, photometric_weight)
            sums += torch.stack([parts[k].detach().float() for k in StepStats.PARTS])
        # acc.sync_gradients is True here: DDP has averaged the gradients over ranks.
        params, grad_norm = self.training_step.gradient_norm()
        stop = 1.0 if self.signals and self.signals.requested else 0.0
        # The data counters ride along so that the logged totals cover every rank's stream.
        host_values = torch.tensor([*skipped, stop], device=acc.device)
        local = torch.cat([sums / self.batches.grad_accum_steps, grad_norm.reshape(1),
                           self.activity.read(acc.device), host_values])
        assert local.numel() == len(REDUCED)
        reduced = dict(zip(REDUCED, acc.reduce(local, reduction="sum").tolist()))  # the step's one host sync
        self.state.skipped_samples += round(reduced["skipped_samples"])
        self.state.bad_shards += round(reduced["bad_shards"])
        world = acc.num_processes
        # means over ranks (the gradient norm is identical on every rank; the mean is that value)
        stats = StepStats(**{f.name: reduced[f.name] / world for f in dataclasses.fields(StepStats)
                             if f.name in reduced}, photometric_weight=photometric_weight)
        finite = math.isfinite(stats.total) and math.isfinite(stats.grad_norm)
        self.training_step.update(params, grad_norm, stats.grad_norm, self.adaptive.clip_threshold, finite)
        if finite:
            self.state.nonfinite_in_row = 0
            if self.ema.enabled:
                self.ema.update(acc.unwrap_model(model))
            self.state.step += 1
            self.state.clips_seen += self.batches.global_batch_size
        # Counted once the step is over (skipped or not): a crash checkpoint written in the middle of a
        # step must resume at that step's first batch, or the resumed stream is shifted.
        self.state.batches_consumed += self.batches.grad_accum_steps
        self.state.train_seconds += time.perf_counter() - started
        return StepResult(stats, finite, reduced["stop"] > 0, data_wait, learning_rate, phase)

    def _maybe_validate(self, final: bool) -> dict[str, float] | None:
        step = self.state.step
        if self.validator is None or not self.validator.due(step, final):
            return None
        started = time.perf_counter()
        result = self.validator.run(self.eval_model(), step)
        self.state.last_validation = {"step": step, **result}
        self.report.validation(result, time.perf_counter() - started)
        if self.schedule.observe_validation(result["KI_PSNR"]):
            self.adaptive.on_plateau()
            self.observer.warn(f"plateau: KI_PSNR has not improved by {self.cfg.plateau.threshold_db} dB for "
                               f"{self.cfg.plateau.patience} validations; learning rate x{self.cfg.plateau.factor} "
                               f"(now {self.schedule.learning_rate(step):.3g}), adaptive weights and clip statistics reset")
        return result

    # ------------------------------------------------------------------------------------------------
    # Building

    def _maybe_compile(self, model: torch.nn.Module) -> torch.nn.Module:
        if not self.cfg.train.compile:
            return model
        try:
            compiled = torch.compile(model)
            p = self.cfg.data.lr_patch_size
            with torch.no_grad():
                compiled(torch.zeros(1, self.cfg.model.num_frames, 3, p, p, device=self.accelerator.device))
            self.observer.info("torch.compile: on")
            return compiled
        except Exception as err:  # no compiler toolchain, unsupported backend...
            self.observer.warn(f"torch.compile unavailable ({type(err).__name__}: {str(err).splitlines()[0]}); "
                               "training eagerly")
            return model

    def eval_model(self) -> torch.nn.Module:
        """The weights validation and export use: the EMA when enabled, else the live model."""
        return self.contents.eval_model()

    def close(self) -> None:
        self.activity.remove()
        self.observer.close()
        if self.run_lock is not None:
            self.run_lock.release()  # last: nothing of this run is written after it
