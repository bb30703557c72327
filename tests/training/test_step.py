"""The one training step: the trainer runs it through Accelerate, auto-tune's probe and `bench step` in
one process (`SingleProcess`); both must take the same step, or the probe measures another one."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator

from vsrpp_dist.config import SCALE, ModelConfig, OptimConfig, load_config
from vsrpp_dist.imresize import downscale
from vsrpp_dist.model.loss import LossWeights
from vsrpp_dist.training import autotune as at
from vsrpp_dist.training.autotune import Candidate, CudaStepProbe, first_photometric_weight
from vsrpp_dist.training.builder import build_optimizer, build_training_model
from vsrpp_dist.training.step import SingleProcess, TrainingStep

from ..helpers import TINY

FLOW = ModelConfig(channels=8, extract_blocks=1, propagation_blocks=1, reconstruction_blocks=1, upsample_channels=8,
                   alignment="flow", flow_channels=4, flow_levels=2, max_flow=4.0)
WEIGHTS = LossWeights(1.0, 0.5, 0.1)


def micro_batches(count: int, batch: int = 2, lr_edge: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(5)
    out = []
    for _ in range(count):
        gt = torch.rand(batch, FLOW.num_frames, 3, lr_edge * SCALE, lr_edge * SCALE, generator=gen)
        out.append((gt, downscale(gt.flatten(0, 1)).unflatten(0, gt.shape[:2])))
    return out


def model_and_optimizer():
    torch.manual_seed(0)
    model = build_training_model(FLOW, device="cpu", activation_checkpointing=False, channels_last=False)
    optimizer, _ = build_optimizer(model, OptimConfig(), alignment_lr_factor=0.5, device_type="cpu")
    for group in optimizer.param_groups:
        group["lr"] = 1e-3
    return model, optimizer


def test_one_process_takes_the_step_the_trainer_takes_through_accelerate():
    """Two micro-batches accumulated, the photometric term on, a clip threshold low enough to clip: the
    weights after the step are the same whether Accelerate or SingleProcess runs it."""
    batches = micro_batches(2)

    model, optimizer = model_and_optimizer()
    acc = Accelerator(cpu=True)
    model, optimizer = acc.prepare(model, optimizer)
    acc.gradient_accumulation_steps = 2
    TrainingStep(acc, model, optimizer).run(batches, WEIGHTS, photometric_weight=0.1, clip_threshold=0.05)
    through_accelerate = [p.detach().clone() for p in model.parameters()]

    plain_model, plain_optimizer = model_and_optimizer()
    runner = SingleProcess("no", "cpu", gradient_accumulation_steps=2)
    TrainingStep(runner, plain_model, runner.scaled(plain_optimizer)).run(batches, WEIGHTS, photometric_weight=0.1,
                                                                          clip_threshold=0.05)
    assert all(torch.equal(a, b) for a, b in zip(through_accelerate, plain_model.parameters()))

    # and the step did something: the photometric term and the clipping change the result
    other_model, other_optimizer = model_and_optimizer()
    runner = SingleProcess("no", "cpu", gradient_accumulation_steps=2)
    TrainingStep(runner, other_model, runner.scaled(other_optimizer)).run(batches, WEIGHTS, photometric_weight=0.0,
                                                                          clip_threshold=0.05)
    assert not all(torch.equal(a, b) for a, b in zip(through_accelerate, other_model.parameters()))


def test_a_step_with_a_nonfinite_loss_leaves_the_weights_alone():
    model, optimizer = model_and_optimizer()
    before = [p.detach().clone() for p in model.parameters()]
    runner = SingleProcess("no", "cpu")
    step = TrainingStep(runner, model, runner.scaled(optimizer))
    real = step.loss_fn

    def nan_loss(sr, gt, weights):
        parts = real(sr, gt, weights)
        return dict(parts, total=parts["total"] * float("nan"))

    step.loss_fn = nan_loss
    step.run(micro_batches(1), WEIGHTS, photometric_weight=0.0, clip_threshold=1.0)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("global_batch, expected", [(0, 1), (4, 2), (16, 2)])
def test_the_probe_accumulates_as_the_candidates_batch_plan_does(monkeypatch, global_batch, expected):
    """Batch 2 on one rank: no accumulation with global batch 2 (0 = batch x ranks), else the trial step
    accumulates TRIAL_MICRO_BATCHES micro-batches (the gradients of the first are held during the
    second's forward, as in the run), with the photometric weight and the clip threshold it was given."""
    seen = []

    def run(self, batches, weights, photometric_weight, clip_threshold):
        seen.append((len(list(batches)), self.accelerator.gradient_accumulation_steps, photometric_weight,
                     clip_threshold))

    monkeypatch.setattr(at.TrainingStep, "run", run)
    probe = CudaStepProbe(FLOW, WEIGHTS, 8, "no", "cpu", trial_steps=2, photometric_weight=0.1, clip_threshold=0.7,
                          global_batch_size=global_batch, world_size=1)
    trial = probe(Candidate(2, False, False))
    assert trial.fits
    accumulation = max(1, global_batch // 2)
    assert seen == [(expected, accumulation, 0.1, 0.7)] * 3  # the warm-up step and two timed ones


def test_the_probe_weighs_the_photometric_term_as_the_first_training_step():
    aligned = load_config(TINY, ["model.alignment=flow", "alignment_training.photometric_weight=0.2"])
    assert first_photometric_weight(aligned) == pytest.approx(0.2)
    assert first_photometric_weight(load_config(TINY, ["alignment_training.photometric_weight=0.2"])) == 0.0
