"""Fixtures the inference tests share."""

from __future__ import annotations

from pathlib import Path

import pytest

from .gt_set import write_gt_set


@pytest.fixture(scope="session")
def gt_root(tmp_path_factory) -> Path:
    """Two REDS-style GT sequences of 6 frames at 72x90 rendered from real photos (gt_set.py)."""
    return write_gt_set(tmp_path_factory.mktemp("gt"))
