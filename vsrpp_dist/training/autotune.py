"""Auto-tune before training: which batch size and memory settings fit this GPU, and which is fastest.

Every rank tries the same candidate settings in the same order (`candidate_list`), each with a few real
forward/backward/optimizer steps at the configured patch size (`CudaStepProbe`), and measures the
allocator's peak *reserved* memory (what has to fit, cache included) and the seconds per step. A
candidate fits when its peak plus a margin for what the trial does not hold (DDP's gradient buckets,
the EMA copy) stays at most `autotune.vram_cap` of the GPU's usable memory (of the capped memory when a
memory fraction is set). Running out of memory during a trial only means "does not fit".

All ranks reach the same decision because every measurement goes through one element-wise MAX
all-reduce per trial (`Ranks.all_max`): a candidate fits only if it fits on every rank (MIN of the fits,
done as MAX of the misfits), the slowest rank's s/iter sets the pace, and the decision to go on (time
budget, pruning, early stop) is a function of these agreed values only, so every rank tries the same
candidates and stops at the same one.

The result goes to RUN/autotune.json and is reused on resume while its validity key (GPU, memory,
model, patch size, precision, world size, torch version, search settings) is unchanged.

The trainer calls `autotune(...)` once, through `shape.decide_run_shape` (which turns the choice into
the run's shape), after the Accelerator exists and the memory fraction is set, before the model is
built and `accelerator.prepare`d; it returns None where there is nothing to tune.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np
import torch

from ..config import SCALE, OptimConfig
from ..data.degradation import BicubicDegradation, Degradation
from ..data.stream import to_device
from ..errors import AutotuneError
from ..files import atomic_write_text
from ..model.loss import LossWeights
from .builder import build_optimizer, build_training_model
from .runtime import BatchPlan, DevicePlan, plan_batches
from .step import SingleProcess, TrainingStep, photometric_weight

RESULT_FILE = "autotune.json"
FORMAT_VERSION = 1
CHOICES = ("fastest", "priority")
# Three timed steps are noisy by a few per cent: under "fastest", a candidate within this fraction of
# the best clips/s counts as equally fast and the one earlier in priority order wins, so that noise
# does not trade the configured batch for another one.
SPEED_TOLERANCE = 0.02
# A trial step accumulates at most this many micro-batches: from the second on, the gradients of the
# earlier ones are held while the next forward's activations grow (the peak of accumulation); more
# micro-batches add time to every trial and nothing to the peak.
TRIAL_MICRO_BATCHES = 2
# cuDNN/cuBLAS report failed workspace allocations under their own names; they are OOMs too.
_OOM_MARKERS = ("out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED")
GB = 2**30

Log = Callable[[str], None]
Agree = Callable[[Sequence[float]], list]  # element-wise MAX over all ranks; identity in one process




# --------------------------------------------------------------------------------------------------
# Candidates


@dataclass(frozen=True)
class Candidate:
    """One setting to try. The model itself is fixed by the config; only how it is run varies."""

    batch_size_per_gpu: int
    activation_checkpointing: bool
    channels_last: bool

    def __str__(self) -> str:
        return (f"batch {self.batch_size_per_gpu}, checkpointing {'on' if self.activation_checkpointing else 'off'}, "
                f"{'channels_last' if self.channels_last else 'NCHW'}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def candidate_list(batch_size_per_gpu: int, *, global_batch_size: int, world_size: int, channels_last: bool,
                   choose: str = "fastest", max_candidates: int = 8, on_gpu: bool = True) -> list[Candidate]:
    """The settings to try, highest priority first, at most `max_candidates` (B = the configured batch,
    A = the accumulation that keeps the configured global batch, layout = train.channels_last):

    1. (B, checkpointing off): what was configured, with no recomputation.
    2. (B, checkpointing on): the same batch and the same global batch; recomputing the propagation
       trunks (most of the activation memory) costs ~20 % more compute, less than a smaller batch
       usually does.
    3. fastest only, when A is even (a multiple of 4): (2B, off) ((4B, off)): a larger micro-batch with
       half (a quarter of) the accumulation keeps the same global batch and may use the GPU better.
    4. fastest only, on GPU: (B, off) in the other memory layout: NHWC is usually faster with tensor
       cores, but not for every layer mix; memory is about the same.
    5. Halving down to 1: (B/2, off), (B/2, on), (B/4, off), ...: each halving doubles the accumulation;
       the global batch stays exact for power-of-two batches (plan_batches reports when it cannot).

    Items 3 and 4 can only win on speed: under "priority" the first fitting candidate is taken and they
    could never come before it, so they are left out. When the list is longer than allowed, the last
    slot is kept for (1, on), the setting that needs the least memory: it is the last resort, and the
    error when nothing fits then names the smallest setting there is.
    """
    if isinstance(batch_size_per_gpu, bool) or not isinstance(batch_size_per_gpu, int) or batch_size_per_gpu < 1:
        raise ValueError(f"batch_size_per_gpu must be a positive integer, got {batch_size_per_gpu!r}")
    if world_size < 1:
        raise ValueError(f"world_size must be at least 1, got {world_size}")
    if choose not in CHOICES:
        raise ValueError(f"autotune.choose: {choose!r} is not one of {', '.join(CHOICES)}")
    if max_candidates < 1:
        raise ValueError(f"autotune.max_candidates must be at least 1, got {max_candidates}")
    layout = channels_last and on_gpu  # NHWC only matters to cuDNN
    b = batch_size_per_gpu
    out = [Candidate(b, False, layout), Candidate(b, True, layout)]
    if choose == "fastest":
        accum = plan_batches(global_batch_size, b, world_size).grad_accum_steps
        out += [Candidate(b * m, False, layout) for m in (2, 4) if accum % m == 0]
        if on_gpu:
            out.append(Candidate(b, False, not layout))
    smaller = b // 2
    while smaller >= 1:
        out += [Candidate(smaller, False, layout), Candidate(smaller, True, layout)]
        smaller //= 2
    if len(out) > max_candidates:
        out = out[:max_candidates] if max_candidates == 1 else out[:max_candidates - 1] + [out[-1]]
    return out


def _at_least(big: Candidate, small: Candidate) -> bool:
    """`big` runs at least as many clips per pass with no more recomputation than `small`: it needs at
    least as much memory, and (in the same layout) is at least as fast per clip. The layout is taken
    as memory-neutral. This partial order is what lets the search skip candidates without trying them."""
    return (big.batch_size_per_gpu >= small.batch_size_per_gpu
            and (not big.activation_checkpointing or small.activation_checkpointing))


# --------------------------------------------------------------------------------------------------
# Trials and the choice


@dataclass(frozen=True)
class Trial:
    """What one candidate did. From a probe, `fits` means the steps ran without running out of memory;
    after `run_autotune` it also means peak + margin stayed under the cap, on every rank (and
    peak_bytes / s_per_iter are then the largest over the ranks)."""

    candidate: Candidate
    fits: bool
    peak_bytes: int = 0  # torch.cuda.max_memory_reserved over the trial (at the failure for an OOM)
    s_per_iter: float = 0.0  # seconds per micro-batch of an optimizer step (0 when it did not run)
    error: str | None = None  # why it does not fit: the OOM message or the cap it exceeded
    margin_bytes: int = 0  # memory the real run needs beyond the trial's (DDP buckets, EMA)

    @property
    def clips_per_s(self) -> float:
        """Clips per second on one rank (times the world size for the whole run)."""
        return self.candidate.batch_size_per_gpu / self.s_per_iter if self.s_per_iter > 0 else 0.0

    @property
    def needed_bytes(self) -> int:
        return self.peak_bytes + self.margin_bytes


class Probe(Protocol):
    def __call__(self, candidate: Candidate) -> Trial:
        """Run a few real steps with `candidate`; an OOM is returned as Trial(fits=False, error=...)
        (or raised as torch.OutOfMemoryError: run_autotune treats both alike)."""


def select(trials: Sequence[Trial], rule: str, *, tolerance: float = SPEED_TOLERANCE) -> Trial | None:
    """The chosen trial among those that fit, or None. `trials` are in priority order. "priority": the
    first that fits. "fastest": the highest clips/s; within `tolerance` of it, the earliest wins."""
    if rule not in CHOICES:
        raise ValueError(f"autotune.choose: {rule!r} is not one of {', '.join(CHOICES)}")
    fitting = [t for t in trials if t.fits]
    if not fitting:
        return None
    if rule == "priority":
        return fitting[0]
    best = max(t.clips_per_s for t in fitting)
    return next(t for t in fitting if t.clips_per_s >= best * (1 - tolerance))


@dataclass(frozen=True)
class AutotuneResult:
    chosen: Candidate | None
    candidates: tuple[Candidate, ...]  # the whole list, in priority order
    trials: tuple[Trial, ...]  # those tried, in order, with the values all ranks agreed on
    not_tried: tuple[tuple[Candidate, str], ...]  # the others, each with the reason
    choose: str
    cap_bytes: int  # the smallest cap of any rank
    seconds: float
    stop_reason: str
    world_size: int = 1
    key: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    batch_plan: BatchPlan | None = None  # accumulation for the chosen batch (set by `autotune`)
    source: str = "measured"  # or "cache"

    @property
    def chosen_trial(self) -> Trial | None:
        return next((t for t in self.trials if t.candidate == self.chosen), None)

    def to_json(self) -> dict[str, Any]:
        trials = {t.candidate: t for t in self.trials}
        reasons = dict(self.not_tried)
        entries = []
        for index, cand in enumerate(self.candidates):
            entry: dict[str, Any] = {"index": index, "settings": cand.to_dict()}
            if cand in trials:
                t = trials[cand]
                entry.update(status="fits" if t.fits else "does not fit", fits=t.fits, peak_bytes=t.peak_bytes,
                             peak_gb=round(t.peak_bytes / GB, 3), margin_bytes=t.margin_bytes,
                             margin_gb=round(t.margin_bytes / GB, 3),
                             s_per_iter=t.s_per_iter if t.fits else None,
                             clips_per_s=round(t.clips_per_s * self.world_size, 3) if t.fits else None,
                             error=t.error)
            else:
                entry.update(status="not tried", fits=None, reason=reasons.get(cand, ""))
            entries.append(entry)
        plan = self.batch_plan
        return {
            "version": FORMAT_VERSION,
            "chosen": self.chosen.to_dict() if self.chosen else None,
            "chosen_index": self.candidates.index(self.chosen) if self.chosen else None,
            "choose": self.choose,
            "batch_plan": None if plan is None else {
                "batch_size_per_gpu": plan.batch_size_per_gpu, "grad_accum_steps": plan.grad_accum_steps,
                "world_size": plan.world_size, "global_batch_size": plan.global_batch_size,
                "requested_global_batch_size": plan.requested_global, "exact": plan.exact},
            "cap_bytes": self.cap_bytes,
            "cap_gb": round(self.cap_bytes / GB, 3),
            "world_size": self.world_size,
            "clips_per_s_note": "clips/s of all ranks together; s_per_iter and peak are the largest over the ranks",
            "seconds": round(self.seconds, 2),
            "stop_reason": self.stop_reason,
            "key": dict(self.key),
            "candidates": entries,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AutotuneResult:
        candidates, trials, not_tried = [], [], []
        for entry in data["candidates"]:
            cand = Candidate(**entry["settings"])
            candidates.append(cand)
            if entry["status"] == "not tried":
                not_tried.append((cand, entry.get("reason", "")))
            else:
                trials.append(Trial(cand, bool(entry["fits"]), int(entry["peak_bytes"]),
                                    float(entry.get("s_per_iter") or 0.0), entry.get("error"),
                                    int(entry.get("margin_bytes", 0))))
        plan = data.get("batch_plan")
        return cls(
            chosen=Candidate(**data["chosen"]) if data.get("chosen") else None,
            candidates=tuple(candidates), trials=tuple(trials), not_tried=tuple(not_tried),
            choose=data["choose"], cap_bytes=int(data["cap_bytes"]), seconds=float(data["seconds"]),
            stop_reason=data.get("stop_reason", ""), world_size=int(data.get("world_size", 1)),
            key=data.get("key", {}),
            batch_plan=None if plan is None else BatchPlan(plan["batch_size_per_gpu"], plan["grad_accum_steps"],
                                                           plan["world_size"], plan["requested_global_batch_size"]),
        )


# --------------------------------------------------------------------------------------------------
# Agreement across ranks


def single_process_max(values: Sequence[float]) -> list[float]:
    return [float(v) for v in values]


def _gather_one(obj: Any) -> list:
    return [obj]


@dataclass(frozen=True)
class Ranks:
    """The two collectives auto-tune needs, so that the search runs the same with one process, with
    Accelerate, or in tests. Every rank must make the same calls in the same order."""

    world_size: int = 1
    is_main: bool = True
    all_max: Agree = single_process_max  # element-wise MAX over ranks (MIN is -MAX(-x))
    all_gather: Callable[[Any], list] = _gather_one  # one picklable object from each rank, in rank order

    @classmethod
    def from_accelerator(cls, accelerator) -> Ranks:
        """Accelerate's `reduce` offers "sum", "mean" and "max" (no "min", hence the negations);
        float64 keeps byte counts exact. With one process both calls are the identity."""
        from accelerate.utils import gather_object

        def all_max(values: Sequence[float]) -> list[float]:
            local = torch.tensor([float(v) for v in values], dtype=torch.float64, device=accelerator.device)
            return accelerator.reduce(local, reduction="max").tolist()

        def all_gather(obj: Any) -> list:
            return list(gather_object([obj]))

        return cls(accelerator.num_processes, accelerator.is_main_process, all_max, all_gather)


def _fingerprint(*parts: Any) -> float:
    """A 48-bit number (exact in float64) that is equal on two ranks when `parts` are."""
    digest = hashlib.sha256(repr(parts).encode()).hexdigest()
    return float(int(digest[:12], 16))


# --------------------------------------------------------------------------------------------------
# The search


_FITS, _MISFIT, _FAILED = 0, 1, 2


def is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and any(marker in str(err) for marker in _OOM_MARKERS))


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:300]}"


def free_memory() -> None:
    """What an OOM leaves behind: tensors held by reference cycles, and the allocator's cache."""
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def _gb(n: float) -> str:
    return f"{n / GB:.2f} GB"


