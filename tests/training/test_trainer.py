"""The training system in one process: what a run writes, the start modes, checkpoints, EMA, guards.

These run the real Trainer in-process (one CPU rank) on the tiny config; the multi-rank behaviour is
tested through the real launcher in test_e2e_launcher.py.
"""

from __future__ import annotations

import json
import math
import os
import shutil

import pytest
import torch

from vsrpp_dist.config import load_config
from vsrpp_dist.errors import TrainingError
from vsrpp_dist.model.architecture import build_model
from vsrpp_dist.training.checkpoint import CheckpointError, list_complete
from vsrpp_dist.weights import read_weights
from vsrpp_dist.training.recovery import peer_gone_reason, says_peer_gone
from vsrpp_dist.training.run_dir import StartError, StartRequest, decide_start
from vsrpp_dist.training.trainer import Trainer

from ..helpers import make_config, read_scalars, train

DESIGN_TAGS = [
    "Loss/L1", "Loss/MS", "Loss/Grad", "Loss/Total", "Training/LearningRate",
    "Adaptive/L1_Weight", "Adaptive/MS_Weight", "Adaptive/Grad_Weight", "Adaptive/GradientClip",
    "Adaptive/AggressiveMode", "Quality/LR_Quality", "Quality/KI_Quality", "Quality/Improvement",
    "Metrics/LR_PSNR", "Metrics/LR_SSIM", "Metrics/KI_PSNR", "Metrics/KI_SSIM",
    "System/Speed_s_per_iter", "Gradients/TotalNorm", "Activity/Backward_Trunk_Avg",
    "Activity/Forward_Trunk_Avg", "LR_Schedule/Phase", "Events/Checkpoints",
    # issue 4: global throughput and the time spent waiting for data
    "System/Clips_per_s", "System/Data_Wait_Fraction",
    # issue 25: temporal consistency of the validation outputs (tOF only with validation.tof)
    "Temporal/LR_TDE", "Temporal/KI_TDE",
]
GPU_ONLY_TAGS = ["System/VRAM_GB"]  # with NVML also GPU_Util_pct, Temperature_C, Power_W, ...


@pytest.fixture(scope="module")
def finished_run(train_shards, val_shards, tmp_path_factory):
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    run_dir = tmp_path_factory.mktemp("trainer") / "run"
    trainer, code = train(make_config(run_dir, train_shards, val_shards, "ema.enabled=true", "ema.decay=0.5"))
    assert code == 0
    return run_dir, trainer


def test_every_design_tensorboard_tag_is_written(finished_run):
    run_dir, _ = finished_run
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "logs"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    missing = [t for t in DESIGN_TAGS if t not in scalars]
    assert not missing, f"missing TensorBoard tags: {missing}"
    assert not [t for t in GPU_ONLY_TAGS if t in scalars], "GPU tags are absent on CPU, not zero"
    images = events.Tags()["images"]
    assert images and all(t.startswith("Validation/") for t in images)
    losses = read_scalars(run_dir, "Loss/Total")
    assert sorted(losses) == [1, 2, 4, 6, 8]
    assert all(math.isfinite(v) for v in losses.values())


def test_run_directory_holds_what_the_design_promises(finished_run):
    run_dir, trainer = finished_run
    assert load_config(run_dir / "config.yaml") == trainer.cfg
    log = (run_dir / "training.log").read_text()
    for expected in ("parameters", "batch: 2 per rank", "validation at step 4", "checkpoint saved", "finished"):
        assert expected in log
    status = (run_dir / "training_status.txt").read_text()
    for field in ("step", "phase", "loss (last step)", "loss weights", "learning rate", "speed", "ETA", "VRAM",
                  "last validation", "best so far", "last checkpoint", "aggressive mode"):
        assert f"\n{field} " in status, field
    assert "8 / 8" in status
    latest = os.readlink(run_dir / "checkpoint_latest")
    assert latest == "checkpoints/final-00000008"
    assert (run_dir / "checkpoint_best").resolve().is_dir()


