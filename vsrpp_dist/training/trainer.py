"""The Trainer: everything is built in __init__, the loop in `train()` reads top to bottom, and each
concern lives in its component (checkpoints, validation, LR, adaptive system, observer, data stream).

Per optimizer step there is exactly one collective of our own and one host synchronisation: a small
vector (loss parts, gradient norm, branch activity, stop flag) is all-reduced after backward and read
once. It tells every rank the same thing at the same time: whether the step is finite (else all skip
it), whether any rank was asked to stop (then all save together), and the numbers the adaptive system
and the logs need.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from .. import __version__
from ..config import Config, ConfigError, architecture_of, config_to_dict, dump_config
from ..data.shard_format import ShardFormatError
from ..data.stream import ClipStream, build_train_loader
from ..data.validation_set import ValidationSet
from ..errors import RankLostError, TrainingError
from ..imresize import downscale
from ..model.architecture import alignment_parameters, build_model, count_parameters
from ..model.loss import HybridLoss, photometric_weight_at
from ..signals import StopSignals
from .adaptive import AdaptiveController
from .autotune import Ranks, autotune
from .checkpoint import WEIGHTS_FORMAT, CheckpointError, CheckpointManager, CheckpointWriteError, list_complete
from .ema import WeightEMA
from .lr_schedule import LRSchedule
from .observer import Observer
from .run_dir import StartError, StartRequest, check_writable, decide_start, move_aside
from .runtime import cpu_threads, memoise_accelerate_package_checks, plan_batches, plan_device, profile_settings
from .state import REDUCED, IntervalMeter, StepResult, StepStats, TrainState
from .telemetry import TELEMETRY_KEYS, GpuTelemetry
from .validation import Validator
from .wrapping import BranchActivity, set_activation_checkpointing, to_channels_last

# What gloo and NCCL say when the other end of a collective has gone away.
PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "NCCL communicator was aborted")


def lost_a_rank(err: BaseException) -> bool:
    import torch.distributed as dist

    return isinstance(err, getattr(dist, "DistNetworkError", ())) or (
        isinstance(err, RuntimeError) and any(text in str(err) for text in PEER_GONE))


def peer_gone_reason(err: BaseException) -> str:
    """The words that matter in gloo's several-line message (a source path, then advice)."""
    return next((text for text in PEER_GONE if text in str(err)), type(err).__name__)


def check_data(cfg: Config, world_size: int) -> None:
    """The data settings, checked from the manifests before the run directory is touched: a wrong path or
    a patch that does not fit costs one error line, not a half-made run directory."""
    if not cfg.data.train_shards:
        raise ConfigError("data.train_shards: not set; give the folder `python -m vsrpp_dist.pack` wrote")
    try:
        ClipStream(cfg.data.train_shards, cfg.data, seed=cfg.run.seed, rank=0, world_size=world_size, batch_size=1)
    except ShardFormatError as err:
        raise ConfigError(f"data.train_shards: {err}") from None
    if cfg.data.val_shards:
        try:
            ValidationSet(cfg.data.val_shards)
        except ShardFormatError as err:
            raise ConfigError(f"data.val_shards: {err}") from None


