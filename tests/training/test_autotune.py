"""Auto-tune on the CPU: a fake GPU (a memory and a speed model behind the Probe protocol) for the search,
the agreement and the cache; the real step probe run on the CPU with a tiny model; two gloo ranks whose
fake GPUs differ."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from vsrpp_dist.config import ModelConfig, load_config
from vsrpp_dist.model.architecture import build_model
from vsrpp_dist.model.loss import LossWeights
from vsrpp_dist.training import autotune as at
from vsrpp_dist.training.autotune import (
    AutotuneError,
    Candidate,
    CudaStepProbe,
    Ranks,
    Trial,
    autotune,
    candidate_list,
    lookup_cache,
    run_autotune,
    select,
    validity_key,
)
from vsrpp_dist.training.runtime import DevicePlan, plan_batches

GB = 2**30


def C(batch: int, ckpt: bool = False, nhwc: bool = True) -> Candidate:
    return Candidate(batch, ckpt, nhwc)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeGpu:
    """peak = base + per_clip x batch (x ckpt_keep with checkpointing); s/iter = overhead + batch x
    per_clip_s (x ckpt_cost with checkpointing, x nchw_cost in NCHW). Raises OOM above `oom_above`."""

    def __init__(self, *, base=1.0 * GB, per_clip=1.0 * GB, ckpt_keep=0.4, overhead_s=0.0, per_clip_s=0.1,
                 ckpt_cost=1.3, nchw_cost=1.0, oom_above=None, clock=None, trial_s=0.0, margin=0):
        self.__dict__.update(locals())
        del self.__dict__["self"]
        self.calls: list[Candidate] = []

    def peak(self, c: Candidate) -> int:
        keep = self.ckpt_keep if c.activation_checkpointing else 1
        return int(self.base + c.batch_size_per_gpu * self.per_clip * keep)

    def s_per_iter(self, c: Candidate) -> float:
        s = self.overhead_s + c.batch_size_per_gpu * self.per_clip_s
        return s * (self.ckpt_cost if c.activation_checkpointing else 1) * (1 if c.channels_last else self.nchw_cost)

    def __call__(self, c: Candidate) -> Trial:
        self.calls.append(c)
        if self.clock is not None:
            self.clock.now += self.trial_s
        if self.oom_above is not None and self.peak(c) > self.oom_above:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {self.peak(c) / GB:.2f} GiB")
        return Trial(c, True, self.peak(c), self.s_per_iter(c), None, self.margin)


def quiet(_: str) -> None:
    pass


def tune(candidates, gpu, *, cap=100 * GB, choose="priority", budget=110.0, **kw):
    return run_autotune(candidates, gpu, cap_bytes=int(cap), time_budget_s=budget, choose=choose, log=quiet, **kw)


# ------------------------------------------------------------------------------------------------
# Candidates


def test_priority_order_is_configured_batch_then_checkpointing_then_halving():
    assert candidate_list(8, global_batch_size=0, world_size=2, channels_last=True, choose="priority") == [
        C(8), C(8, True), C(4), C(4, True), C(2), C(2, True), C(1), C(1, True)]


def test_fastest_adds_the_other_layout_and_larger_batches_when_accumulation_allows():
    # global 32 over 2 ranks with batch 4: accumulation 4, so 8 (accumulation 2) and 16 (1) stay exact.
    got = candidate_list(4, global_batch_size=32, world_size=2, channels_last=True, choose="fastest")
    # 9 candidates for 8 slots: the last slot keeps the least memory-hungry setting, (1, on).
    assert got == [C(4), C(4, True), C(8), C(16), C(4, nhwc=False), C(2), C(2, True), C(1, True)]
    # accumulation 2 leaves room for 2x only; no accumulation for none
    assert C(8) in candidate_list(4, global_batch_size=16, world_size=2, channels_last=True)
    assert C(16) not in candidate_list(4, global_batch_size=16, world_size=2, channels_last=True)
    assert C(8) not in candidate_list(4, global_batch_size=0, world_size=2, channels_last=True)


def test_candidate_list_is_capped_and_keeps_the_last_resort():
    assert candidate_list(8, global_batch_size=0, world_size=1, channels_last=True, max_candidates=3) == [
        C(8), C(8, True), C(1, True)]
    assert candidate_list(8, global_batch_size=0, world_size=1, channels_last=True, max_candidates=1) == [C(8)]
    assert candidate_list(1, global_batch_size=0, world_size=1, channels_last=False, on_gpu=False) == [
        C(1, nhwc=False), C(1, True, nhwc=False)]
    with pytest.raises(ValueError, match="batch_size_per_gpu"):
        candidate_list(0, global_batch_size=0, world_size=1, channels_last=True)
    with pytest.raises(ValueError, match="autotune.choose"):
        candidate_list(8, global_batch_size=0, world_size=1, channels_last=True, choose="best")


# ------------------------------------------------------------------------------------------------
# The search


def test_cap_rejects_just_over_and_accepts_just_under():
    gpu = FakeGpu()  # (8, off) peaks at 9 GB
    over = tune([C(8), C(8, True)], gpu, cap=9 * GB - 1)
    assert over.chosen == C(8, True)
    assert not over.trials[0].fits and "over the cap" in over.trials[0].error
    under = tune([C(8), C(8, True)], FakeGpu(), cap=9 * GB)
    assert under.chosen == C(8) and len(under.trials) == 1  # priority: nothing after the first fit


def test_the_margin_counts_against_the_cap():
    result = tune([C(8), C(8, True)], FakeGpu(margin=GB // 2), cap=9 * GB)
    assert result.chosen == C(8, True)
    assert "margin" in result.trials[0].error


def test_oom_is_a_misfit_cleaned_up_and_the_next_candidate_is_tried(monkeypatch):
    cleanups = []
    monkeypatch.setattr(at, "free_memory", lambda: cleanups.append(1))
    gpu = FakeGpu(oom_above=6 * GB)
    result = tune([C(8), C(8, True)], gpu)
    assert gpu.calls == [C(8), C(8, True)]
    assert not result.trials[0].fits and "OutOfMemoryError" in result.trials[0].error
    assert result.chosen == C(8, True) and cleanups == [1]


def test_an_error_that_is_not_an_oom_is_raised():
    def broken(c):
        raise RuntimeError("Given groups=1, weight of size [8, 3, 3, 3], expected input to have 3 channels")

    with pytest.raises(RuntimeError, match="groups=1"):
        tune([C(8)], broken)


def test_fastest_and_priority_choose_differently():
    # (8, off) does not fit; (8, on) fits but recomputes; (4, off) fits and is faster per clip.
    cands = candidate_list(8, global_batch_size=0, world_size=1, channels_last=True, choose="fastest")
    prio = tune(candidate_list(8, global_batch_size=0, world_size=1, channels_last=True, choose="priority"),
                FakeGpu(), cap=8 * GB)
    fast = tune(cands, FakeGpu(), cap=8 * GB, choose="fastest")
    assert prio.chosen == C(8, True)
    assert fast.chosen == C(4)
    assert fast.chosen_trial.clips_per_s > fast.trials[1].clips_per_s


def test_fastest_skips_what_cannot_win_and_what_cannot_fit():
    roomy = FakeGpu(nchw_cost=0.9)
    result = tune(candidate_list(8, global_batch_size=0, world_size=1, channels_last=True, choose="fastest"),
                  roomy, choose="fastest")
    # (8, off) fits: everything smaller or recomputing is skipped; only the other layout is worth a try.
    assert roomy.calls == [C(8), C(8, nhwc=False)]
    assert result.chosen == C(8, nhwc=False)  # 10 % faster here
    reasons = dict(result.not_tried)
    assert "cannot be faster" in reasons[C(4)]

    tight = FakeGpu()
    result = tune(candidate_list(8, global_batch_size=0, world_size=1, channels_last=True, choose="fastest"),
                  tight, cap=8 * GB, choose="fastest")
    assert C(8, nhwc=False) not in tight.calls  # same memory as (8, off), which does not fit
    assert "needs at least the memory" in dict(result.not_tried)[C(8, nhwc=False)]


def test_select_is_pure_and_breaks_near_ties_by_priority():
    a = Trial(C(8, True), True, GB, 1.0)  # 8.0 clips/s
    b = Trial(C(4), True, GB, 0.497)  # 8.05 clips/s: within 2 %
    c = Trial(C(2), True, GB, 0.2)  # 10 clips/s
    assert select([a, b], "fastest") is a
    assert select([a, b, c], "fastest") is c
    assert select([Trial(C(8), False), b], "priority") is b
    assert select([Trial(C(8), False)], "fastest") is None
    with pytest.raises(ValueError):
        select([a], "best")


@pytest.mark.parametrize("trial_s, tried", [(50.0, 2), (30.0, 3)])
def test_time_budget_stops_before_a_trial_that_would_end_late_and_keeps_the_best(trial_s, tried):
    clock = Clock()
    gpu = FakeGpu(clock=clock, trial_s=trial_s, overhead_s=0.1)  # larger batches are faster per clip
    cands = [C(b) for b in (2, 4, 6, 8, 10)]
    result = tune(cands, gpu, choose="fastest", budget=110.0, clock=clock)
    assert len(gpu.calls) == tried
    assert result.stop_reason.startswith("time budget")
    assert result.chosen == gpu.calls[-1]  # the fastest of those tried
    assert all("time budget" in reason for _, reason in result.not_tried)
    assert result.seconds == trial_s * tried <= 110.0


def test_nothing_fits_is_one_clear_line_naming_the_smallest_setting():
    cands = candidate_list(8, global_batch_size=0, world_size=1, channels_last=True, choose="priority")
    with pytest.raises(AutotuneError) as info:
        tune(cands, FakeGpu(base=5 * GB), cap=4 * GB)
    message = str(info.value)
    assert isinstance(info.value, ValueError) and "\n" not in message
    assert "batch 1, checkpointing on" in message
    assert "needs 5.40 GB" in message and "cap of 4.00 GB" in message
    assert len(info.value.result.trials) == 8

    clock = Clock()
    with pytest.raises(AutotuneError, match=r"ran out of memory.*1 of 2 tried before the time budget"):
        tune([C(8), C(4)], FakeGpu(oom_above=0, clock=clock, trial_s=100), budget=110, clock=clock)


def test_ranks_with_different_candidates_refuse_instead_of_hanging():
    def other_rank_differs(values):
        return [values[0], values[1] + 7, *values[2:]]

    with pytest.raises(AutotuneError, match="different candidate lists"):
        tune([C(8)], FakeGpu(), agree=other_rank_differs)


# ------------------------------------------------------------------------------------------------
# Accumulation, cache, the trainer's one call


def test_accumulation_keeps_the_global_batch_and_says_when_it_cannot():
    plan = plan_batches(32, 4, 2)
    assert (plan.grad_accum_steps, plan.global_batch_size, plan.exact) == (4, 32, True)
    odd = plan_batches(30, 4, 2)
    assert not odd.exact and odd.requested_global == 30


def cuda_plan(name="FakeGPU 16GB", memory=16 * GB, fraction=0.0) -> DevicePlan:
    return DevicePlan("cuda", "bf16", "standard", fraction, name, memory)


def config(tmp_path, *extra):
    return load_config(None, [f"run.dir={tmp_path}", "data.batch_size_per_gpu=8", "train.global_batch_size=32",
                              "autotune.choose=priority", *extra])


def test_autotune_is_skipped_on_cpu_and_when_disabled(tmp_path):
    lines = []
    cpu = DevicePlan("cpu", "no", "standard", 0.0)
    assert autotune(config(tmp_path), cpu, tmp_path, Ranks(), device="cpu", log=lines.append) is None
    off = config(tmp_path, "autotune.enabled=false")
    assert autotune(off, cuda_plan(), tmp_path, Ranks(), device="cpu", log=lines.append) is None
    assert "skipped on CPU" in lines[0] and "off" in lines[1]
    assert not (tmp_path / "autotune.json").exists()


def test_autotune_writes_json_reuses_it_and_measures_again_when_the_key_changes(tmp_path, monkeypatch):
    cfg = config(tmp_path)
    lines: list[str] = []
    # 16 GB x 0.8 = 12.8 GB: (8, off) needs 9 GB + 1 GB margin... fits; with the 6 GB simulation it does not.
    gpu = FakeGpu(margin=GB)
    first = autotune(cfg, cuda_plan(), tmp_path, Ranks(), device="cpu", log=lines.append, probe=gpu)
    assert first.chosen == C(8) and first.source == "measured"
    assert (first.batch_plan.grad_accum_steps, first.batch_plan.exact) == (4, True)
    data = json.loads((tmp_path / "autotune.json").read_text())
    assert data["chosen"] == {"batch_size_per_gpu": 8, "activation_checkpointing": False, "channels_last": True}
    entry = data["candidates"][0]
    assert entry["status"] == "fits" and entry["peak_gb"] == 9.0 and entry["margin_gb"] == 1.0
    assert entry["s_per_iter"] == pytest.approx(0.8) and entry["clips_per_s"] == pytest.approx(10.0)
    assert data["candidates"][1]["status"] == "not tried" and "priority" in data["candidates"][1]["reason"]
    assert data["key"]["gpu_name"] == "FakeGPU 16GB" and data["key"]["model"]["channels"] == 128
    assert data["batch_plan"]["grad_accum_steps"] == 4 and "seconds" in data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["autotune.json"]  # no temp file left

    again = FakeGpu(margin=GB)
    reused = autotune(cfg, cuda_plan(), tmp_path, Ranks(), device="cpu", log=lines.append, probe=again)
    assert reused.chosen == C(8) and reused.source == "cache" and again.calls == []
    assert any("reusing" in line for line in lines)

    changes = [
        (cuda_plan(name="Other GPU"), cfg, "gpu_name: 'FakeGPU 16GB' -> 'Other GPU'"),
        (cuda_plan(memory=24 * GB), cfg, "gpu_memory_bytes"),
        (cuda_plan(), load_config(None, [f"run.dir={tmp_path}", "data.batch_size_per_gpu=8",
                                         "train.global_batch_size=32", "autotune.choose=priority",
                                         "model.channels=64"]), "model.channels: 128 -> 64"),
    ]
    for plan, changed_cfg, why in changes:
        lines.clear()
        probe = FakeGpu(margin=GB)
        autotune(changed_cfg, plan, tmp_path, Ranks(), device="cpu", log=lines.append, probe=probe)
        assert probe.calls, why
        assert any(why in line for line in lines), (why, lines)
        autotune(cfg, cuda_plan(), tmp_path, Ranks(), device="cpu", log=quiet, probe=FakeGpu(margin=GB))  # back

    monkeypatch.setattr(torch, "__version__", "0.0.1")
    lines.clear()
    probe = FakeGpu(margin=GB)
    autotune(cfg, cuda_plan(), tmp_path, Ranks(), device="cpu", log=lines.append, probe=probe)
    assert probe.calls and any("torch_version" in line for line in lines)


def test_the_cap_is_taken_from_the_capped_memory(tmp_path):
    # 6 GB simulated on 16 GB: cap 4.8 GB; (8, off) and (8, on) (4.2 + 1 GB margin) are over it.
    lines: list[str] = []
    six = 6 * GB / (16 * GB)
    result = autotune(config(tmp_path), cuda_plan(fraction=six), tmp_path, Ranks(), device="cpu",
                      log=lines.append, probe=FakeGpu(margin=GB))
    assert result.cap_bytes == int(0.8 * 6 * GB)
    assert [t.fits for t in result.trials] == [False, False, False, True]
    assert result.chosen == C(4, True)  # 2.6 GB + 1 GB margin
    assert (result.batch_plan.grad_accum_steps, result.batch_plan.exact) == (8, True)
    assert any("after the memory fraction" in line for line in lines)


def test_a_search_where_nothing_fits_is_written_but_never_reused(tmp_path):
    cfg = config(tmp_path)
    with pytest.raises(AutotuneError):
        autotune(cfg, cuda_plan(), tmp_path, Ranks(), device="cpu", log=quiet, probe=FakeGpu(base=20 * GB))
    data = json.loads((tmp_path / "autotune.json").read_text())
    assert data["chosen"] is None and all(e["status"] == "does not fit" for e in data["candidates"])
    result, why = lookup_cache(tmp_path, data["key"])
    assert result is None and "nothing fitted" in why


def test_lookup_cache_reasons(tmp_path):
    key = validity_key(gpu_name="G", gpu_memory_bytes=GB, memory_fraction=0.0, model_cfg=ModelConfig(),
                       lr_patch_size=64, precision="bf16", world_size=2, torch_version="2.14.1")
    assert lookup_cache(tmp_path, key) == (None, "no autotune.json in the run yet")
    (tmp_path / "autotune.json").write_text("{not json")
    result, why = lookup_cache(tmp_path, key)
    assert result is None and "unreadable" in why
    result = tune([C(8)], FakeGpu())
    at.write_result(tmp_path, dataclasses.replace(result, key=key))
    assert at.lookup_cache(tmp_path, key)[0].chosen == C(8)
    for field, value in (("torch_version", "2.15.0"), ("precision", "fp16"), ("world_size", 4),
                         ("lr_patch_size", 48)):
        changed = dict(key, **{field: value})
        result, why = lookup_cache(tmp_path, changed)
        assert result is None and why.startswith("changed since it was measured") and field in why


# ------------------------------------------------------------------------------------------------
# The real probe on the CPU


TINY = ModelConfig(channels=8, extract_blocks=1, propagation_blocks=1, reconstruction_blocks=1, upsample_channels=8)


def tiny_probe(precision="no", copies=0):
    return CudaStepProbe(TINY, LossWeights(1.0, 0.5, 0.1), 8, precision, "cpu", trial_steps=1,
                         extra_param_copies=copies)


def test_step_probe_runs_real_steps_without_moving_the_rng():
    rng = torch.get_rng_state()
    probe = tiny_probe("bf16", copies=2)
    trial = probe(C(2, True, nhwc=False))
    assert torch.equal(rng, torch.get_rng_state())
    assert trial.fits and trial.s_per_iter > 0 and trial.error is None
    params = sum(p.numel() for p in build_model(TINY).parameters())
    assert trial.margin_bytes == 2 * 4 * params  # fp32 parameters: DDP buckets and the EMA


@pytest.mark.parametrize("err", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                 RuntimeError("CUDA error: out of memory"),
                                 RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED")])
def test_step_probe_turns_an_oom_into_a_misfit(monkeypatch, err):
    probe = tiny_probe()
    releases = []
    real_release = probe._release
    monkeypatch.setattr(probe, "_release", lambda: (releases.append(1), real_release()))

    def step(*args):
        raise err

    monkeypatch.setattr(at.TrainingStep, "run", step)  # the training step the probe runs
    trial = probe(C(2, nhwc=False))
    assert not trial.fits and at.is_oom_text(trial.error)
    assert len(releases) == 2  # before the trial and after the failure


def test_step_probe_raises_other_errors(monkeypatch):
    probe = tiny_probe()

    def step(*args):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(at.TrainingStep, "run", step)  # the training step the probe runs
    with pytest.raises(RuntimeError, match="mat1"):
        probe(C(2, nhwc=False))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_step_probe_on_a_gpu_measures_and_recovers_from_an_oom():
    device = torch.device("cuda", 0)
    precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    tiny = CudaStepProbe(TINY, LossWeights(1.0, 0.5, 0.1), 16, precision, device, trial_steps=2)
    first = tiny(C(2))
    assert first.fits and first.peak_bytes > 0 and first.s_per_iter > 0
    # The full-size model at batch 16 needs far more than 2 GiB: capped there, it must run out of memory.
    big = CudaStepProbe(ModelConfig(), LossWeights(1.0, 0.5, 0.1), 64, precision, device, trial_steps=1)
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(2 * GB / total, device)
    try:
        trial = big(C(16))
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
    assert not trial.fits and at.is_oom_text(trial.error)
    assert torch.cuda.memory_allocated(device) < 64 * 2**20  # the failed trial's tensors are gone
    again = tiny(C(2))
    assert again.fits


# ------------------------------------------------------------------------------------------------
# Two ranks over gloo: rank 1's GPU is smaller and, in the second search, slower


def _two_rank_worker(out_dir: str) -> None:
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)
    ranks = Ranks.from_accelerator(acc)
    rank = acc.process_index
    cap = int(0.8 * (16 if rank == 0 else 6) * GB)  # 12.8 GB and 4.8 GB
    cands = candidate_list(8, global_batch_size=32, world_size=2, channels_last=True, choose="fastest")
    report: dict = {}

    gpu = FakeGpu()
    result = run_autotune(cands, gpu, cap_bytes=cap, time_budget_s=110, choose="fastest", agree=ranks.all_max,
                          log=quiet, world_size=2)
    report["roomy"] = {"chosen": result.chosen.to_dict(), "calls": [c.to_dict() for c in gpu.calls],
                       "fits": [t.fits for t in result.trials]}

    clock = Clock()
    gpu = FakeGpu(clock=clock, trial_s=10.0 if rank == 0 else 40.0)
    result = run_autotune(cands, gpu, cap_bytes=cap, time_budget_s=110, choose="fastest", agree=ranks.all_max,
                          clock=clock, log=quiet, world_size=2)
    report["slow"] = {"chosen": result.chosen.to_dict(), "calls": [c.to_dict() for c in gpu.calls]}

    # The trainer's call: rank 0 writes, then both find the same valid file and reuse it.
    cfg = load_config(None, [f"run.dir={out_dir}/run", "data.batch_size_per_gpu=8", "train.global_batch_size=32"])
    plan = cuda_plan(memory=(16 if rank == 0 else 6) * GB)
    first = autotune(cfg, plan, Path(out_dir) / "run", ranks, device="cpu", log=quiet, probe=FakeGpu())
    acc.wait_for_everyone()
    again = FakeGpu()
    second = autotune(cfg, plan, Path(out_dir) / "run", ranks, device="cpu", log=quiet, probe=again)
    report["trainer"] = {"first": first.chosen.to_dict(), "second": second.chosen.to_dict(),
                         "source": second.source, "calls": len(again.calls),
                         "accum": second.batch_plan.grad_accum_steps}
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(report))


def test_two_ranks_agree_on_a_setting_that_fits_on_both(tmp_path):
    from accelerate import debug_launcher

    # (conftest's fresh_accelerate_state: a Trainer built by an earlier test would otherwise leave
    # Accelerate's one-process state behind, and both forked ranks would believe they are rank 0)
    debug_launcher(_two_rank_worker, args=(str(tmp_path),), num_processes=2)
    r0, r1 = (json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(2))
    # Same candidates tried in the same order and the same choice on both ranks.
    assert r0 == r1
    # (8, off) 9 GB fits only rank 0; (8, on) 4.2 GB fits both; (4, off) 5 GB only rank 0;
    # (2, off) 3 GB fits both and is the fastest per clip.
    assert r0["roomy"]["chosen"] == C(2).to_dict()
    assert r0["roomy"]["fits"] == [False, True, False, True]
    # Alone, rank 0 would have taken (8, off): the agreement is what changed it.
    assert tune(candidate_list(8, global_batch_size=32, world_size=2, channels_last=True), FakeGpu(),
                cap=int(0.8 * 16 * GB), choose="fastest").chosen == C(8)
    # Rank 1 needs 40 s a trial: after 2 trials (80 s) a third would end at 120 s > 110 s, and rank 0
    # (10 s a trial) stops with it.
    assert len(r0["slow"]["calls"]) == 2 and r0["slow"]["chosen"] == C(8, True).to_dict()
    assert r0["trainer"]["source"] == "cache" and r0["trainer"]["calls"] == 0
    assert r0["trainer"]["second"] == r0["trainer"]["first"]
    saved = json.loads((tmp_path / "run" / "autotune.json").read_text())
    assert saved["key"]["world_size"] == 2 and saved["key"]["gpu_memory_bytes"] == 6 * GB
