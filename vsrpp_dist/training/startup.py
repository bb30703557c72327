"""Everything a run settles before its first step, in the order the trainer calls it: the device and
process count, the data (checked and opened once, before the run directory is touched, so a wrong path
costs one error line and not a half-made run directory), the run directory, and resuming with its
compatibility checks.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import Config, ConfigError, architecture_of, config_to_dict, dump_config
from ..data.degradation import Degradation, for_scoring, for_training
from ..data.locations import Location, RetryPolicy
from ..data.stream import TrainingShards
from ..data.validation_set import ValidationSet
from ..errors import CheckpointError, ShardFormatError, StartError
from ..files import atomic_write_text
from .model_card import data_summary
from .run_dir import RunLock, StartDecision, StartRequest, check_writable, decide_start, has_checkpoints, move_aside
from .runtime import DevicePlan, cpu_threads


def apply_device_plan(accelerator, plan: DevicePlan) -> None:
    """The process count Accelerate really runs must be the one the launcher promised, and the memory
    cap and CPU threads are set before anything allocates."""
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) != accelerator.num_processes:
        raise StartError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but Accelerate runs {accelerator.num_processes} "
                         "process(es): on CPU use `ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu "
                         "--num_processes N` (see launch/cpu_2proc.yaml); `--cpu --num_processes N` silently runs one")
    if plan.memory_fraction:
        torch.cuda.set_per_process_memory_fraction(plan.memory_fraction, accelerator.device)
    if accelerator.device.type == "cpu" and (threads := cpu_threads()) is not None:
        torch.set_num_threads(threads)


def check_memory_fits(cfg: Config, plan: DevicePlan) -> None:
    """Settings whose memory cannot fit this device are refused before the run directory exists, in one
    line naming them: the model's training state (weights, gradients, two Adam moments, the EMA: counted
    on a model built on the meta device, which allocates nothing), and what one step holds at the least
    (the clips as floats and one feature map per frame for each of the three trunks). A lower bound:
    what passes may still run out of memory in a step, which is then said as such (Trainer)."""
    from ..model.architecture import build_model, count_parameters

    if plan.device_type == "cuda":
        available = int(plan.gpu_memory_bytes * (plan.memory_fraction or 1.0))
        where = f"the GPU's {available / 2**30:.1f} GB"
    else:
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        where = f"this machine's {available / 2**30:.1f} GB of memory"
    with torch.device("meta"):
        parameters = count_parameters(build_model(cfg.model))
    state_bytes = parameters * 4 * (4 + int(cfg.ema.enabled))
    if state_bytes > available:
        raise ConfigError(f"model.channels={cfg.model.channels}: a model of {parameters:,} parameters needs "
                          f"{state_bytes / 2**30:.1f} GB for its weights, gradients and optimizer state, more than "
                          f"{where} (out of memory); lower model.channels or the block counts")
    p, batch = cfg.data.lr_patch_size, cfg.data.batch_size_per_gpu
    step_bytes = batch * cfg.model.num_frames * (3 * (3 * p) ** 2 + 3 * 3 * p * p + 3 * cfg.model.channels * p * p) * 4
    if state_bytes + step_bytes > available:
        raise ConfigError(f"data.batch_size_per_gpu={batch}: one step of {batch} clips of {p}x{p} LR pixels with "
                          f"model.channels={cfg.model.channels} needs at least {step_bytes / 2**30:.1f} GB, more "
                          f"than {where} (out of memory); lower data.batch_size_per_gpu or data.lr_patch_size "
                          "(train.global_batch_size keeps the step's size through gradient accumulation)")


@dataclass(frozen=True)
class RunData:
    """The run's data, opened and checked once: the training shards (the stream over them is built once
    the batch size and the resume point are known), the validation set, if any, and how each one's input
    frames are made."""

    shards: TrainingShards
    degradation: Degradation
    validation_set: ValidationSet | None
    validation_degradation: Degradation | None

    def summaries(self) -> tuple[dict | None, dict | None]:
        """The training and validation sets as a model card describes them."""
        return (data_summary(self.shards.manifest),
                data_summary(self.validation_set.manifest) if self.validation_set is not None else None)


def open_data(cfg: Config, *, world_size: int) -> RunData:
    """The data settings checked from the manifests; a problem names the config key at fault."""
    if not cfg.data.train_shards:
        raise ConfigError("data.train_shards: not set; give the folder `python -m vsrpp_dist.pack` wrote")
    try:
        shards = TrainingShards(cfg.data.train_shards, cfg.data, world_size=world_size)
    except ShardFormatError as err:
        raise ConfigError(f"data.train_shards: {err}") from None
    degradation = for_training(cfg.degradation, packed_lr=shards.has_lr, folder=shards.folder)
    validation_set = validation_degradation = None
    if cfg.data.val_shards and cfg.validation.every:
        try:
            # read with the run's retry and timeout settings, as the training shards are
            validation_set = ValidationSet(Location(cfg.data.val_shards, RetryPolicy.from_data_config(cfg.data)),
                                           cfg.validation.max_sequences)
        except ShardFormatError as err:
            raise ConfigError(f"data.val_shards: {err}") from None
        validation_degradation = for_scoring(cfg.degradation, packed_lr=validation_set.has_lr)
    return RunData(shards, degradation, validation_set, validation_degradation)


def will_resume(run_dir: Path, request: StartRequest) -> bool:
    """Whether this start continues the run for certain (asked for, or automatic with checkpoints there),
    read before anything is locked or written: such a start never reads init.from."""
    return bool(request.resume) or ((request.auto_resume or request.restart > 0) and has_checkpoints(run_dir))


def prepare_run_dir(cfg: Config, run_dir: Path, request: StartRequest, accelerator,
                    interactive: bool | None) -> tuple[StartDecision, RunLock | None]:
    """Rank 0 locks the run directory before anything in it is written (a second start of the same run
    is refused here, on every rank, naming the holder); then every rank decides new / resume / fresh
    from the same files, and rank 0 alone moves an old run aside, checks the folder is writable and
    writes config.yaml. An error on rank 0 reaches every rank as the same line, so none waits forever.
    Returns the decision and, on rank 0, the lock the run holds until it ends."""
    main = accelerator.is_main_process
    lock, refusal = None, ""
    if main:
        try:
            lock = RunLock.acquire(run_dir)
        except StartError as err:
            refusal = str(err)
    _raise_on_every_rank(accelerator, refusal)
    try:
        # After the lock: no other start can add or move checkpoints between this look and our changes.
        decision = decide_start(run_dir, request, num_processes=accelerator.num_processes, interactive=interactive)
        accelerator.wait_for_everyone()  # everyone has looked before rank 0 changes anything
        moved, error = None, ""
        if main:
            try:
                if decision.mode == "fresh":
                    moved = move_aside(run_dir)
                    old_lock, lock = lock, RunLock.acquire(run_dir)  # the new run's, before the old run's goes
                    old_lock.release()
                check_writable(run_dir)
                write_config(cfg, run_dir)
            except StartError as err:
                error = str(err)
        _raise_on_every_rank(accelerator, error)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return dataclasses.replace(decision, moved_to=moved), lock


def _raise_on_every_rank(accelerator, message: str) -> None:
    """Rank 0's start error (or none) on every rank: a collective, so it also keeps the ranks in step."""
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        box = [message]
        broadcast_object_list(box, from_process=0)
        message = box[0]
    if message:
        raise StartError(message)


