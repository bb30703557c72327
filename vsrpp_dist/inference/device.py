"""Where inference runs: the device the user names, and the process's memory allocator tuned for
inference's large, short-lived tensors."""

from __future__ import annotations

import torch

from ..errors import InferenceError


def resolve_device(text: str) -> torch.device:
    """'auto' (the GPU when there is one), 'cpu', 'cuda', 'cuda:N'."""
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise InferenceError(f"--device {text}: not a device (auto, cpu, cuda, cuda:N)") from None
    if device.type not in ("cpu", "cuda"):
        raise InferenceError(f"--device {text}: only cpu and cuda are supported")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InferenceError(f"--device {text}: no CUDA GPU is available (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InferenceError(f"--device {text}: only {torch.cuda.device_count()} GPU(s) here")
    return device


# glibc's mallopt parameters
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def reuse_freed_memory() -> bool:
    """Make glibc's malloc serve large blocks from its heap and keep freed memory for reuse.

    By default every block over 32 MiB is a fresh mmap that the kernel zero-fills page by page and
    unmaps again on free; inference at HD sizes allocates and frees such tensors (features, the x3
    frame) hundreds of times per frame, and then spends as much time in the kernel as in the model:
    upscale of 4 frames of 720p on 2 cores ran user 50 s / sys 44 s with 22 M page faults; with this,
    user 50 s / sys 8 s, 3.7 M faults (BENCHMARKS.md). The cost: freed memory stays with the process
    (peak RSS 5.8 GB instead of 4.6 GB there). Affects this process only; a no-op without glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    # trim only when 2 GiB (mallopt takes a C int) lie free at the top of the heap
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def prepare_process_for_inference(device: torch.device) -> None:
    """The process-wide settings every inference command (upscale, evaluate, bench upscale) applies once,
    before its first frame: the allocator's, and cuDNN's algorithm timing on a GPU."""
    reuse_freed_memory()
    time_cudnn_algorithms_per_shape(device)


def time_cudnn_algorithms_per_shape(device: torch.device) -> None:
    """On a GPU, let cuDNN time its convolution algorithms for each new input shape and keep the fastest
    (`cudnn.benchmark`): an inference run sees one tile shape (or one frame size), so it pays that once.
    Process-wide, so the command sets it where it applies its device, not each upscaler it builds."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
