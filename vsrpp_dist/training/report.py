"""What a run tells its user: the TensorBoard scalars, the log lines and training_status.txt, built
here from the components' figures and handed to the Observer (which alone writes, on rank 0).

The tags keep the names of the system this trainer grew from ("LR_PSNR" is the bicubic baseline's
PSNR there, "Training/LearningRate" the learning rate), so existing dashboards keep working.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..config import Config, dump_config
from .checkpoint import KIND_ORDER  # Events/Checkpoints: a kind's index + 1
from .state import IntervalMeter, StepResult, TrainState
from .telemetry import TELEMETRY_KEYS, GpuTelemetry
from .validation import TEMPORAL_COLUMNS

PHASE_NAMES = ("warm-up", "cosine", "plateau-reduced")


def log_start(observer, cfg: Config, accelerator, device_plan, start, run_dir: Path) -> None:
    """The run's first lines: versions, the start decision, the processes and device, the whole config."""
    observer.info(f"vsrpp-dist {__version__}, torch {torch.__version__}, run {run_dir} ({start.mode}"
                  + (f", old run moved to {start.moved_to}" if start.moved_to else "") + ")")
    observer.info(f"{accelerator.num_processes} process(es), device {accelerator.device}"
                  + (f" ({torch.get_num_threads()} threads)" if accelerator.device.type == "cpu" else "")
                  + f", {device_plan.profile} profile, mixed precision {device_plan.mixed_precision}"
                  + (f", {device_plan.gpu_name} {device_plan.gpu_memory_bytes / 2**30:.1f} GB"
                     if device_plan.gpu_name else "")
                  + (f", memory capped at {device_plan.memory_fraction:.3f} of the GPU"
                     if device_plan.memory_fraction else ""))
    observer.info("config:\n" + dump_config(cfg).rstrip())


