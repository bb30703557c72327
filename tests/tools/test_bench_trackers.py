"""Smoke test of `python -m vsrpp_dist.bench trackers` on the tiny config: a row per tracker set, the time
spent inside each tracker measured, nothing dropped. No timing thresholds (the figures are in BENCHMARKS.md)."""

from __future__ import annotations

import json

import pytest

from vsrpp_dist.tools import bench

from ..helpers import TINY


def test_trackers_bench_measures_each_tracker_next_to_tensorboard_alone(train_shards, tmp_path, capsys, monkeypatch):
    pytest.importorskip("mlflow")
    pytest.importorskip("wandb")
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "")  # recorded, so that undo removes what the run sets
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")
    out = tmp_path / "figures.json"
    assert bench.main(["trackers", "--config", str(TINY), "--steps", "4", "--warmup", "1", "--rounds", "2",
                       "--json", str(out), f"data.train_shards={train_shards}", "train.log_every=2"]) == 0
    report = capsys.readouterr().out
    assert "tensorboard + mlflow" in report and "tensorboard + wandb" in report
    rows = json.loads(out.read_text())["rows"]
    assert list(rows) == ["tensorboard", "mlflow", "wandb"]
    assert rows["tensorboard"]["tracker_ms_per_step"] is None and rows["tensorboard"]["ratio_to_tensorboard"] == 1
    for name in ("mlflow", "wandb"):
        assert rows[name]["tracker_ms_per_step"] > 0 and len(rows[name]["rounds_s_per_step"]) == 2
        assert rows[name]["dropped"] == []


def test_unknown_tracker_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["trackers", "--trackers", "mlflow,neptune"])
    assert exit_info.value.code == 2
    assert "'neptune' is not one of" in capsys.readouterr().err