def test_exported_weights_load_without_accelerate_and_are_the_ema(finished_run):
    run_dir, trainer = finished_run
    weights = read_weights(run_dir / "checkpoint_latest")
    assert weights.path.name == "model.safetensors" and weights.ema is True and weights.step == 8
    model = build_model(load_config(None, [f"model.{k}={v}" for k, v in weights.model_config.items()]).model)
    model.load_state_dict(weights.state_dict)
    live = trainer.accelerator.unwrap_model(trainer.model).state_dict()
    assert any(not torch.equal(weights.state_dict[k], live[k].cpu()) for k in live), "EMA differs from live"
    ema = trainer.ema.module.state_dict()
    assert all(torch.equal(weights.state_dict[k], ema[k].cpu()) for k in ema)
    # plain safetensors reads it too: the file others share models in, loadable without this package
    from safetensors.torch import load_file

    assert load_file(run_dir / "checkpoint_latest" / "model.safetensors").keys() == ema.keys()


def test_rerun_without_flags_refuses_naming_both_flags(finished_run):
    run_dir, trainer = finished_run
    with pytest.raises(StartError) as err:
        decide_start(run_dir, StartRequest(), num_processes=1, interactive=False)
    assert "--resume" in str(err.value) and "--fresh" in str(err.value)
    with pytest.raises(StartError, match="--resume"):
        decide_start(run_dir, StartRequest(), num_processes=2, interactive=True)


def test_interactive_single_process_asks_fortsetzen_or_loeschen(finished_run):
    run_dir, _ = finished_run
    answers = iter(["?", "F"])
    prompts = []
    decision = decide_start(run_dir, StartRequest(), num_processes=1, interactive=True,
                            read=lambda p: prompts.append(p) or next(answers))
    assert decision.mode == "resume" and "[F]ortsetzen" in prompts[0] and "[L]öschen" in prompts[0]
    assert len(prompts) == 2  # an unknown answer asks again
    assert decide_start(run_dir, StartRequest(), num_processes=1, interactive=True, read=lambda p: "l").mode == "fresh"


def test_fresh_moves_the_old_run_aside(train_shards, val_shards, tmp_path):
    run_dir = tmp_path / "run"
    cfg = make_config(run_dir, train_shards, val_shards, "train.total_steps=2", "validation.every=0")
    train(cfg)
    marker = run_dir / "notes.txt"
    marker.write_text("mine")
    train(cfg, StartRequest(fresh=True))
    backups = list(tmp_path.glob("run.bak-*"))
    assert len(backups) == 1 and (backups[0] / "notes.txt").read_text() == "mine"
    assert (backups[0] / "checkpoint_latest").resolve().is_dir()
    assert not (run_dir / "notes.txt").exists()


def test_resume_continues_step_lr_and_optimizer_state(train_shards, val_shards, tmp_path):
    run_dir = tmp_path / "run"
    trainer, _ = train(make_config(run_dir, train_shards, val_shards, "train.total_steps=4", "validation.every=0"))
    opt_state = trainer.optimizer.state_dict()["state"]
    resumed = Trainer(make_config(run_dir, train_shards, val_shards, "train.total_steps=8", "validation.every=0"),
                      StartRequest(resume="latest"), interactive=False)
    try:
        assert resumed.state.step == 4 and resumed.state.batches_consumed == 4
        assert resumed.schedule.state == trainer.schedule.state  # the LR is a function of step and this
        assert resumed.checkpoints.last_saved == "final-00000004"
        new_state = resumed.optimizer.state_dict()["state"]
        assert all(torch.equal(opt_state[k]["exp_avg"], new_state[k]["exp_avg"]) for k in opt_state)
        assert resumed.train() == 0 and resumed.state.step == 8
    finally:
        resumed.close()


def test_incompatible_checkpoint_is_refused_clearly(train_shards, val_shards, tmp_path):
    run_dir = tmp_path / "run"
    train(make_config(run_dir, train_shards, val_shards, "train.total_steps=2", "validation.every=0"))
    with pytest.raises(CheckpointError, match="model.channels is 12 but the checkpoint was trained with 8"):
        Trainer(make_config(run_dir, train_shards, val_shards, "model.channels=12"), StartRequest(resume="latest"),
                interactive=False)


