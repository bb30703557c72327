"""The small GT set the evaluate tests share (the `gt_root` fixture in conftest.py), read back as tensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

GT_HW = (72, 90)  # LR 24x30
FRAMES = 6


def write_gt_set(root: Path) -> Path:
    """Two REDS-style GT sequences of 6 frames at 72x90 rendered from real photos."""
    from vsrpp_dist.tools.demo_data import write_frame_folders

    write_frame_folders(root, sequences=2, frames=FRAMES, frame_hw=GT_HW, seed=5, photos=("coffee", "astronaut"))
    return root


def load_gt(folder: Path) -> torch.Tensor:
    """A frame folder as (N, 3, H, W) uint8."""
    return torch.stack([torch.from_numpy(np.array(Image.open(p))).permute(2, 0, 1)
                        for p in sorted(folder.glob("*.png"))])
