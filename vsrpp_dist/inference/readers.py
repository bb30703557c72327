"""The frames of an input sequence as tensors, streamed, with one size per sequence."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import torch

from ..data.sources import Sequence, SequenceError, read_frames
from ..errors import InferenceError


def frame_size_of_folder(seq: Sequence) -> tuple[int, int]:
    """(H, W) of a frame-folder sequence, read from the image headers only (cheap), so mixed sizes are
    refused before any work or output."""
    from PIL import Image

    first: tuple[int, int] | None = None
    for path in seq.frames:
        try:
            with Image.open(path) as image:
                size = (image.height, image.width)
        except Exception as err:  # PIL raises OSError, SyntaxError, ... for broken files
            raise InferenceError(f"{path}: cannot read this frame ({err})") from None
        if first is None:
            first = size
        elif size != first:
            raise InferenceError(f"{path}: frame is {size[1]}x{size[0]} (WxH) but {Path(seq.frames[0]).name} is "
                                 f"{first[1]}x{first[0]}; all frames of a sequence must have one size")
    assert first is not None, "scan_source never returns an empty frame folder"
    return first


def read_frames_chw(seq: Sequence, limit: int = 0) -> Iterator[torch.Tensor]:
    """The frames of a sequence as (3, H, W) uint8 tensors, streamed, the first `limit` only (0: all).
    A frame of another size than the first, or one that cannot be decoded, stops with a user error."""
    first: tuple[int, int] | None = None
    frames = read_frames(seq)
    for index in range(limit or sys.maxsize):
        try:
            frame_hwc = next(frames)
        except StopIteration:
            return
        except SequenceError as err:
            raise InferenceError(f"{seq.path}: {err}") from None
        size = frame_hwc.shape[:2]
        if first is None:
            first = size
        elif size != first:
            raise InferenceError(f"{seq.path}: frame {index} is {size[1]}x{size[0]} (WxH) but frame 0 is "
                                 f"{first[1]}x{first[0]}; all frames of a sequence must have one size")
        if not frame_hwc.flags.writeable:  # PIL's arrays are read-only views of its buffer
            frame_hwc = frame_hwc.copy()
        yield torch.from_numpy(frame_hwc).permute(2, 0, 1)
