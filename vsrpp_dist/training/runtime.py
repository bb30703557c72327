"""Decisions about the hardware, made before the Accelerator exists: precision, profile, memory cap,
and the gradient-accumulation arithmetic that keeps the global batch as configured."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ..files import usable_cores

SMALL_GPU_GB = 8.0  # a single GPU this small gets the 6 GB profile under profile=auto
SIX_GB = 6 * 2**30


@dataclass(frozen=True)
class DevicePlan:
    device_type: str  # "cuda" or "cpu"
    mixed_precision: str  # "no", "bf16", "fp16"
    profile: str  # "standard" or "6gb"
    memory_fraction: float  # 0: no cap; else passed to torch.cuda.set_per_process_memory_fraction
    gpu_name: str = ""
    gpu_memory_bytes: int = 0


def local_cuda_device() -> torch.device | None:
    if not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"):
        return None
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def plan_device(train_cfg, world_size: int) -> DevicePlan:
    device = local_cuda_device()
    if device is None:
        # Autocast on CPU is slower than fp32 for convolutions; use it only when asked explicitly.
        precision = train_cfg.mixed_precision if train_cfg.mixed_precision in ("bf16",) else "no"
        return DevicePlan("cpu", precision, "standard" if train_cfg.profile == "auto" else train_cfg.profile, 0.0)
    props = torch.cuda.get_device_properties(device)
    total = props.total_memory
    profile = train_cfg.profile
    if profile == "auto":
        profile = "6gb" if world_size == 1 and total <= SMALL_GPU_GB * 2**30 else "standard"
    precision = train_cfg.mixed_precision
    if precision == "auto" or (profile == "6gb" and precision == "no"):
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    fraction = train_cfg.memory_fraction
    if profile == "6gb" and total > SIX_GB * 1.05 and not fraction:
        fraction = SIX_GB / total  # simulate the small card on a large one
    return DevicePlan("cuda", precision, profile, fraction, props.name, total)


def cpu_threads() -> int | None:
    """Intra-op threads for CPU training when the user has not chosen (OMP_NUM_THREADS unset): the cores
    shared out over the local ranks. Loader workers are not subtracted: they sleep most of a step (the
    data is ~1 % of it). Measured on the 2-core machine, demo config, one worker: 2 threads 27.4 clips/s,
    1 thread 16.2 (BENCHMARKS.md). More threads than cores per rank only slow every step."""
    if "OMP_NUM_THREADS" in os.environ:
        return None
    cores = usable_cores()
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, cores // local_ranks)


@dataclass(frozen=True)
class BatchPlan:
    batch_size_per_gpu: int
    grad_accum_steps: int
    world_size: int
    requested_global: int

    @property
    def global_batch_size(self) -> int:
        return self.batch_size_per_gpu * self.grad_accum_steps * self.world_size

    @property
    def exact(self) -> bool:
        return self.global_batch_size == self.requested_global


def plan_batches(requested_global: int, batch_size_per_gpu: int, world_size: int) -> BatchPlan:
    """Accumulation so that batch_size_per_gpu x accumulation x ranks is the requested global batch
    (rounded to the nearest possible value when it does not divide; `exact` says so)."""
    if requested_global <= 0:
        requested_global = batch_size_per_gpu * world_size
    per_step = batch_size_per_gpu * world_size
    accum = max(1, round(requested_global / per_step))
    return BatchPlan(batch_size_per_gpu, accum, world_size, requested_global)


def restart_count() -> int:
    """How often the launcher has restarted this job: torch elastic numbers the attempts of a job it
    restarts (`accelerate launch --max_restarts N`); 0 outside it."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def join_restarted_process_group(device_plan: DevicePlan) -> None:
    """Under a launcher that restarts the job (`accelerate launch --max_restarts N`, torch elastic), join the
    process group under a store prefix of this attempt's own, before Accelerate would join it without one.

    The launcher's agent keeps one TCPStore for all attempts (static rendezvous; c10d's shared store
    likewise), and the process group's keys carry no attempt number: a restarted rank can read the
    address a dead rank of the previous attempt published there and wait for it forever (seen here: both
    ranks of a restart stuck in gloo's connectFullMesh, in 3 restarts of 6). Older torch prefixed the keys
    per attempt; this does the same. Every rank of an attempt has the same TORCHELASTIC_RESTART_COUNT on
    one node and with static rendezvous across nodes (each agent restarts once per failure, as every
    rank fails with it); Accelerate takes a group it finds initialised."""
    import torch.distributed as dist

    restarts_allowed = int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0") or 0)
    if not restarts_allowed or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or dist.is_initialized():
        return
    attempt = restart_count()
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False)
    dist.init_process_group("nccl" if device_plan.device_type == "cuda" else "gloo",
                            store=dist.PrefixStore(f"vsrpp_dist/attempt_{attempt}", store),
                            rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]))