def run_autotune(candidates: Sequence[Candidate], probe: Probe, *, cap_bytes: int, time_budget_s: float,
                 choose: str, agree: Agree = single_process_max, clock: Callable[[], float] = time.monotonic,
                 log: Log = print, world_size: int = 1) -> AutotuneResult:
    """Try `candidates` in order on every rank and choose one; raises AutotuneError when none fits.

    Skipped without trying (the same on every rank, from agreed results only):
    - a candidate needing at least the memory of one that did not fit;
    - under "fastest", one that cannot be faster than one that fits (no larger batch, no less
      recomputation, same layout); under "priority", everything after the first fit;
    - once the time spent plus the longest trial so far would pass `time_budget_s`, all the rest (the
      first candidate is always tried). Predicting the next trial's end, rather than only checking its
      start, is what keeps the whole search inside the budget.
    """
    if choose not in CHOICES:
        raise ValueError(f"autotune.choose: {choose!r} is not one of {', '.join(CHOICES)}")
    candidates = tuple(candidates)
    if not candidates:
        raise ValueError("run_autotune needs at least one candidate")
    if len(set(candidates)) != len(candidates):
        raise ValueError("run_autotune: the candidates must be distinct")
    start = clock()
    # Diverging lists would make ranks call the all-reduce a different number of times: a hang.
    search = _fingerprint(candidates, choose, time_budget_s)
    highest, neg_lowest, neg_cap = agree([search, -search, -float(cap_bytes)])
    if highest != -neg_lowest:
        raise AutotuneError("auto-tune: the ranks have different candidate lists or settings (different configs?)")
    common_cap = int(-neg_cap)

    trials: list[Trial] = []
    not_tried: list[tuple[Candidate, str]] = []
    elapsed = longest = 0.0
    stop_reason = ""
    for cand in candidates:
        reason = _skip_reason(cand, trials, choose)
        if reason is None and stop_reason:
            reason = stop_reason
        if reason is None and trials and elapsed + longest > time_budget_s:
            stop_reason = reason = (f"time budget: {elapsed:.0f} s spent and a trial takes up to {longest:.0f} s "
                                    f"(autotune.time_budget_s={time_budget_s:g})")
        if reason is not None:
            not_tried.append((cand, reason))
            continue

        began = clock()
        local, failure = _try(probe, cand)
        if local.fits and local.needed_bytes > cap_bytes:
            local = dataclasses.replace(local, fits=False, error=(
                f"peak {_gb(local.peak_bytes)} + margin {_gb(local.margin_bytes)} is over the cap {_gb(cap_bytes)}"))
        status = _FAILED if failure is not None else (_FITS if local.fits else _MISFIT)
        now = clock()
        status_all, peak, margin, s_per_iter, elapsed, duration = agree(
            [status, local.peak_bytes, local.margin_bytes, local.s_per_iter, now - start, now - began])
        longest = max(longest, duration)
        if status_all == _FAILED:
            if failure is not None:
                raise failure
            raise AutotuneError(f"auto-tune: trying {cand} failed on another rank (see its log)")
        error = local.error if not local.fits else (None if status_all == _FITS else "does not fit on another rank")
        trial = Trial(cand, status_all == _FITS, int(peak), s_per_iter if status_all == _FITS else 0.0, error,
                      int(margin))
        trials.append(trial)
        log(_describe_trial(len(trials), len(candidates), trial, common_cap, world_size))
        if choose == "priority" and trial.fits:
            stop_reason = "choose=priority: an earlier candidate fits"

    chosen = select(trials, choose)
    result = AutotuneResult(chosen.candidate if chosen else None, candidates, tuple(trials), tuple(not_tried), choose,
                            common_cap, clock() - start, stop_reason or "all candidates considered", world_size)
    if chosen is None:
        raise AutotuneError(_no_fit_message(result), result)
    return result