class Trainer:
    def __init__(self, cfg: Config, request: StartRequest = StartRequest(), *, interactive: bool | None = None) -> None:
        self.cfg = cfg
        memoise_accelerate_package_checks()
        world_env = int(os.environ.get("WORLD_SIZE", "1"))
        self.device_plan = plan_device(cfg.train, world_env)
        self.accelerator = Accelerator(mixed_precision=self.device_plan.mixed_precision)
        acc = self.accelerator
        if "WORLD_SIZE" in os.environ and world_env != acc.num_processes:
            raise StartError(f"WORLD_SIZE={world_env} but Accelerate runs {acc.num_processes} process(es): on CPU "
                             "use `ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N` "
                             "(see launch/cpu_2proc.yaml); `--cpu --num_processes N` silently runs one")
        if self.device_plan.memory_fraction:
            torch.cuda.set_per_process_memory_fraction(self.device_plan.memory_fraction, acc.device)
        if acc.device.type == "cpu" and (threads := cpu_threads()) is not None:
            torch.set_num_threads(threads)

        check_data(cfg, acc.num_processes)
        self.run_dir = Path(cfg.run.dir).absolute()
        self.start = self._prepare_run_dir(request, interactive)
        self.observer = Observer(self.run_dir, rank=acc.process_index, is_main=acc.is_main_process,
                                 total_steps=cfg.train.total_steps)
        self._log_start()

        batch_size_per_gpu, activation_checkpointing = profile_settings(cfg, self.device_plan)
        channels_last = cfg.train.channels_last
        # Before the model exists: the trials need the GPU to themselves (and leave the RNG untouched).
        tuned = autotune(cfg, self.device_plan, self.run_dir, Ranks.from_accelerator(acc), device=acc.device,
                         log=self.observer.info, batch_size_per_gpu=batch_size_per_gpu)
        if tuned is not None:
            self.batches = tuned.batch_plan
            activation_checkpointing = tuned.chosen.activation_checkpointing
            channels_last = tuned.chosen.channels_last
        else:
            self.batches = plan_batches(cfg.train.global_batch_size, batch_size_per_gpu, acc.num_processes)

        set_seed(cfg.run.seed)
        model = build_model(cfg.model)
        self.observer.info(f"model {cfg.model.name}: {count_parameters(model):,} parameters")
        set_activation_checkpointing(model, activation_checkpointing)
        if acc.device.type == "cuda" and channels_last:
            model = to_channels_last(model)
        self.activity = BranchActivity(model)
        self.aligns = cfg.model.alignment != "implicit"
        self._offsets_exploded = False  # the offset warning fires once per crossing of the limit
        fused = cfg.optim.fused == "on" or (cfg.optim.fused == "auto" and acc.device.type == "cuda")
        param_groups, self.lr_factors = self._param_groups(model)
        optimizer = torch.optim.AdamW(param_groups, lr=0.0, betas=(cfg.optim.beta1, cfg.optim.beta2),
                                      weight_decay=cfg.optim.weight_decay, fused=fused or None)
        model = self._maybe_compile(model)
        self.model, self.optimizer = acc.prepare(model, optimizer)
        self.params = list(self.model.parameters())
        acc.gradient_accumulation_steps = self.batches.grad_accum_steps
        self.loss_fn = HybridLoss()

        self.state = TrainState(world_size=acc.num_processes, num_workers=cfg.data.num_workers,
                                batch_size_per_gpu=self.batches.batch_size_per_gpu,
                                grad_accum_steps=self.batches.grad_accum_steps)
        self.schedule = LRSchedule(cfg.optim, cfg.plateau, cfg.guard, cfg.train.total_steps)
        self.adaptive = AdaptiveController(cfg.adaptive, cfg.loss)
        self.ema = WeightEMA(acc.unwrap_model(self.model), cfg.ema)
        self.telemetry = GpuTelemetry(acc.device)
        self.checkpoints = CheckpointManager(self.run_dir, acc, cfg.checkpoint, self.observer,
                                             export_weights=self.export_weights, describe=self._describe)
        for stateful in (self.state, self.schedule, self.adaptive, self.checkpoints, self.ema):
            acc.register_for_checkpointing(stateful)
        self.validator = (Validator(cfg.data.val_shards, cfg.validation, acc, self.observer)
                          if cfg.data.val_shards and cfg.validation.every else None)
        if self.start.mode == "resume":
            self._resume(self.start.resume_from)
        self._log_plan(activation_checkpointing)
        self.loader = build_train_loader(
            cfg.data.train_shards, cfg.data, seed=cfg.run.seed, rank=acc.process_index,
            world_size=acc.num_processes, batch_size=self.batches.batch_size_per_gpu,
            start_batch=self.state.batches_consumed, pin_memory=cfg.data.pin_memory and acc.device.type == "cuda")
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
                    self._after_update(result)
                    self._log(meter, result)
                    final = state.step == cfg.train.total_steps
                    validation = self._maybe_validate(final)
                    ki_psnr = validation["KI_PSNR"] if validation else None
                    self._checkpoint_event(self.checkpoints.maybe_save(state.step, ki_psnr, final=final))
                    self._status(result)
                else:
                    self._handle_nonfinite(result)
                if result.stop:
                    return self._stop_for_signal()
            if self.checkpoints.failed_final:
                # The trained weights exist only in memory now: not a success, whatever else went well.
                on_disk = list_complete(self.run_dir)  # newest first
                fallback = f"{on_disk[0].path.name} (step {on_disk[0].step})" if on_disk else "none"
                obs.error(f"training reached step {state.step} but its final checkpoint could not be written; "
                          f"newest checkpoint on disk: {fallback}; free space and run again with --resume")
                return 1
            obs.info(f"finished: step {state.step}, {state.clips_seen:,} clips, "
                     f"{state.train_seconds / 3600:.2f} h ({state.train_seconds:.1f} s) of training")
            return 0
        except BaseException as err:
            self._crash_checkpoint(err)
            if self._lost_a_rank(err):
                raise RankLostError(f"another rank stopped at step {state.step} ({peer_gone_reason(err)}); this rank "
                                    "stops too; see that rank's output for why, then continue with --resume") from err
            raise
        finally:
            self.signals.restore()
            obs.flush()

    def train_step(self, batches) -> StepResult:
        """One optimizer step: grad_accum_steps micro-batches, then the all-reduced step statistics."""
        acc, model = self.accelerator, self.model
        started = time.perf_counter()
        # The one place the LR is computed; the result carries it to the logs and the status file.
        lr_value, phase = self.schedule.lr(self.state.step), self.schedule.phase(self.state.step)
        for group, factor in zip(self.optimizer.param_groups, self.lr_factors):
            group["lr"] = lr_value * factor
        weights = self.adaptive.weights
        photometric_weight = photometric_weight_at(self.state.step, self.cfg.alignment) if self.aligns else 0.0
        sums = torch.zeros(len(StepStats.PARTS), device=acc.device)
        data_wait = 0.0
        skipped = [0, 0]  # corrupt samples, bad shards this rank's stream met during this step
        for _ in range(self.batches.grad_accum_steps):
            fetch = time.perf_counter()
            batch = next(batches)
            data_wait += time.perf_counter() - fetch
            skipped = [a + b for a, b in zip(skipped, batch["skipped"])]
            gt_btchw, lr_btchw = self._to_device(batch)
            with acc.accumulate(model):
                with acc.autocast():
                    sr_bchw, alignment = model(lr_btchw, with_alignment=True)
                parts = self.loss_fn(sr_bchw, gt_btchw[:, gt_btchw.shape[1] // 2], weights)
                objective = parts["total"]
                if photometric_weight > 0:  # bootstraps the flow from scratch; fades out (alignment.*)
                    objective = objective + photometric_weight * alignment["photometric"]
                acc.backward(objective)
            parts.update(alignment)
            sums += torch.stack([parts[k].detach().float() for k in StepStats.PARTS])
        # acc.sync_gradients is True here: DDP has averaged the gradients over ranks.
        if self.accelerator.scaler is not None:
            acc.unscale_gradients()
        params = [p for p in self.params if p.grad is not None]
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params]).float()
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
        if finite or self.accelerator.scaler is not None:
            # With fp16 the scaler itself skips steps with inf/nan gradients and lowers its scale.
            # The norm is on the host already: below the threshold clipping would multiply by 1.
            if not (finite and stats.grad_norm <= self.adaptive.clip_threshold):
                torch.nn.utils.clip_grads_with_norm_(params, self.adaptive.clip_threshold, grad_norm)
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if finite:
            if self.ema.enabled:
                self.ema.update(acc.unwrap_model(model))
            self.state.step += 1
            self.state.clips_seen += self.batches.global_batch_size
        self.state.train_seconds += time.perf_counter() - started
        return StepResult(stats, finite, reduced["stop"] > 0, data_wait, lr_value, phase)

    # ------------------------------------------------------------------------------------------------
    # Pieces of the loop

    def _to_device(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        device = self.accelerator.device
        self.state.batches_consumed += 1
        gt_btchw = batch["gt"].to(device, non_blocking=True).float().div_(255)
        if "lr" in batch:
            lr_btchw = batch["lr"].to(device, non_blocking=True).float().div_(255)
        else:
            b, t = gt_btchw.shape[:2]
            lr_btchw = downscale(gt_btchw.flatten(0, 1)).unflatten(0, (b, t))
        return gt_btchw, lr_btchw

    def _after_update(self, result: StepResult) -> None:
        stats, state = result.stats, self.state
        state.nonfinite_in_row = 0
        self.adaptive.observe(stats.l1, stats.ms, stats.grad, stats.sharpness, stats.grad_norm)
        self.adaptive.maybe_update(state.step)

    def _handle_nonfinite(self, result: StepResult) -> None:
        state, guard = self.state, self.cfg.guard
        state.nonfinite_total += 1
        state.nonfinite_in_row += 1
        self.observer.warn(f"step {state.step + 1}: non-finite loss or gradient (loss {result.stats.total:.4g}, "
                           f"gradient norm {result.stats.grad_norm:.4g}); step skipped "
                           f"({state.nonfinite_in_row} in a row, {state.nonfinite_total} in total)")
        self.observer.scalars(state.step, {"Guard/NonFinite_Steps": state.nonfinite_total})
        if state.nonfinite_in_row >= guard.max_nonfinite_in_row:
            self._rollback()

    def _rollback(self) -> None:
        """Repeated non-finite steps: back to the newest checkpoint, with a lower LR; the data stream
        keeps going forward so the batches that blew up are not replayed."""
        guard = self.cfg.guard
        if self.state.rollbacks >= guard.max_rollbacks:
            raise TrainingError(f"{guard.max_nonfinite_in_row} non-finite steps in a row after {self.state.rollbacks} "
                                f"rollbacks (guard.max_rollbacks={guard.max_rollbacks}); the run keeps diverging: "
                                "lower optim.lr_peak or check the data, then continue with --resume")
        keep = {k: getattr(self.state, k) for k in ("batches_consumed", "nonfinite_total", "rollbacks",
                                                     "skipped_samples", "bad_shards", "train_seconds")}
        try:
            info = self.checkpoints.load("latest", self._check_compatible)
        except CheckpointError as err:
            raise TrainingError(f"{guard.max_nonfinite_in_row} non-finite steps in a row and no checkpoint "
                                f"to roll back to ({err}); lower optim.lr_peak or check the data") from None
        for key, value in keep.items():
            setattr(self.state, key, value)
        self.state.rollbacks += 1
        self.state.nonfinite_in_row = 0
        # The checkpoint restored the schedule's rollback count as it was when it was written; the run's
        # own count (kept above) is the truth, so every rollback lowers the LR again, even to one checkpoint.
        self.schedule.state.rollbacks = self.state.rollbacks
        self.observer.warn(f"rolled back to {info.path.name} (step {self.state.step}) after "
                           f"{self.cfg.guard.max_nonfinite_in_row} non-finite steps; LR now "
                           f"{self.schedule.lr(self.state.step):.3g} (rollback {self.state.rollbacks})")
        self.observer.scalars(self.state.step, {"Guard/Rollbacks": self.state.rollbacks})

    def _maybe_validate(self, final: bool) -> dict[str, float] | None:
        step = self.state.step
        if self.validator is None or not self.validator.due(step, final):
            return None
        started = time.perf_counter()
        result = self.validator.run(self.eval_model(), step)
        self.state.last_validation = {"step": step, **result}
        self.observer.scalars(step, {f"Metrics/{k}": result[k] for k in
                                     ("LR_PSNR", "LR_SSIM", "KI_PSNR", "KI_SSIM", "LR_PSNR_RGB", "LR_SSIM_RGB",
                                      "KI_PSNR_RGB", "KI_SSIM_RGB")})
        self.observer.scalars(step, {f"Quality/{k}": result[k] for k in ("LR_Quality", "KI_Quality", "Improvement")})
        self.observer.info(f"validation at step {step}: KI_PSNR {result['KI_PSNR']:.3f} dB (bicubic "
                           f"{result['LR_PSNR']:.3f}, {result['Improvement']:+.3f}), KI_SSIM {result['KI_SSIM']:.4f} "
                           f"on {int(result['sequences'])} sequences / {int(result['frames'])} frames "
                           f"({time.perf_counter() - started:.1f} s)")
        if self.schedule.observe_validation(result["KI_PSNR"]):
            self.adaptive.on_plateau()
            self.observer.warn(f"plateau: KI_PSNR has not improved by {self.cfg.plateau.threshold_db} dB for "
                               f"{self.cfg.plateau.patience} validations; LR x{self.cfg.plateau.factor} "
                               f"(now {self.schedule.lr(step):.3g}), adaptive weights and clip statistics reset")
        return result

    def _checkpoint_event(self, path: Path | None) -> None:
        """After a collective save (every rank is here): log the event and check the replicas agree."""
        if path is None:
            return
        kinds = ("rolling", "best", "regular", "final", "emergency")
        kind = path.name.split("-")[0]
        self.observer.scalars(self.state.step, {"Events/Checkpoints": kinds.index(kind) + 1})
        self._verify_replicas()

    def _verify_replicas(self) -> None:
        """DDP keeps every rank's weights identical; a silent desync (a bug, a bad node) would make
        checkpoints reflect rank 0 alone. Compare per-tensor sums of all ranks, exactly."""
        acc = self.accelerator
        if acc.num_processes == 1:
            return
        fingerprint = torch.stack([p.detach().double().sum() for p in acc.unwrap_model(self.model).parameters()])
        table = acc.gather(fingerprint.unsqueeze(0))
        if bool((table == table[0]).all()):
            self.observer.info(f"weights identical on all {acc.num_processes} ranks at step {self.state.step} "
                               f"(fingerprint {float(table[0].sum()):.12g})")
        else:
            differing = [r for r in range(table.shape[0]) if not torch.equal(table[r], table[0])]
            self.observer.warn(f"weights differ between ranks at step {self.state.step} (ranks {differing} vs 0); "
                               "the gradients are not being synchronised", all_ranks=False)

    def _stop_for_signal(self) -> int:
        name = self.signals.received if self.signals and self.signals.received else "a signal on another rank"
        self.observer.warn(f"stop requested ({name}): writing an emergency checkpoint at step {self.state.step}",
                           all_ranks=False)
        code = self.signals.exit_code if self.signals and self.signals.received else 143
        try:
            path = self.checkpoints.save(self.state.step, ["emergency"])
        except CheckpointWriteError as err:
            self.observer.error(f"emergency {err}")
            return 1
        self._checkpoint_event(path)
        self.observer.warn(f"emergency checkpoint written: {path}; continue with --resume", all_ranks=False)
        return code

    def _lost_a_rank(self, err: BaseException) -> bool:
        return self.accelerator.num_processes > 1 and lost_a_rank(err)

    def _crash_checkpoint(self, err: BaseException) -> None:
        """On an uncaught error, rank 0 saves what it holds without waiting for other ranks (they may be
        gone). Not after a forced second Ctrl-C (the user asked to leave now), nor after a TrainingError
        (a diverged run whose state would only diverge again)."""
        if isinstance(err, (KeyboardInterrupt, TrainingError)):
            self.observer.error(f"stopped: {err}")
            return
        if self._lost_a_rank(err):  # not a bug here: the traceback would only point at the next collective
            self.observer.error(f"lost contact with another rank at step {self.state.step}: {peer_gone_reason(err)}")
        else:
            self.observer.error(f"training failed at step {self.state.step}: {type(err).__name__}: {err}\n"
                                + "".join(traceback.format_exception(err)))
        try:
            path = self.checkpoints.save(self.state.step, ["emergency"], collective=False)
            if self.accelerator.is_main_process:
                self.observer.error(f"emergency checkpoint written: {path}")
        except Exception as save_err:  # never hide the original error behind a failed save
            self.observer.error(f"emergency checkpoint failed: {type(save_err).__name__}: {save_err}")

    # ------------------------------------------------------------------------------------------------
    # Logging

    def _status(self, result: StepResult) -> None:
        step = self.state.step
        if step % self.cfg.train.status_every == 0 or step == self.cfg.train.total_steps:
            self.observer.status(self._status_fields(result))

    def _log(self, meter: IntervalMeter, result: StepResult) -> None:
        state, cfg, obs = self.state, self.cfg, self.observer
        step = state.step
        if step % cfg.train.log_every != 0 and step != 1:
            obs.progress(step)
            return
        elapsed = time.perf_counter() - meter.started
        s_per_iter = elapsed / max(1, meter.steps)
        weights = self.adaptive.weights
        scalars = {
            "Loss/L1": meter.mean("l1"), "Loss/MS": meter.mean("ms"), "Loss/Grad": meter.mean("grad"),
            "Loss/Total": meter.mean("total"),
            "Training/LearningRate": result.lr,
            "Adaptive/L1_Weight": weights.l1, "Adaptive/MS_Weight": weights.ms, "Adaptive/Grad_Weight": weights.grad,
            "Adaptive/GradientClip": self.adaptive.clip_threshold,
            "Adaptive/AggressiveMode": float(self.adaptive.aggressive),
            "Adaptive/Sharpness": meter.mean("sharpness"),
            "Gradients/TotalNorm": meter.mean("grad_norm"),
            "Activity/Backward_Trunk_Avg": meter.mean("backward_activity"),
            "Activity/Forward_Trunk_Avg": meter.mean("forward_activity"),
            **self._alignment_scalars(meter),
            "LR_Schedule/Phase": float(result.phase),
            "System/Speed_s_per_iter": s_per_iter,
            "System/Clips_per_s": self.batches.global_batch_size / s_per_iter,
            "System/Data_Wait_Fraction": meter.data_wait_s / max(elapsed, 1e-9),
            "Data/Skipped_Samples": float(state.skipped_samples),
            "Data/Bad_Shards": float(state.bad_shards),
        }
        scalars.update(self._telemetry_scalars())
        obs.scalars(step, scalars)
        obs.info(f"step {step}/{cfg.train.total_steps}  loss {scalars['Loss/Total']:.5f} (L1 {scalars['Loss/L1']:.5f})  "
                 f"lr {scalars['Training/LearningRate']:.3g}  {s_per_iter:.3f} s/iter  "
                 f"{scalars['System/Clips_per_s']:.1f} clips/s  data wait {100 * scalars['System/Data_Wait_Fraction']:.0f}%")
        obs.progress(step, f"loss {scalars['Loss/Total']:.4f}")
        self._last_interval = {"s_per_iter": s_per_iter, "clips_per_s": scalars["System/Clips_per_s"],
                               "data_wait": scalars["System/Data_Wait_Fraction"], "total": scalars["Loss/Total"]}
        meter.reset()

    def _alignment_scalars(self, meter: IntervalMeter) -> dict[str, float]:
        """The explicit alignment's figures, and a warning when its offsets run away (EDVR's authors see
        offsets beyond 50-100 px as the sign of a diverging alignment that ruins the model)."""
        if not self.aligns:
            return {}
        scalars = {"Loss/Photometric": meter.mean("photometric"),
                   "Training/Photometric_Weight": meter.mean("photometric_weight"),
                   "Activity/Flow_Magnitude": meter.mean("flow_magnitude")}
        if self.cfg.model.alignment == "flow_deform":
            offset_mean = scalars["Activity/Offset_Mean"] = meter.mean("offset_mean")
            limit = self.cfg.alignment.offset_warn_px
            exploded = offset_mean > limit
            if exploded and not self._offsets_exploded:
                self.observer.warn(f"step {self.state.step}: mean deformable offset {offset_mean:.1f} LR px exceeds "
                                   f"alignment.offset_warn_px={limit:g}: the alignment is diverging; lower "
                                   "alignment.lr_factor or optim.lr_peak (or resume from an earlier checkpoint)",
                                   all_ranks=False)
            self._offsets_exploded = exploded
        return scalars

    def _telemetry_scalars(self) -> dict[str, float]:
        """Per-rank GPU figures gathered to rank 0 (a collective on every rank; nothing without a GPU)."""
        if self.accelerator.device.type != "cuda":
            return {}
        reading = self.telemetry.read()
        local = torch.tensor([reading.get(k, float("nan")) for k in TELEMETRY_KEYS], device=self.accelerator.device)
        table = self.accelerator.gather(local.unsqueeze(0)).cpu().tolist()
        out = {}
        for rank, row in enumerate(table):
            prefix = "System/" if rank == 0 else f"System/Rank{rank}_"
            out.update({prefix + k: v for k, v in zip(TELEMETRY_KEYS, row) if v == v})
        self._telemetry_text = ", ".join(f"{k} {v:.1f}" for k, v in zip(TELEMETRY_KEYS, table[0]) if v == v)
        return out

    def _status_fields(self, result: StepResult) -> dict[str, Any]:
        state, cfg = self.state, self.cfg
        last = getattr(self, "_last_interval", {})
        s_per_iter = last.get("s_per_iter", float("nan"))
        remaining = cfg.train.total_steps - state.step
        eta = remaining * s_per_iter if s_per_iter == s_per_iter else float("nan")
        weights = self.adaptive.weights
        val = state.last_validation
        return {
            "run": str(self.run_dir),
            "step": f"{state.step} / {cfg.train.total_steps}",
            "phase": ("warm-up", "cosine", "plateau-reduced")[result.phase],
            "loss (last step)": f"total {result.stats.total:.5f}  L1 {result.stats.l1:.5f}  "
                                f"MS {result.stats.ms:.5f}  Grad {result.stats.grad:.5f}",
            "loss weights": f"L1 {weights.l1:.3f}  MS {weights.ms:.3f}  Grad {weights.grad:.3f}",
            "learning rate": f"{result.lr:.4g}",
            "gradient clip": f"{self.adaptive.clip_threshold:.4g}",
            "aggressive mode": "on" if self.adaptive.aggressive else "off",
            "speed": f"{s_per_iter:.3f} s/iter, {last.get('clips_per_s', float('nan')):.1f} clips/s, "
                     f"data wait {100 * last.get('data_wait', float('nan')):.0f}%",
            "ETA": _format_duration(eta),
            "VRAM": getattr(self, "_telemetry_text", "") or "n/a (CPU)",
            "last validation": (f"step {val['step']}: KI_PSNR {val['KI_PSNR']:.3f} dB, bicubic {val['LR_PSNR']:.3f} dB"
                                if val else "none yet"),
            "best so far": (f"KI_PSNR {self.checkpoints.best_metric:.3f} dB at step {self.checkpoints.best_step}"
                            if self.checkpoints.best_step >= 0 else "none yet"),
            "last checkpoint": self.checkpoints.last_saved or "none yet",
            "non-finite steps": f"{state.nonfinite_total} (rollbacks {state.rollbacks})",
            "data skipped": f"{state.skipped_samples} corrupt samples, {state.bad_shards} bad shards",
        }

    def _log_start(self) -> None:
        acc, obs, cfg = self.accelerator, self.observer, self.cfg
        obs.info(f"vsrpp-dist {__version__}, torch {torch.__version__}, run {self.run_dir} ({self.start.mode}"
                 + (f", old run moved to {self.start.moved_to}" if self.start.moved_to else "") + ")")
        obs.info(f"{acc.num_processes} process(es), device {acc.device}"
                 + (f" ({torch.get_num_threads()} threads)" if acc.device.type == "cpu" else "")
                 + f", {self.device_plan.profile} profile, "
                 f"mixed precision {self.device_plan.mixed_precision}"
                 + (f", {self.device_plan.gpu_name} {self.device_plan.gpu_memory_bytes / 2**30:.1f} GB"
                    if self.device_plan.gpu_name else "")
                 + (f", memory capped at {self.device_plan.memory_fraction:.3f} of the GPU"
                    if self.device_plan.memory_fraction else ""))
        obs.info("config:\n" + dump_config(cfg).rstrip())

    def _log_plan(self, activation_checkpointing: bool) -> None:
        plan = self.batches
        self.observer.info(f"batch: {plan.batch_size_per_gpu} per rank x {plan.grad_accum_steps} accumulation x "
                           f"{plan.world_size} ranks = {plan.global_batch_size} clips per step; "
                           f"activation checkpointing {'on' if activation_checkpointing else 'off'}")
        if not plan.exact:
            self.observer.warn(f"train.global_batch_size={plan.requested_global} is not reachable with "
                               f"{plan.batch_size_per_gpu} per rank on {plan.world_size} ranks; using "
                               f"{plan.global_batch_size}")

    # ------------------------------------------------------------------------------------------------
    # Start-up helpers

    def _prepare_run_dir(self, request: StartRequest, interactive: bool | None):
        acc = self.accelerator
        decision = decide_start(self.run_dir, request, num_processes=acc.num_processes, interactive=interactive)
        acc.wait_for_everyone()  # everyone has looked before rank 0 changes anything
        moved = None
        if acc.is_main_process:
            if decision.mode == "fresh":
                moved = move_aside(self.run_dir)
            check_writable(self.run_dir)
            self._write_config()
        acc.wait_for_everyone()
        return dataclasses.replace(decision, moved_to=moved)

    def _write_config(self) -> None:
        from ..files import atomic_write_text

        path = self.run_dir / "config.yaml"
        text = dump_config(self.cfg)
        if path.exists() and path.read_text() != text:
            previous = path.with_name(f"config.previous-{time.strftime('%Y%m%d-%H%M%S')}.yaml")
            os.replace(path, previous)  # kept, not overwritten: the old run's settings stay readable
        atomic_write_text(path, text)

    def _param_groups(self, model: torch.nn.Module) -> tuple[list[dict], list[float]]:
        """One optimizer group, or two when the model aligns explicitly: the flow network and the
        deformable offsets learn at `alignment.lr_factor` x the LR. Freezing them is a factor of 0, never
        requires_grad=False mid-run (DDP would then wait forever for gradients that never come)."""
        aligned = alignment_parameters(model)
        if not aligned:
            return [{"params": list(model.parameters())}], [1.0]
        ids = {id(p) for p in aligned}
        rest = [p for p in model.parameters() if id(p) not in ids]
        return [{"params": rest}, {"params": aligned}], [1.0, self.cfg.alignment.lr_factor]

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

    def _check_compatible(self, meta: dict) -> None:
        saved = architecture_of(meta.get("config", {}).get("model", {}))
        now = architecture_of(config_to_dict(self.cfg)["model"])
        if saved["alignment"] != now["alignment"]:
            raise CheckpointError(f"model.alignment is {now['alignment']!r} but the checkpoint was trained with "
                                  f"{saved['alignment']!r}; set model.alignment={saved['alignment']} to continue it")
        for key, value in now.items():
            if saved.get(key) != value:
                raise CheckpointError(f"model.{key} is {value!r} but the checkpoint was trained with "
                                      f"{saved.get(key)!r}")

    def _resume(self, request: str) -> None:
        info = self.checkpoints.load(request, self._check_compatible)
        saved = info.meta
        for key, now in (("world_size", self.accelerator.num_processes), ("num_workers", self.cfg.data.num_workers),
                         ("batch_size_per_gpu", self.batches.batch_size_per_gpu),
                         ("grad_accum_steps", self.batches.grad_accum_steps)):
            if key in saved and saved[key] != now:
                self.observer.warn(f"resume: {key} was {saved[key]}, now {now}; the data stream and step "
                                   "contents will differ from an uninterrupted run")
        self.state.world_size = self.accelerator.num_processes
        self.state.num_workers = self.cfg.data.num_workers
        self.state.batch_size_per_gpu = self.batches.batch_size_per_gpu
        self.state.grad_accum_steps = self.batches.grad_accum_steps
        self.checkpoints.last_saved = info.path.name
        self.observer.info(f"resumed from {info.path} at step {self.state.step} "
                           f"(batch {self.state.batches_consumed} of the stream)")

    def _describe(self) -> dict:
        return {"config": config_to_dict(self.cfg), "world_size": self.accelerator.num_processes,
                "num_workers": self.cfg.data.num_workers, "batch_size_per_gpu": self.batches.batch_size_per_gpu,
                "grad_accum_steps": self.batches.grad_accum_steps, "batches_consumed": self.state.batches_consumed,
                "torch": torch.__version__, "vsrpp_dist": __version__}

    def eval_model(self) -> torch.nn.Module:
        """The weights validation and export use: the EMA when enabled, else the live model."""
        return self.ema.module if self.ema.enabled else self.accelerator.unwrap_model(self.model)

    def export_weights(self) -> dict:
        model = self.eval_model()
        model = getattr(model, "_orig_mod", model)  # torch.compile wrapper
        return {"format": WEIGHTS_FORMAT, "version": 1, "model_config": config_to_dict(self.cfg)["model"],
                "state_dict": {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()},
                "ema": self.ema.enabled, "step": self.state.step}

    def close(self) -> None:
        self.activity.remove()
        self.observer.close()


def _format_duration(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):
        return "n/a"
    seconds = int(seconds)
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m {seconds % 60:02d}s"
