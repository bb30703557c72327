"""Validation's temporal metrics: the same TDE/tOF as `evaluate` on the same frames, and the same on two
ranks as on one (each rank restores the frame before its contiguous share, so every pair is scored once)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vsrpp_dist.config import ValidationConfig
from vsrpp_dist.data.validation_set import ValidationSet
from vsrpp_dist.inference import evaluate
from vsrpp_dist.inference.loading import load_model
from vsrpp_dist.training.validation import Validator, contiguous_share

from ..helpers import OneProcess, Quiet, run, save_weights


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> tuple[Path, Path]:
    """A packed validation set of two sequences (7 and 5 frames) and a weights file."""
    from vsrpp_dist.data.pack_command import main as pack
    from vsrpp_dist.tools.demo_data import write_frame_folders

    root = tmp_path_factory.mktemp("val")
    write_frame_folders(root / "gt", sequences=1, frames=7, frame_hw=(72, 90), seed=3, photos=("coffee",))
    write_frame_folders(root / "gt2", sequences=1, frames=5, frame_hw=(72, 90), seed=4, photos=("astronaut",))
    (root / "gt2" / "000").rename(root / "gt" / "001")
    assert pack(["--val", str(root / "gt"), str(root / "shards")]) == 0
    return root / "shards", save_weights(root / "weights.pt", seed=4)


class Rank(OneProcess):
    """One of `world` ranks in this process: `gather` returns this rank's rows after those the other
    ranks' runs left in `shared` (a real gather concatenates in rank order)."""

    def __init__(self, rank: int, world: int, shared: dict) -> None:
        self.process_index, self.num_processes, self.is_main_process = rank, world, rank == 0
        self.shared = shared

    def gather(self, table: torch.Tensor) -> torch.Tensor:
        self.shared[self.process_index] = table
        return torch.cat([self.shared[r] for r in sorted(self.shared)])


def validate(shards: Path, weights: Path, accelerator, **cfg) -> dict[str, float]:
    validator = Validator(ValidationSet(shards), ValidationConfig(images=0, **cfg), accelerator, Quiet())
    return validator.run(load_model(weights, torch.device("cpu")).model, step=0)


def test_contiguous_shares_cover_every_frame_once():
    for n in range(0, 12):
        for world in (1, 2, 3, 4):
            shares = [contiguous_share(r, world, n) for r in range(world)]
            assert [f for share, _ in shares for f in share] == list(range(n))
            assert all(len(share) <= per_rank for share, per_rank in shares)


# Validator averages in float32 (as for PSNR, tests/inference/test_evaluate.py): equal to ~1e-7 relative
def test_validation_tde_and_tof_equal_evaluate(packed, tmp_path, capsys):
    shards, weights = packed
    scores = validate(shards, weights, OneProcess(), batch_size=3, tof=True)
    rc, _, err = run(capsys, evaluate, "--checkpoint", weights, "--data", shards, "--json", tmp_path / "e.json",
                     "--quiet")
    assert rc == 0, err
    overall = json.loads((tmp_path / "e.json").read_text())["rows"][-1]
    assert scores["KI_TDE"] == pytest.approx(overall["tde_model"], rel=1e-6)
    assert scores["LR_TDE"] == pytest.approx(overall["tde_bicubic"], rel=1e-6)
    assert scores["KI_TOF"] == pytest.approx(overall["tof_model"], rel=1e-6)
    assert scores["LR_TOF"] == pytest.approx(overall["tof_bicubic"], rel=1e-6)
    assert scores["KI_TDE"] > 0
    assert "KI_TOF" not in validate(shards, weights, OneProcess())  # tOF only when asked for


@pytest.mark.parametrize("world", [2, 3])
def test_several_ranks_score_the_same_as_one(packed, world):
    shards, weights = packed
    alone = validate(shards, weights, OneProcess(), batch_size=2, tof=True)
    shared: dict = {}
    for rank in reversed(range(world)):  # rank 0 last: its gather then holds every rank's rows
        result = validate(shards, weights, Rank(rank, world, shared), batch_size=2, tof=True)
    assert result["frames"] == alone["frames"] == 12
    for key, value in alone.items():
        assert result[key] == pytest.approx(value, rel=1e-6), key