def _skip_reason(cand: Candidate, trials: Sequence[Trial], choose: str) -> str | None:
    for t in trials:
        if not t.fits and _at_least(cand, t.candidate):
            return f"needs at least the memory of ({t.candidate}), which does not fit"
        if (choose == "fastest" and t.fits and t.candidate.channels_last == cand.channels_last
                and _at_least(t.candidate, cand)):
            return f"cannot be faster than ({t.candidate}), which fits"
    return None


def _try(probe: Probe, cand: Candidate) -> tuple[Trial, BaseException | None]:
    """The probe's trial; an OOM it raised becomes a misfit (after cleanup), any other error is kept to
    be raised after the ranks have agreed that something failed (raising first would hang the others)."""
    try:
        return probe(cand), None
    except Exception as err:  # noqa: BLE001 - sorted here, and re-raised after agreement
        if not is_oom(err):
            return Trial(cand, False, error=_one_line(err)), err
        message = _one_line(err)
    # Outside the except block: the exception's traceback, which holds the trial's tensors, is gone.
    free_memory()
    return Trial(cand, False, error=message), None


def _describe_trial(n: int, total: int, t: Trial, cap: int, world_size: int) -> str:
    margin = f" + {_gb(t.margin_bytes)} margin" if t.margin_bytes else ""
    if t.fits:
        return (f"auto-tune {n}/{total}: {t.candidate}: fits, peak {_gb(t.peak_bytes)}{margin} of {_gb(cap)}, "
                f"{t.s_per_iter:.3f} s/iter, {t.clips_per_s * world_size:.1f} clips/s")
    return f"auto-tune {n}/{total}: {t.candidate}: does not fit ({t.error})"