def write_config(cfg: Config, run_dir: Path) -> None:
    path = run_dir / "config.yaml"
    text = dump_config(cfg)
    if path.exists() and path.read_text() != text:
        previous = path.with_name(f"config.previous-{time.strftime('%Y%m%d-%H%M%S')}.yaml")
        os.replace(path, previous)  # kept, not overwritten: the old run's settings stay readable
    atomic_write_text(path, text)


class CompatibilityCheck:
    """Refuses a checkpoint whose architecture differs from the configured one, in one line that names
    the key to set (alignment first: it is the likeliest mix-up, and its fix is a single value)."""

    def __init__(self, cfg: Config) -> None:
        self.now = architecture_of(config_to_dict(cfg)["model"])

    def __call__(self, meta: dict) -> None:
        saved = architecture_of(meta.get("config", {}).get("model", {}))
        if saved["alignment"] != self.now["alignment"]:
            raise CheckpointError(f"model.alignment is {self.now['alignment']!r} but the checkpoint was trained "
                                  f"with {saved['alignment']!r}; set model.alignment={saved['alignment']} to "
                                  "continue it")
        for key, value in self.now.items():
            if saved.get(key) != value:
                raise CheckpointError(f"model.{key} is {value!r} but the checkpoint was trained with "
                                      f"{saved.get(key)!r}")


def resume(checkpoints, request: str, check: CompatibilityCheck, *, cfg: Config, world_size: int, batches,
           state, observer) -> None:
    """Load the checkpoint (every registered component restores itself) and warn where the run's shape
    changed since it was written (the stream then differs from an uninterrupted run)."""
    info = checkpoints.load(request, check)
    now = {"world_size": world_size, "num_workers": cfg.data.num_workers,
           "batch_size_per_gpu": batches.batch_size_per_gpu, "grad_accum_steps": batches.grad_accum_steps}
    for key, value in now.items():
        if key in info.meta and info.meta[key] != value:
            observer.warn(f"resume: {key} was {info.meta[key]}, now {value}; the data stream and step "
                          "contents will differ from an uninterrupted run")
    checkpoints.last_saved = info.path.name
    observer.info(f"resumed from {info.path} at step {state.step} (batch {state.batches_consumed} of the stream)")
