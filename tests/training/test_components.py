"""Small components with tests of their own: the weight EMA, stop signals, GPU telemetry without a GPU,
the packed validation set, and `bench step`."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from torch import nn

from vsrpp_dist.config import load_config
from vsrpp_dist.data.validation_set import ValidationSet
from vsrpp_dist.errors import ShardFormatError
from vsrpp_dist.signals import StopSignals
from vsrpp_dist.training.ema import WeightEMA
from vsrpp_dist.training.telemetry import TELEMETRY_KEYS, GpuTelemetry

from ..helpers import TINY

# -- the weight EMA ----------------------------------------------------------------------------------


def test_ema_follows_the_weights_with_its_decay_and_survives_a_checkpoint():
    model = nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = WeightEMA(model, load_config(None, ["ema.enabled=true", "ema.decay=0.9"]).ema)
    assert ema.enabled and torch.equal(ema.module.weight, model.weight)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)  # the first update of AveragedModel copies
    ema.update(model)
    with torch.no_grad():
        model.weight.fill_(2.0)
    ema.update(model)
    # 0.9 * 1 + 0.1 * 2: the average lags the live weights by the decay
    assert torch.allclose(ema.module.weight, torch.full_like(model.weight, 1.1))
    assert not ema.module.weight.requires_grad
    restored = WeightEMA(nn.Linear(3, 2), load_config(None, ["ema.enabled=true", "ema.decay=0.9"]).ema)
    restored.load_state_dict(ema.state_dict())
    assert torch.equal(restored.module.weight, ema.module.weight)


def test_a_disabled_ema_holds_nothing_and_loads_anything():
    ema = WeightEMA(nn.Linear(3, 2), load_config(None, ["ema.enabled=false"]).ema)
    assert not ema.enabled and ema.module is None
    ema.update(nn.Linear(3, 2))
    assert ema.state_dict() == {"enabled": False, "state": None}
    ema.load_state_dict({"enabled": True, "state": {"whatever": 1}})  # enabling later starts afresh


# -- stop signals ------------------------------------------------------------------------------------


def test_the_first_stop_signal_sets_the_flag_and_the_second_leaves_at_once():
    before = signal.getsignal(signal.SIGTERM)
    stop = StopSignals()
    try:
        assert not stop.requested and stop.exit_code == 0
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.received == "SIGTERM" and stop.exit_code == 128 + signal.SIGTERM
        with pytest.raises(KeyboardInterrupt, match="second stop signal \\(SIGINT after SIGTERM\\)"):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGTERM) == before


# -- telemetry ---------------------------------------------------------------------------------------


def test_telemetry_is_empty_without_a_gpu():
    telemetry = GpuTelemetry(torch.device("cpu"))
    assert not telemetry.available and telemetry.read() == {}
    assert len(set(TELEMETRY_KEYS)) == len(TELEMETRY_KEYS) and "VRAM_GB" in TELEMETRY_KEYS


# -- the validation set ------------------------------------------------------------------------------


def test_validation_set_yields_whole_sequences_in_frame_order(val_shards):
    manifest = json.loads((val_shards / "manifest.json").read_text())
    sequences = list(ValidationSet(val_shards))
    assert [s.name for s in sequences] == [s["name"] for s in manifest["sequences"]]
    for seq, meta in zip(sequences, manifest["sequences"]):
        assert seq.gt.dtype == torch.uint8 and seq.gt.shape[0] == meta["num_frames"] and seq.lr is None
        assert seq.gt.shape[-2] % 3 == 0 and seq.gt.shape[-1] % 3 == 0
    assert all(s.gt.float().std() > 0 for s in sequences)  # real frames, not blanks
    assert len(list(ValidationSet(val_shards, max_sequences=1))) == 1


def test_validation_set_refuses_a_training_split_and_a_missing_shard(train_shards, val_shards, tmp_path):
    import shutil

    with pytest.raises(ShardFormatError, match="data.val_shards needs shards packed with --val"):
        ValidationSet(train_shards)
    copy = tmp_path / "val"
    shutil.copytree(val_shards, copy)
    first = json.loads((copy / "manifest.json").read_text())["shards"][0]["file"]
    (copy / first).unlink()
    with pytest.raises(ShardFormatError, match=f"validation shard {first} is missing"):
        ValidationSet(copy)


# -- bench step --------------------------------------------------------------------------------------


def test_bench_step_measures_the_trainer_against_the_bare_loop(train_shards, tmp_path):
    from vsrpp_dist.tools import bench

    out = tmp_path / "step.json"
    assert bench.main(["step", "--config", str(TINY), "--shards", str(train_shards), "--steps", "3", "--warmup", "1",
                       "--json", str(out), "data.num_workers=0"]) == 0
    figures = json.loads(out.read_text())
    assert figures["trainer"]["s_per_iter"] > 0 and figures["bare"]["s_per_iter"] > 0
    assert figures["forward_gflop_per_clip"] > 0
    assert figures["train_gflop_per_clip"] == pytest.approx(3 * figures["forward_gflop_per_clip"])
    assert len(figures["bare"]["spread"]) == 2  # before and after the trainer run