def _no_fit_message(result: AutotuneResult) -> str:
    tried = result.trials
    # The least memory-hungry tried: smallest batch, checkpointing on before off.
    smallest = min(tried, key=lambda t: (t.candidate.batch_size_per_gpu, not t.candidate.activation_checkpointing))
    if smallest.error and is_oom_text(smallest.error):
        how = "ran out of memory" + (f" at {_gb(smallest.peak_bytes)} reserved" if smallest.peak_bytes else "")
    else:
        how = (f"needs {_gb(smallest.needed_bytes)} ({_gb(smallest.peak_bytes)} peak reserved + "
               f"{_gb(smallest.margin_bytes)} margin)")
    budget = (f"; {len(tried)} of {len(result.candidates)} tried before the time budget ran out"
              if result.stop_reason.startswith("time budget") else "")
    return (f"auto-tune: no setting fits under the cap of {_gb(result.cap_bytes)}: the smallest tried "
            f"({smallest.candidate}) {how}{budget}; use a smaller data.lr_patch_size or model, or a larger "
            "autotune.vram_cap")


def is_oom_text(text: str) -> bool:
    return any(marker in text for marker in _OOM_MARKERS) or "OutOfMemoryError" in text


# --------------------------------------------------------------------------------------------------
# The real probe


class CudaStepProbe:
    """Real training steps with one candidate: a fresh model, the wrapping the trainer applies, AdamW,
    synthetic GT clips made into the model's input by the run's degradation, and the trainer's own step
    (step.TrainingStep: autocast in the run's precision with the alignment report, the photometric term
    at `photometric_weight`, fp16 with a GradScaler, clipping at `clip_threshold`; the input is made once
    per trial, so a realistic run's codec stage costs each trial a little of the time budget), accumulating up to
    TRIAL_MICRO_BATCHES micro-batches when the candidate's batch plan accumulates; one warm-up step,
    then `trial_steps` timed ones.

    It runs before DDP wraps the model, on each rank alone, so memory the real run needs in addition
    is added as `margin_bytes`: one fp32 copy of the parameters per entry of `extra_param_copies` (1 for
    DDP's gradient buckets when world size > 1, 1 for the EMA). torch.compile is not applied; compiled
    code usually needs less memory, so the eager figure errs on the safe side.

    Written for CUDA; on the CPU it runs the same steps and reports 0 bytes (used in tests).
    """

    def __init__(self, model_cfg, loss_weights: LossWeights, lr_patch_size: int, precision: str,
                 device: torch.device | str, trial_steps: int = 3, *, extra_param_copies: int = 0,
                 optim_cfg: OptimConfig | None = None, photometric_weight: float = 0.0,
                 clip_threshold: float = 1.0, global_batch_size: int = 0, world_size: int = 1,
                 degradation: Degradation | None = None) -> None:
        if precision not in ("bf16", "fp16", "no"):
            raise ValueError(f"precision must be bf16, fp16 or no, got {precision!r}")
        if trial_steps < 1:
            raise ValueError(f"autotune.trial_steps must be at least 1, got {trial_steps}")
        self.model_cfg = model_cfg
        self.loss_weights = loss_weights
        self.lr_patch_size = lr_patch_size
        self.precision = precision
        self.device = torch.device(device)
        self.trial_steps = trial_steps
        self.extra_param_copies = extra_param_copies
        self.optim_cfg = optim_cfg or OptimConfig()
        self.photometric_weight = photometric_weight
        self.clip_threshold = clip_threshold
        self.global_batch_size = global_batch_size
        self.world_size = world_size
        self.degradation = degradation or BicubicDegradation()
        self._param_bytes: int | None = None

    @property
    def on_cuda(self) -> bool:
        return self.device.type == "cuda"

    def __call__(self, candidate: Candidate) -> Trial:
        self._release()
        error = None
        s_per_iter = 0.0
        # Model init and synthetic data must not move the run's RNG streams: whether auto-tune ran or
        # was read from the cache, training starts from the same state.
        with torch.random.fork_rng(devices=[self.device] if self.on_cuda else []):
            try:
                s_per_iter = self._run(candidate)
            except RuntimeError as err:  # torch.OutOfMemoryError is a RuntimeError
                if not is_oom(err):
                    raise
                error = _one_line(err)
        # Here the exception, its traceback and with them the trial's tensors are gone.
        peak = torch.cuda.max_memory_reserved(self.device) if self.on_cuda else 0
        self._release()
        margin = (self._param_bytes or 0) * self.extra_param_copies
        return Trial(candidate, error is None, int(peak), s_per_iter, error, margin)

    def _release(self) -> None:
        free_memory()
        if self.on_cuda:
            torch.cuda.reset_peak_memory_stats(self.device)

    def _sync(self) -> None:
        if self.on_cuda:
            torch.cuda.synchronize(self.device)

    def _run(self, candidate: Candidate) -> float:
        model = build_training_model(self.model_cfg, device=self.device, channels_last=candidate.channels_last,
                                     activation_checkpointing=candidate.activation_checkpointing)
        if self._param_bytes is None:
            self._param_bytes = sum(p.numel() for p in model.parameters()) * 4  # fp32 master weights
        optimizer, _ = build_optimizer(model, self.optim_cfg, alignment_lr_factor=1.0, device_type=self.device.type)
        accumulation = plan_batches(self.global_batch_size, candidate.batch_size_per_gpu, self.world_size)
        micro_batches = min(TRIAL_MICRO_BATCHES, accumulation.grad_accum_steps)
        runner = SingleProcess(self.precision, self.device.type, accumulation.grad_accum_steps)
        step = TrainingStep(runner, model, runner.scaled(optimizer))
        gt_edge = self.lr_patch_size * SCALE
        gt_u8 = torch.randint(0, 256, (candidate.batch_size_per_gpu, self.model_cfg.num_frames, 3, gt_edge, gt_edge),
                              generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
        batch = self.degradation.synthetic_batch(gt_u8, np.random.default_rng(0))
        gt_btchw, lq_btchw = self.degradation.model_input(to_device(batch, self.device))

        def optimizer_step() -> None:
            step.run([(gt_btchw, lq_btchw)] * micro_batches, self.loss_weights, self.photometric_weight,
                     self.clip_threshold)

        optimizer_step()  # warm-up: cuDNN algorithm choice, optimizer state
        if not optimizer.state:
            # fp16's scaler may skip the first steps (inf gradients) and with them the creation of
            # Adam's two moments: create them, or the peak would miss 2x the parameter bytes.
            for p in model.parameters():
                p.grad = torch.zeros_like(p)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        self._sync()
        began = time.perf_counter()
        for _ in range(self.trial_steps):
            optimizer_step()
        self._sync()
        return (time.perf_counter() - began) / (self.trial_steps * micro_batches)


# --------------------------------------------------------------------------------------------------
# The cache: RUN/autotune.json


def validity_key(*, gpu_name: str, gpu_memory_bytes: int, memory_fraction: float, model_cfg, lr_patch_size: int,
                 precision: str, world_size: int, torch_version: str | None = None,
                 search: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What a stored result depends on. `gpu_name` joins the distinct names of all ranks and
    `gpu_memory_bytes` is the smallest total memory of any rank; `search` holds the settings that
    change the candidates or the choice (configured batches, cap, rule, layout, EMA)."""
    model = dataclasses.asdict(model_cfg) if dataclasses.is_dataclass(model_cfg) else dict(model_cfg)
    return {
        "gpu_name": gpu_name,
        "gpu_memory_bytes": int(gpu_memory_bytes),
        "memory_fraction": float(memory_fraction),
        "model": model,
        "lr_patch_size": int(lr_patch_size),
        "precision": precision,
        "world_size": int(world_size),
        "torch_version": torch.__version__ if torch_version is None else torch_version,
        "search": dict(search or {}),
    }


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def key_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """`gpu_name: 'A' -> 'B'` for every field that differs (nested fields dotted)."""
    a, b = _flatten(old), _flatten(new)
    return [f"{k}: {a.get(k, '(none)')!r} -> {b.get(k, '(none)')!r}" for k in sorted(set(a) | set(b))
            if a.get(k, "(none)") != b.get(k, "(none)")]


def lookup_cache(run_dir: str | Path, key: Mapping[str, Any]) -> tuple[AutotuneResult | None, str]:
    """The stored result when it is valid for `key`, else None and the reason to measure again."""
    path = Path(run_dir) / RESULT_FILE
    if not path.is_file():
        return None, f"no {RESULT_FILE} in the run yet"
    try:
        data = json.loads(path.read_text())
        if data.get("version") != FORMAT_VERSION:
            return None, f"{path} has format version {data.get('version')!r}, this code writes {FORMAT_VERSION}"
        result = AutotuneResult.from_json(data)
    except (OSError, ValueError, KeyError, TypeError) as err:
        return None, f"{path} is unreadable ({_one_line(err)})"
    changes = key_changes(result.key, key)
    if changes:
        return None, "changed since it was measured: " + "; ".join(changes)
    if result.chosen is None:
        return None, f"{path} holds a search in which nothing fitted"
    return dataclasses.replace(result, source="cache"), ""


def write_result(run_dir: str | Path, result: AutotuneResult) -> Path:
    """Atomically: a reader (or a crash) sees the old file or the new one, never half of one."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / RESULT_FILE
    atomic_write_text(path, json.dumps(result.to_json(), indent=2) + "\n", durable=True)
    return path


# --------------------------------------------------------------------------------------------------
# The one call shape.decide_run_shape makes


def first_photometric_weight(cfg) -> float:
    """The photometric term's weight at step 0, its largest (0 without an explicit alignment): with it
    the probe backpropagates through the alignment report as the run's first steps do."""
    return photometric_weight(cfg, 0)


def search_settings(cfg, batch_size_per_gpu: int) -> dict[str, Any]:
    """The settings that shape the candidate list and the choice; part of the validity key."""
    return {"batch_size_per_gpu": batch_size_per_gpu, "global_batch_size": cfg.train.global_batch_size,
            "channels_last": cfg.train.channels_last, "vram_cap": cfg.autotune.vram_cap,
            "choose": cfg.autotune.choose, "max_candidates": cfg.autotune.max_candidates,
            "ema": cfg.ema.enabled}


def autotune(cfg, device_plan: DevicePlan, run_dir: str | Path, ranks: Ranks, *, device: torch.device | str,
             log: Log = print, probe: Probe | None = None, clock: Callable[[], float] = time.monotonic,
             batch_size_per_gpu: int | None = None, degradation: Degradation | None = None) -> AutotuneResult | None:
    """Choose the batch size and memory settings for this run, on every rank; None when there is
    nothing to tune (disabled, or CPU), after logging why.

    Call it on all ranks after the Accelerator exists and the memory fraction is set (the OOMs and the
    cap must see the capped memory), before building the model. It reuses RUN/autotune.json when
    every rank finds it valid and identical, otherwise measures and writes it (main process). Raises
    AutotuneError (a ValueError, one line) when nothing fits. `batch_size_per_gpu` (the first
    candidate's batch) defaults to data.batch_size_per_gpu. The model and optimizer it builds are freed
    and the peak memory statistics reset before it returns.
    """
    if not cfg.autotune.enabled:
        log("auto-tune: off (autotune.enabled=false): using the configured batch and memory settings")
        return None
    if device_plan.device_type != "cuda":
        log("auto-tune: skipped on CPU (no GPU memory to fit): using the configured batch and memory settings")
        return None
    batch = cfg.data.batch_size_per_gpu if batch_size_per_gpu is None else batch_size_per_gpu
    fraction = device_plan.memory_fraction
    usable = int(device_plan.gpu_memory_bytes * fraction) if fraction else device_plan.gpu_memory_bytes
    names = ranks.all_gather(device_plan.gpu_name)
    smallest_total = int(-ranks.all_max([-float(device_plan.gpu_memory_bytes)])[0])
    key = validity_key(gpu_name=" + ".join(sorted(set(names))), gpu_memory_bytes=smallest_total,
                       memory_fraction=fraction, model_cfg=cfg.model, lr_patch_size=cfg.data.lr_patch_size,
                       precision=device_plan.mixed_precision, world_size=ranks.world_size,
                       search=search_settings(cfg, batch))

    cached, why = lookup_cache(run_dir, key)
    # Reuse only if every rank read the same valid result (a run directory that is not shared between
    # nodes could hold different files, or none): otherwise all measure.
    stored = _fingerprint(cached.to_json()) if cached else 0.0
    missing, highest, neg_lowest = ranks.all_max([0.0 if cached else 1.0, stored, -stored])
    if missing == 0 and highest == -neg_lowest:
        log(f"auto-tune: reusing {Path(run_dir) / RESULT_FILE} (measured in {cached.seconds:.0f} s)")
        return _finish(cached, cfg, ranks, log)
    if not why:
        why = f"another rank has no valid {RESULT_FILE}, or a different one"
    log(f"auto-tune: measuring ({why})")

    candidates = candidate_list(batch, global_batch_size=cfg.train.global_batch_size, world_size=ranks.world_size,
                                channels_last=cfg.train.channels_last, choose=cfg.autotune.choose,
                                max_candidates=cfg.autotune.max_candidates)
    if probe is None:
        probe = CudaStepProbe(cfg.model, LossWeights(cfg.loss.l1_weight, cfg.loss.ms_weight, cfg.loss.grad_weight),
                              cfg.data.lr_patch_size, device_plan.mixed_precision, device, cfg.autotune.trial_steps,
                              extra_param_copies=int(ranks.world_size > 1) + int(cfg.ema.enabled),
                              optim_cfg=cfg.optim, photometric_weight=first_photometric_weight(cfg),
                              clip_threshold=cfg.adaptive.clip_initial,
                              global_batch_size=cfg.train.global_batch_size, world_size=ranks.world_size,
                              degradation=degradation)
    cap = int(cfg.autotune.vram_cap * usable)
    log(f"auto-tune: up to {len(candidates)} settings, cap {_gb(cap)} ({cfg.autotune.vram_cap:g} of {_gb(usable)}"
        f"{' after the memory fraction' if fraction else ''}), budget {cfg.autotune.time_budget_s:g} s, "
        f"choose {cfg.autotune.choose}")
    try:
        result = run_autotune(candidates, probe, cap_bytes=cap, time_budget_s=cfg.autotune.time_budget_s,
                              choose=cfg.autotune.choose, agree=ranks.all_max, clock=clock, log=log,
                              world_size=ranks.world_size)
    except AutotuneError as err:
        if err.result is not None and ranks.is_main:
            write_result(run_dir, dataclasses.replace(err.result, key=key))
        raise
    result = dataclasses.replace(result, key=key)
    result = _finish(result, cfg, ranks, log)
    if ranks.is_main:
        write_result(run_dir, result)
    return result


def _finish(result: AutotuneResult, cfg, ranks: Ranks, log: Log) -> AutotuneResult:
    plan = plan_batches(cfg.train.global_batch_size, result.chosen.batch_size_per_gpu, ranks.world_size)
    trial = result.chosen_trial
    speed = f", {trial.clips_per_s * ranks.world_size:.1f} clips/s" if trial else ""
    log(f"auto-tune chose {result.chosen}{speed} ({result.choose}, {result.seconds:.0f} s)")
    if cfg.train.activation_checkpointing and not result.chosen.activation_checkpointing:
        log("auto-tune: train.activation_checkpointing=true has no effect: the chosen setting fits without it "
            "(autotune.enabled=false keeps it on)")
    return dataclasses.replace(result, batch_plan=plan)
