"""GPU telemetry through NVML (package nvidia-ml-py, module pynvml) and the allocator's own figures.

Without a GPU or without NVML every reading is simply empty: callers log what they get, so the System/*
GPU tags are absent on CPU runs rather than zero.
"""

from __future__ import annotations

import os

import torch


class GpuTelemetry:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.handle = None
        if device.type != "cuda":
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            index = device.index if device.index is not None else torch.cuda.current_device()
            # NVML numbers GPUs physically; CUDA_VISIBLE_DEVICES may remap them.
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            if visible:
                ids = [v.strip() for v in visible.split(",") if v.strip()]
                if index < len(ids) and ids[index].isdigit():
                    index = int(ids[index])
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self.pynvml = pynvml
        except Exception:  # NVML missing (containers without the driver library) or not initialisable
            self.handle = None

    @property
    def available(self) -> bool:
        return self.handle is not None

    def read(self) -> dict[str, float]:
        """Current figures; {} without a GPU. Keys are TensorBoard tag suffixes."""
        out: dict[str, float] = {}
        if self.device.type == "cuda":
            out["VRAM_GB"] = torch.cuda.max_memory_reserved(self.device) / 2**30
            out["VRAM_Allocated_GB"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        if self.handle is None:
            return out
        nv = self.pynvml
        for key, read in (
            ("VRAM_Used_GB", lambda: nv.nvmlDeviceGetMemoryInfo(self.handle).used / 2**30),
            ("VRAM_Total_GB", lambda: nv.nvmlDeviceGetMemoryInfo(self.handle).total / 2**30),
            ("GPU_Util_pct", lambda: float(nv.nvmlDeviceGetUtilizationRates(self.handle).gpu)),
            ("Temperature_C", lambda: float(nv.nvmlDeviceGetTemperature(self.handle, nv.NVML_TEMPERATURE_GPU))),
            ("Power_W", lambda: nv.nvmlDeviceGetPowerUsage(self.handle) / 1000.0),
        ):
            try:
                out[key] = float(read())
            except Exception:  # a counter this GPU does not expose
                pass
        return out


TELEMETRY_KEYS = ("VRAM_GB", "VRAM_Allocated_GB", "VRAM_Used_GB", "VRAM_Total_GB", "GPU_Util_pct",
                  "Temperature_C", "Power_W")
