"""Checks only a GPU can make; every test here skips without CUDA (CI has none).

Run on a GPU machine with `./scripts/gpu_checks.sh` (which also records the benchmark figures).
"""

from __future__ import annotations

import json
import time

import pytest
import torch

from vsrpp_dist.config import load_config
from vsrpp_dist.training.run_dir import StartRequest

from .helpers import ROOT

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

SIX_GB_CAP = 0.8 * 6 * 2**30


@pytest.fixture(scope="module")
def gpu_shards(tmp_path_factory):
    """Real-photo shards with tiles large enough for the default 64 px LR patch (192 px GT)."""
    from vsrpp_dist.data.pack_command import main as pack
    from vsrpp_dist.tools.demo_data import write_frame_folders

    root = tmp_path_factory.mktemp("gpu")
    write_frame_folders(root / "frames", sequences=4, frames=20, frame_hw=(216, 288), seed=5)
    write_frame_folders(root / "val_frames", sequences=1, frames=6, frame_hw=(144, 192), seed=6)
    assert pack([str(root / "frames"), str(root / "train"), "--min-tile", "192", "--frames-per-sample", "10",
                 "--quiet"]) == 0
    assert pack(["--val", str(root / "val_frames"), str(root / "val"), "--quiet"]) == 0
    return root


@pytest.fixture(autouse=True)
def clean_state():
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    torch.cuda.empty_cache()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def run_trainer(config, run_dir, shards, *overrides):
    from vsrpp_dist.training.trainer import Trainer

    cfg = load_config(ROOT / "configs" / config, [
        f"run.dir={run_dir}", f"data.train_shards={shards / 'train'}", f"data.val_shards={shards / 'val'}",
        "train.total_steps=20", "train.log_every=5", "validation.every=20", "data.num_workers=2",
        "checkpoint.rolling_every=0", "checkpoint.regular_every=0", *overrides])
    started = time.perf_counter()
    trainer = Trainer(cfg, StartRequest(fresh=True), interactive=False)
    setup_s = time.perf_counter() - started
    torch.cuda.reset_peak_memory_stats()
    try:
        assert trainer.train() == 0
    finally:
        trainer.close()
    return trainer, setup_s, torch.cuda.max_memory_reserved()


def test_six_gb_mode_keeps_the_default_model_under_80_percent_of_6_gb(gpu_shards, tmp_path):
    trainer, setup_s, peak = run_trainer("6gb.yaml", tmp_path / "run", gpu_shards)
    assert trainer.device_plan.profile == "6gb"
    assert trainer.device_plan.mixed_precision in ("bf16", "fp16")
    assert peak <= SIX_GB_CAP, f"peak reserved {peak / 2**30:.2f} GB > 4.8 GB"
    tuned = json.loads((tmp_path / "run" / "autotune.json").read_text())
    assert tuned["chosen"] is not None and tuned["seconds"] < 120
    assert trainer.batches.global_batch_size == 8  # kept through accumulation


def test_default_config_trains_in_bf16_with_telemetry(gpu_shards, tmp_path):
    trainer, setup_s, peak = run_trainer("default.yaml", tmp_path / "run", gpu_shards)
    assert trainer.state.nonfinite_total == 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run" / "logs"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert "System/VRAM_GB" in tags
    tuned = json.loads((tmp_path / "run" / "autotune.json").read_text())
    assert tuned["seconds"] < 120 and tuned["chosen"] is not None
    assert peak <= 0.8 * torch.cuda.get_device_properties(0).total_memory


def test_imresize_and_metrics_agree_between_cpu_and_gpu():
    from vsrpp_dist.imresize import downscale, upscale
    from vsrpp_dist.metrics import psnr, ssim

    torch.manual_seed(0)
    gt = torch.rand(2, 3, 48, 60)
    lr_cpu, lr_gpu = downscale(gt), downscale(gt.cuda()).cpu()
    assert torch.equal(lr_cpu, lr_gpu) or (lr_cpu - lr_gpu).abs().max() <= 1 / 255
    up_cpu, up_gpu = upscale(lr_cpu), upscale(lr_cpu.cuda()).cpu()
    assert (up_cpu - up_gpu).abs().max() < 1e-5
    assert torch.allclose(psnr(up_cpu.clamp(0, 1), gt), psnr(up_gpu.clamp(0, 1).cuda(), gt.cuda()).cpu(), atol=1e-6)
    assert torch.allclose(ssim(up_cpu.clamp(0, 1), gt), ssim(up_gpu.clamp(0, 1).cuda(), gt.cuda()).cpu(), atol=1e-6)


def test_deformable_conv_on_the_gpu_equals_the_cpu_decomposition():
    """On CUDA the alignment uses torchvision's deform_conv2d kernel, on CPUs the grid_sample
    decomposition; both must compute the same alignment."""
    from vsrpp_dist.model.alignment import deform_conv2d, deform_conv2d_by_sampling

    torch.manual_seed(0)
    x, offset = torch.randn(2, 16, 24, 20), 3 * torch.randn(2, 18 * 8, 24, 20)
    mask, weight, bias = torch.rand(2, 9 * 8, 24, 20), torch.randn(16, 16, 3, 3), torch.randn(16)
    cpu = deform_conv2d_by_sampling(x, offset, weight, bias, padding=1, mask=mask)
    gpu = deform_conv2d(*(t.cuda() for t in (x, offset, weight, bias)), padding=1, mask=mask.cuda()).cpu()
    assert (cpu - gpu).abs().max().item() < 1e-3


@pytest.mark.parametrize("alignment", ["flow", "flow_deform"])
def test_aligned_default_model_trains_in_bf16_with_its_figures(gpu_shards, tmp_path, alignment):
    trainer, _, peak = run_trainer("default.yaml", tmp_path / "run", gpu_shards, f"model.alignment={alignment}",
                                   "autotune.enabled=false")
    assert trainer.state.nonfinite_total == 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run" / "logs"))
    events.Reload()
    assert "Activity/Flow_Magnitude" in set(events.Tags()["scalars"])
    print(f"\n{alignment}: peak reserved {peak / 2**30:.2f} GB, final KI_PSNR "
          f"{trainer.state.last_validation.get('KI_PSNR', float('nan')):.3f}")


def test_the_realistic_degradation_runs_its_step_side_on_the_gpu():
    """Blur, resize and noise on the GPU, JPEG and codec on the CPU between them: the same draws give
    the same clips twice, GT/3 in size; without noise (whose generators differ by device) the GPU's
    clips are the CPU's up to float rounding carried through 8-bit codecs."""
    import numpy as np

    from vsrpp_dist.data.degradation import build_degradation

    for overrides, tolerance in (([], None), (["degradation.first.noise.prob=0", "degradation.second.noise.prob=0"], 2 / 255)):
        d = build_degradation(load_config(None, ["degradation.kind=realistic", *overrides]).degradation)
        plans = [d.draw(np.random.default_rng(i), 5) for i in range(4)]
        batch = {k: torch.stack([p[k] for p in plans]) for k in plans[0]}
        gt = torch.rand(4, 5, 3, 192, 192, generator=torch.Generator().manual_seed(0))
        on_gpu = d.apply(gt.cuda(), batch)
        assert on_gpu.is_cuda and on_gpu.shape == (4, 5, 3, 64, 64)
        assert torch.equal(on_gpu, d.apply(gt.cuda(), batch))
        if tolerance is not None:
            assert (on_gpu.cpu() - d.apply(gt, batch)).abs().mean() < tolerance