def test_corrupt_newest_checkpoint_falls_back_to_the_older_one(train_shards, val_shards, tmp_path, caplog):
    run_dir = tmp_path / "run"
    train(make_config(run_dir, train_shards, val_shards, "train.total_steps=8", "validation.every=0",
                      "checkpoint.rolling_every=4", "checkpoint.regular_every=0"))
    newest = list_complete(run_dir)[0].path
    state = newest / "training_state.safetensors"
    state.write_bytes(state.read_bytes()[:100])
    trainer = Trainer(make_config(run_dir, train_shards, val_shards, "train.total_steps=8", "validation.every=0"),
                      StartRequest(resume="latest"), interactive=False)
    try:
        assert trainer.state.step == 4
        log = (run_dir / "training.log").read_text()
        assert f"checkpoint {newest.name}" in log and "trying the next older one" in log
    finally:
        trainer.close()


def test_incomplete_checkpoints_are_ignored(train_shards, val_shards, tmp_path):
    run_dir = tmp_path / "run"
    train(make_config(run_dir, train_shards, val_shards, "train.total_steps=4", "validation.every=0"))
    complete = {i.path.name for i in list_complete(run_dir)}
    (run_dir / "checkpoints" / ".tmp-rolling-00000099").mkdir()
    half = run_dir / "checkpoints" / "rolling-00000098"
    shutil.copytree(run_dir / "checkpoint_latest", half)
    (half / "meta.json").unlink()
    assert {i.path.name for i in list_complete(run_dir)} == complete