class Report:
    """The per-step reporting of one run. Everything it reads, it reads from the components that own
    it; the one collective it runs (the GPU telemetry gather, on every rank) happens in `interval`."""

    def __init__(self, cfg: Config, observer, accelerator, *, run_dir: Path, state: TrainState, batches, adaptive,
                 checkpoints) -> None:
        self.cfg = cfg
        self.observer = observer
        self.accelerator = accelerator
        self.run_dir = run_dir
        self.state = state
        self.batches = batches
        self.adaptive = adaptive
        self.checkpoints = checkpoints
        self.telemetry = GpuTelemetry(accelerator.device)
        self.aligns = cfg.model.explicit_alignment
        self._offsets_exploded = False  # the offset warning fires once per crossing of the limit
        self._last_interval: dict[str, float] = {}
        self._telemetry_text = ""

    # -- every step -----------------------------------------------------------------------------------

    def interval(self, meter: IntervalMeter, result: StepResult) -> None:
        """At every train.log_every-th step (and step 1): the interval's means as scalars and a log line;
        in between only the progress bar moves."""
        cfg, obs, step = self.cfg, self.observer, self.state.step
        if step % cfg.train.log_every != 0 and step != 1:
            obs.progress(step)
            return
        elapsed = time.perf_counter() - meter.started
        s_per_iter = elapsed / max(1, meter.steps)
        weights = self.adaptive.weights
        scalars = {
            "Loss/L1": meter.mean("l1"), "Loss/MS": meter.mean("ms"), "Loss/Grad": meter.mean("grad"),
            "Loss/Total": meter.mean("total"),
            "Training/LearningRate": result.learning_rate,
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
            "Data/Skipped_Samples": float(self.state.skipped_samples),
            "Data/Bad_Shards": float(self.state.bad_shards),
            **self._telemetry_scalars(),
        }
        obs.scalars(step, scalars)
        obs.info(f"step {step}/{cfg.train.total_steps}  loss {scalars['Loss/Total']:.5f} (L1 {scalars['Loss/L1']:.5f})  "
                 f"lr {result.learning_rate:.3g}  {s_per_iter:.3f} s/iter  "
                 f"{scalars['System/Clips_per_s']:.1f} clips/s  data wait {100 * scalars['System/Data_Wait_Fraction']:.0f}%")
        obs.progress(step, f"loss {scalars['Loss/Total']:.4f}")
        self._last_interval = {"s_per_iter": s_per_iter, "clips_per_s": scalars["System/Clips_per_s"],
                               "data_wait": scalars["System/Data_Wait_Fraction"]}
        meter.reset()

    def status(self, result: StepResult) -> None:
        """training_status.txt, every train.status_every steps and at the end."""
        step = self.state.step
        if step % self.cfg.train.status_every == 0 or step == self.cfg.train.total_steps:
            self.observer.status(self._status_fields(result))

    def _alignment_scalars(self, meter: IntervalMeter) -> dict[str, float]:
        """The explicit alignment's figures, and a warning when its offsets run away (EDVR's authors see
        offsets beyond 50-100 px as the sign of a diverging alignment that ruins the model)."""
        if not self.aligns:
            return {}
        scalars = {"Loss/Photometric": meter.mean("photometric"),
                   "Training/Photometric_Weight": meter.mean("photometric_weight"),
                   "Activity/Flow_Magnitude": meter.mean("flow_magnitude")}
        if self.cfg.model.deformable_alignment:
            offset_mean = scalars["Activity/Offset_Mean"] = meter.mean("offset_mean")
            limit = self.cfg.alignment_training.offset_warn_px
            exploded = offset_mean > limit
            if exploded and not self._offsets_exploded:
                self.observer.warn(f"step {self.state.step}: mean deformable offset {offset_mean:.1f} LR px exceeds "
                                   f"alignment_training.offset_warn_px={limit:g}: the alignment is diverging; lower "
                                   "alignment_training.lr_factor or optim.lr_peak (or resume from an earlier "
                                   "checkpoint)",
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
        state, cfg, last = self.state, self.cfg, self._last_interval
        s_per_iter = last.get("s_per_iter", float("nan"))
        eta = (cfg.train.total_steps - state.step) * s_per_iter
        weights = self.adaptive.weights
        val = state.last_validation
        best = self.checkpoints
        return {
            "run": str(self.run_dir),
            "step": f"{state.step} / {cfg.train.total_steps}",
            "phase": PHASE_NAMES[result.phase],
            "loss (last step)": f"total {result.stats.total:.5f}  L1 {result.stats.l1:.5f}  "
                                f"MS {result.stats.ms:.5f}  Grad {result.stats.grad:.5f}",
            "loss weights": f"L1 {weights.l1:.3f}  MS {weights.ms:.3f}  Grad {weights.grad:.3f}",
            "learning rate": f"{result.learning_rate:.4g}",
            "gradient clip": f"{self.adaptive.clip_threshold:.4g}",
            "aggressive mode": "on" if self.adaptive.aggressive else "off",
            "speed": f"{s_per_iter:.3f} s/iter, {last.get('clips_per_s', float('nan')):.1f} clips/s, "
                     f"data wait {100 * last.get('data_wait', float('nan')):.0f}%",
            "ETA": format_duration(eta),
            "VRAM": self._telemetry_text or "n/a (CPU)",
            "last validation": (f"step {val['step']}: KI_PSNR {val['KI_PSNR']:.3f} dB, bicubic {val['LR_PSNR']:.3f} dB"
                                if val else "none yet"),
            "best so far": (f"KI_PSNR {best.best_metric:.3f} dB at step {best.best_step}"
                            if best.best_step >= 0 else "none yet"),
            "last checkpoint": best.last_saved or "none yet",
            "non-finite steps": f"{state.nonfinite_total} (rollbacks {state.rollbacks})",
            "data skipped": f"{state.skipped_samples} corrupt samples, {state.bad_shards} bad shards",
        }

    # -- events ---------------------------------------------------------------------------------------

    def validation(self, result: dict[str, float], seconds: float) -> None:
        step = self.state.step
        self.observer.scalars(step, {f"Metrics/{k}": result[k] for k in
                                     ("LR_PSNR", "LR_SSIM", "KI_PSNR", "KI_SSIM", "LR_PSNR_RGB", "LR_SSIM_RGB",
                                      "KI_PSNR_RGB", "KI_SSIM_RGB")})
        self.observer.scalars(step, {f"Quality/{k}": result[k] for k in ("LR_Quality", "KI_Quality", "Improvement")})
        # temporal consistency: absent when no validation sequence has two frames (tOF: validation.tof)
        self.observer.scalars(step, {f"Temporal/{k}": result[k] for k in TEMPORAL_COLUMNS if k in result})
        self.observer.info(f"validation at step {step}: KI_PSNR {result['KI_PSNR']:.3f} dB (bicubic "
                           f"{result['LR_PSNR']:.3f}, {result['Improvement']:+.3f}), KI_SSIM {result['KI_SSIM']:.4f} "
                           f"on {int(result['sequences'])} sequences / {int(result['frames'])} frames ({seconds:.1f} s)")

    def checkpoint(self, path: Path) -> None:
        self.observer.scalars(self.state.step, {"Events/Checkpoints": KIND_ORDER.index(path.name.split("-")[0]) + 1})

    def finished(self) -> None:
        state = self.state
        self.observer.info(f"finished: step {state.step}, {state.clips_seen:,} clips, "
                           f"{state.train_seconds / 3600:.2f} h ({state.train_seconds:.1f} s) of training")


def format_duration(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):
        return "n/a"
    seconds = int(seconds)
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m {seconds % 60:02d}s"
