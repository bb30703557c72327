"""The run's shape (batch plan, accumulation, activation checkpointing, layout) is decided in one place,
`shape.decide_run_shape`, and described by the record it returns."""

from __future__ import annotations

from vsrpp_dist.config import load_config
from vsrpp_dist.training.autotune import Ranks, Trial
from vsrpp_dist.training.runtime import DevicePlan
from vsrpp_dist.training.shape import configured_shape, decide_run_shape

GB = 2**30
CPU = DevicePlan("cpu", "no", "standard", 0.0)
GPU = DevicePlan("cuda", "bf16", "standard", 0.0, "FakeGPU 16GB", 16 * GB)
SMALL_GPU = DevicePlan("cuda", "bf16", "6gb", 0.375, "FakeGPU 16GB", 16 * GB)


def config(tmp_path, *extra):
    return load_config(None, [f"run.dir={tmp_path}", "data.batch_size_per_gpu=8", "train.global_batch_size=32",
                              "train.activation_checkpointing=false", *extra])


def fits_up_to(batch: int):
    """A probe on which batches up to `batch` fit without checkpointing; the calls are recorded."""
    calls = []

    def probe(candidate):
        calls.append(candidate)
        fits = candidate.batch_size_per_gpu <= batch
        return Trial(candidate, fits, GB if fits else 0, 0.1 * candidate.batch_size_per_gpu,
                     None if fits else "CUDA out of memory")

    probe.calls = calls
    return probe


def test_the_configured_shape_on_cpu_keeps_the_global_batch(tmp_path):
    lines = []
    shape = decide_run_shape(config(tmp_path), CPU, tmp_path, Ranks(world_size=1), device="cpu", log=lines.append)
    plan = shape.batches
    assert (plan.batch_size_per_gpu, plan.grad_accum_steps, plan.global_batch_size) == (8, 4, 32)
    assert not shape.activation_checkpointing and shape.decided_by == "the configuration"
    assert shape.describe() == ("batch: 8 per rank x 4 accumulation x 1 ranks = 32 clips per step; activation "
                                "checkpointing off, NCHW (the configuration)")  # channels_last: CUDA only
    assert shape.unreachable_global_batch() is None
    assert "skipped on CPU" in lines[0]


def test_the_6gb_profile_caps_the_batch_and_recomputes(tmp_path):
    shape = configured_shape(config(tmp_path), SMALL_GPU, 1)
    assert (shape.batches.batch_size_per_gpu, shape.batches.grad_accum_steps) == (2, 16)
    assert shape.activation_checkpointing and "6gb profile" in shape.describe()


def test_auto_tune_decides_the_shape_and_it_says_so(tmp_path):
    probe = fits_up_to(4)
    shape = decide_run_shape(config(tmp_path, "autotune.choose=priority"), GPU, tmp_path, Ranks(), device="cpu",
                             log=lambda _: None, probe=probe)
    # (8, off) and (8, on) do not fit; (4, off) is the first that does: accumulation 8 keeps the global batch 32
    assert (shape.batches.batch_size_per_gpu, shape.batches.grad_accum_steps, shape.batches.global_batch_size) == (
        4, 8, 32)
    assert not shape.activation_checkpointing and shape.decided_by == "auto-tune"
    again = decide_run_shape(config(tmp_path, "autotune.choose=priority"), GPU, tmp_path, Ranks(), device="cpu",
                             log=lambda _: None, probe=fits_up_to(4))
    assert again.batches == shape.batches and again.decided_by == "auto-tune (cached)"


def test_an_unreachable_global_batch_is_named(tmp_path):
    shape = configured_shape(config(tmp_path), CPU, 3)  # 8 per rank on 3 ranks: 24 or 48 clips, not 32
    assert shape.batches.global_batch_size == 24
    assert shape.unreachable_global_batch() == ("train.global_batch_size=32 is not reachable with 8 per rank on 3 "
                                                "ranks; using 24")
