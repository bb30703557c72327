"""`upscale --compare bicubic`: frames that show the bicubic enlargement next to the model's output, so a
user sees the gain on their own clip in any player.

Layouts: `side` puts the two whole frames next to each other (bicubic left, model right: twice the
width); `split` keeps the output size and shows bicubic left of the middle and the model right of it,
divided by a 2-pixel white line (each half shows that half of the picture, as a wipe does). Each part
is labelled in its top-left corner. The bicubic frame is MATLAB's `imresize(lq, 3)` of the same input
frame, the baseline `evaluate` scores.
"""

from __future__ import annotations

import numpy as np
import torch

from ..imresize import upscale as bicubic_upscale
from ..metrics import to_uint8

LAYOUTS = ("side", "split")
LABEL_FONT_PX = 14
LABEL_BOX = (LABEL_FONT_PX + 8, 8 * LABEL_FONT_PX)  # (height, width) of the corner a label may cover
DIVIDER_PX = 2


def bicubic_frames(lq_btchw: torch.Tensor, scale: int, device: torch.device) -> np.ndarray:
    """The windows' centre frames enlarged by MATLAB bicubic: (B, H, W, 3) uint8."""
    centre = lq_btchw[:, lq_btchw.shape[1] // 2].to(device)
    centre = centre.float().div_(255) if not centre.is_floating_point() else centre
    return to_uint8(bicubic_upscale(centre, scale)).permute(0, 2, 3, 1).numpy()


def _label(frame_hwc: np.ndarray, text: str, left: int, right: int) -> None:
    """`text` in white on a dark box at (left, 0), drawn into the frame in place, cut at column `right`."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=LABEL_FONT_PX)
    h, w = min(LABEL_BOX[0], frame_hwc.shape[0]), min(LABEL_BOX[1], right - left)
    if w <= 0:
        return
    box = Image.fromarray(frame_hwc[:h, left:left + w])
    draw = ImageDraw.Draw(box)
    x0, y0, x1, y1 = draw.textbbox((4, 2), text, font=font)
    draw.rectangle((0, 0, min(x1 + 4, w - 1), min(y1 + 4, h - 1)), fill=(0, 0, 0))
    draw.text((4, 2), text, font=font, fill=(255, 255, 255))
    frame_hwc[:h, left:left + w] = np.asarray(box)


def compose(bicubic_hwc: np.ndarray, model_hwc: np.ndarray, layout: str) -> np.ndarray:
    """One comparison frame (H, W', 3) uint8 from the bicubic and the model frame of the same input."""
    if bicubic_hwc.shape != model_hwc.shape:
        raise ValueError(f"bicubic {bicubic_hwc.shape} and model {model_hwc.shape} frames differ in size")
    if layout == "side":
        frame = np.concatenate([bicubic_hwc, model_hwc], axis=1)
        _label(frame, "bicubic", 0, bicubic_hwc.shape[1])
        _label(frame, "model", bicubic_hwc.shape[1], frame.shape[1])
        return frame
    if layout == "split":
        middle = bicubic_hwc.shape[1] // 2
        frame = model_hwc.copy()
        frame[:, :middle] = bicubic_hwc[:, :middle]
        left, right = max(middle - DIVIDER_PX // 2, 0), middle + DIVIDER_PX // 2
        frame[:, left:right] = 255
        _label(frame, "bicubic", 0, left)
        _label(frame, "model", right, frame.shape[1])
        return frame
    raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")


def compare_batch(lq_btchw: torch.Tensor, sr_bhwc: np.ndarray, scale: int, layout: str,
                  device: torch.device) -> np.ndarray:
    """The batch's comparison frames: bicubic of each window's centre frame against the model's output."""
    bicubic = bicubic_frames(lq_btchw, scale, device)
    return np.stack([compose(b, m, layout) for b, m in zip(bicubic, sr_bhwc)])