def test_world_size_guard_catches_the_silent_single_process_trap(train_shards, val_shards, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(StartError, match="WORLD_SIZE=2 but Accelerate runs 1 process"):
        Trainer(make_config(tmp_path / "run", train_shards, val_shards), interactive=False)


def nan_loss_at(steps, always=False):
    """Patch the trainer's loss: the first attempt at each optimizer step in `steps` (1-based) gives a
    NaN loss (every attempt with `always`); a skipped step keeps its number and is tried again."""
    def patch(trainer):
        real = trainer.training_step.loss_fn
        fired = set()

        def loss_fn(sr, gt, weights):
            parts = real(sr, gt, weights)
            step = trainer.state.step + 1
            if step in steps and (always or step not in fired):
                fired.add(step)
                parts = dict(parts, total=parts["total"] * float("nan"))
            return parts

        trainer.training_step.loss_fn = loss_fn
    return patch


def test_nonfinite_steps_are_skipped_and_logged(train_shards, val_shards, tmp_path):
    run_dir = tmp_path / "run"
    cfg = make_config(run_dir, train_shards, val_shards, "train.total_steps=6", "validation.every=0")
    trainer, code = train(cfg, patch=nan_loss_at({3}))
    assert code == 0 and trainer.state.step == 6
    assert trainer.state.nonfinite_total == 1 and trainer.state.batches_consumed == 7
    assert "non-finite loss or gradient" in (run_dir / "training.log").read_text()
    for p in trainer.model.parameters():
        assert torch.isfinite(p).all()


def test_repeated_nonfinite_steps_roll_back_with_a_lower_lr(train_shards, val_shards, tmp_path):
    run_dir = tmp_path / "run"
    cfg = make_config(run_dir, train_shards, val_shards, "train.total_steps=8", "validation.every=0",
                      "checkpoint.rolling_every=4", "guard.max_nonfinite_in_row=2", "guard.rollback_lr_factor=0.5")
    bad = {6}
    calls = {"n": 0}

    def patch(trainer):
        real = trainer.training_step.loss_fn

        def loss_fn(sr, gt, weights):
            parts = real(sr, gt, weights)
            if trainer.state.step + 1 in bad and calls["n"] < 2:  # the 6th step fails twice, then recovers
                calls["n"] += 1
                parts = dict(parts, total=parts["total"] * float("inf"))
            return parts

        trainer.training_step.loss_fn = loss_fn

    trainer, code = train(cfg, patch=patch)
    assert code == 0 and trainer.state.step == 8
    assert trainer.state.rollbacks == 1 and trainer.schedule.state.rollbacks == 1
    log = (run_dir / "training.log").read_text()
    assert "rolled back to rolling-00000004" in log
    from vsrpp_dist.training.lr_schedule import base_lr
    assert trainer.schedule.learning_rate(6) == pytest.approx(0.5 * base_lr(6, 1e-3, 1e-5, 2, 8))
    assert read_scalars(run_dir, "LR_Schedule/Phase")[8] == 2.0


def failing_steps(bad_step: int, failures: int):
    """A patch: the loss of optimizer step `bad_step` is infinite the first `failures` times it is tried."""
    calls = {"n": 0}

    def patch(trainer):
        real = trainer.training_step.loss_fn

        def loss_fn(sr, gt, weights):
            parts = real(sr, gt, weights)
            if trainer.state.step + 1 == bad_step and calls["n"] < failures:
                calls["n"] += 1
                parts = dict(parts, total=parts["total"] * float("inf"))
            return parts

        trainer.training_step.loss_fn = loss_fn

    return patch


def test_every_rollback_to_the_same_checkpoint_lowers_the_lr_again(train_shards, val_shards, tmp_path):
    """Two rollbacks to one checkpoint: the LR is x0.5 twice (it was restored with the checkpoint's
    rollback count and lowered once only, so repeated blow-ups looped at the same LR)."""
    from vsrpp_dist.training.lr_schedule import base_lr

    run_dir = tmp_path / "run"
    cfg = make_config(run_dir, train_shards, val_shards, "train.total_steps=8", "validation.every=0",
                      "checkpoint.rolling_every=4", "guard.max_nonfinite_in_row=2", "guard.rollback_lr_factor=0.5")
    trainer, code = train(cfg, patch=failing_steps(6, failures=4))  # fails twice in a row, twice
    assert code == 0 and trainer.state.step == 8
    assert trainer.state.rollbacks == 2 and trainer.schedule.state.rollbacks == 2
    assert trainer.schedule.learning_rate(6) == pytest.approx(0.25 * base_lr(6, 1e-3, 1e-5, 2, 8))
    log = (run_dir / "training.log").read_text()
    assert log.count("rolled back to rolling-00000004") == 2 and "(rollback 2)" in log


def test_training_stops_after_guard_max_rollbacks(train_shards, val_shards, tmp_path):
    cfg = make_config(tmp_path / "run", train_shards, val_shards, "train.total_steps=8", "validation.every=0",
                      "checkpoint.rolling_every=4", "guard.max_nonfinite_in_row=1", "guard.max_rollbacks=3")
    with pytest.raises(TrainingError, match=r"after 3 rollbacks \(guard.max_rollbacks=3\)") as caught:
        train(cfg, patch=failing_steps(6, failures=100))
    assert "\n" not in str(caught.value)


def test_nonfinite_without_any_checkpoint_stops_with_advice(train_shards, val_shards, tmp_path):
    cfg = make_config(tmp_path / "run", train_shards, val_shards, "validation.every=0", "checkpoint.rolling_every=0",
                      "checkpoint.regular_every=0", "guard.max_nonfinite_in_row=2")
    with pytest.raises(TrainingError, match="no checkpoint to roll back to.*lower optim.lr_peak"):
        train(cfg, patch=nan_loss_at({3}, always=True))


def test_plateau_halves_lr_and_triggers_recovery(train_shards, val_shards, tmp_path):
    run_dir = tmp_path / "run"
    cfg = make_config(run_dir, train_shards, val_shards, "validation.every=2", "plateau.patience=2",
                      "train.total_steps=8")
    scores = iter([30.0, 29.0, 28.0, 27.5])

    def patch(trainer):
        def run(model, step):
            ki = next(scores)
            return {"LR_PSNR": 25.0, "LR_SSIM": 0.8, "KI_PSNR": ki, "KI_SSIM": 0.9, "LR_PSNR_RGB": 24.0,
                    "LR_SSIM_RGB": 0.8, "KI_PSNR_RGB": ki - 1, "KI_SSIM_RGB": 0.9, "LR_Quality": 80.0,
                    "KI_Quality": 90.0, "Improvement": ki - 25.0, "frames": 1.0, "sequences": 1.0}
        trainer.validator.run = run

    trainer, _ = train(cfg, patch=patch)
    assert trainer.schedule.state.reductions == 1 and trainer.adaptive.recoveries == 1
    assert "plateau: KI_PSNR has not improved" in (run_dir / "training.log").read_text()
    # the best checkpoint is the first validation's (30 dB at step 2)
    assert (run_dir / "checkpoint_best").resolve().name.endswith("-00000002")
    assert json.loads(((run_dir / "checkpoint_best") / "meta.json").read_text())["step"] == 2


def test_a_failed_checkpoint_write_keeps_the_previous_one_and_training_goes_on(train_shards, val_shards, tmp_path):
    """Disk full while checkpointing (an injected OSError from the writer): the partial folder is
    removed, checkpoint_latest still points at the previous complete checkpoint, training continues."""
    run_dir = tmp_path / "run"
    cfg = make_config(run_dir, train_shards, val_shards, "validation.every=0", "checkpoint.rolling_every=2",
                      "checkpoint.regular_every=0", "checkpoint.rolling_keep=5", "train.total_steps=6")

    def patch(trainer):
        real = trainer.contents.write_state

        def write_state(folder):
            if "00000004" in str(folder):
                raise OSError(28, "No space left on device")
            return real(folder)

        trainer.contents.write_state = write_state

    trainer, code = train(cfg, patch=patch)
    assert code == 0 and trainer.state.step == 6
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert names == ["final-00000006", "rolling-00000002"], names
    log = (run_dir / "training.log").read_text()
    assert "checkpoint rolling-00000004 could not be written (OSError: [Errno 28] No space left on device); " \
           "rolling-00000002 stays the latest; training continues" in log


@pytest.mark.parametrize("threshold", [1e-4, 1e6])
def test_gradients_reach_the_optimizer_clipped_to_the_adaptive_threshold(train_shards, val_shards, tmp_path,
                                                                         threshold):
    """Clipping is skipped when the (all-reduced) norm is under the threshold: both sides are checked."""
    seen = []

    def patch(trainer):
        trainer.adaptive.clip_threshold = threshold
        trainer.adaptive.maybe_update = lambda step: False  # keep the threshold fixed for the run
        real_step = trainer.optimizer.step

        def step(*args, **kwargs):
            grads = [p.grad for p in trainer.training_step.params if p.grad is not None]
            seen.append(float(torch.nn.utils.get_total_norm(grads)))
            return real_step(*args, **kwargs)

        trainer.optimizer.step = step
        real_train_step = trainer.train_step

        def train_step(batches):
            result = real_train_step(batches)
            norms.append(result.stats.grad_norm)
            return result

        trainer.train_step = train_step

    norms = []
    trainer, code = train(make_config(tmp_path / "run", train_shards, val_shards, "train.total_steps=3",
                                      "validation.every=0"), patch=patch)
    assert code == 0 and len(seen) == len(norms) == 3
    for applied, raw in zip(seen, norms):
        assert applied == pytest.approx(min(raw, threshold), rel=1e-4)
    assert all(raw > 1e-4 for raw in norms)  # the small threshold really clipped


def test_a_vanished_peer_is_told_apart_from_a_bug():
    """What gloo and NCCL raise when the other end of a collective is gone ends a rank with one line
    (RankLostError); any other error keeps its traceback."""
    assert says_peer_gone(RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by "
                                    "peer [127.0.0.1]:41207"))
    assert says_peer_gone(RuntimeError("[gloo/transport/tcp/pair.cc:598] Connection reset by peer"))
    assert says_peer_gone(torch.distributed.DistNetworkError("Broken pipe"))
    assert not says_peer_gone(RuntimeError("The size of tensor a (4) must match the size of tensor b (5)"))
    assert not says_peer_gone(ValueError("Connection closed by peer"))  # not a collective's error
    gloo = RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:561] Connection closed by peer "
                        "[127.0.0.1]:41207\nRank 0 is most likely dead; see its output before reporting an error.")
    assert peer_gone_reason(gloo) == "Connection closed by peer"  # the one line names the cause, not a path


def test_the_step_record_names_every_all_reduced_value():
    """The step's one all-reduced vector is unpacked by name into StepStats (no positional indexing);
    what is not a per-step mean (the data counters, the stop flag) goes to TrainState and the loop."""
    import dataclasses

    from vsrpp_dist.training.state import REDUCED, StepStats

    names = {f.name for f in dataclasses.fields(StepStats)}
    assert len(set(REDUCED)) == len(REDUCED)
    assert names - set(REDUCED) == {"photometric_weight"}  # known on the host, not reduced
    assert set(REDUCED) - names == {"skipped_samples", "bad_shards", "stop"}


def test_logs_and_status_show_the_lr_the_step_used(finished_run):
    run_dir, trainer = finished_run
    logged = read_scalars(run_dir, "Training/LearningRate")
    for step, value in logged.items():
        assert value == pytest.approx(trainer.schedule.learning_rate(step - 1))
    status = (run_dir / "training_status.txt").read_text()
    assert f"learning rate {trainer.schedule.learning_rate(7):.4g}" in " ".join(status.split())
