"""Shared fixtures: real-photo demo clips packed into shards once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Keep each test process to one thread: CI has two cores and several tests start 2 ranks.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Accelerate keeps process-wide singletons; every test (and the ranks a test forks) starts clean."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


@pytest.fixture(scope="session")
def demo_frames(tmp_path_factory) -> Path:
    """4 REDS-style sequences of 14 frames, 72x96, rendered from scikit-image photos."""
    from vsrpp_dist.tools.demo_data import write_frame_folders

    root = tmp_path_factory.mktemp("frames")
    write_frame_folders(root, sequences=4, frames=14, frame_hw=(72, 96), seed=1)
    return root


@pytest.fixture(scope="session")
def train_shards(demo_frames, tmp_path_factory) -> Path:
    from .helpers import pack_training_shards

    return pack_training_shards(demo_frames, tmp_path_factory.mktemp("shards") / "train")


@pytest.fixture(scope="session")
def val_shards(tmp_path_factory) -> Path:
    from vsrpp_dist.data.pack_command import main as pack

    from .helpers import write_validation_frames

    frames = write_validation_frames(tmp_path_factory.mktemp("val_frames"))
    out = tmp_path_factory.mktemp("shards") / "val"
    assert pack(["--val", str(frames), str(out)]) == 0
    return out
