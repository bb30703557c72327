"""`python -m vsrpp_dist.bench upscale`: inference throughput with and without the per-frame cache.

    python -m vsrpp_dist.bench upscale --config configs/default.yaml --size 160x90 --frames 8 --rounds 2
    python -m vsrpp_dist.bench upscale --config configs/default.yaml --size 960x540 --device cuda --amp --batch 4

Streams the same frames through `ClipUpscaler` as `upscale` does (mirrored 5-frame windows, in batches),
once computing every window from scratch ("scratch") and once reusing each frame's features and flows
across its windows ("cached"), alternating in rounds so a change in machine load hits both. Prints
frames/s (median over rounds, min..max), FLOPs per output frame (counted by torch's FlopCounterMode
over one pass of the stream: convolutions and matmuls; grid_sample and element-wise ops are not
counted) and whether both outputs are bit-identical (on a CPU they are; with --amp, --compile or on
a GPU expect float rounding). The first pass of each is also the warm-up (compilation, cuDNN tuning). The model is the config's with random weights
(speed does not depend on them) or a checkpoint's.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..cli import frame_size, int_at_least
from ..config import load_config
from ..data.windows import sliding_windows
from ..inference.clip_upscaler import ClipUpscaler
from ..inference.device import prepare_process_for_inference, resolve_device
from ..inference.loading import LoadedModel, load_model
from ..model.architecture import build_model, count_parameters
from ..training.wrapping import to_channels_last


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("upscale", help="inference frames/s and FLOPs per frame, per-frame cache on vs off")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="a training config: its model, randomly initialised")
    source.add_argument("--checkpoint", help="a checkpoint folder or weights.pt")
    p.add_argument("--size", type=frame_size(), default="320x180", help="LR frame size WxH (default 320x180)")
    p.add_argument("--frames", type=int_at_least(1), default=10, help="frames in the stream (default 10)")
    p.add_argument("--rounds", type=int_at_least(1), default=2, help="rounds of scratch, cached (default 2)")
    p.add_argument("--batch", type=int_at_least(1), default=1, help="windows per forward pass")
    p.add_argument("--tile", type=int_at_least(0), default=0, help="LR tile size (0: whole frames)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (as upscale --amp)")
    p.add_argument("--compile", action="store_true", help="torch.compile (as upscale --compile)")
    p.add_argument("--json", help="write the figures here")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides (with --config)")
    p.set_defaults(run=run)


def stream(upscaler: ClipUpscaler, frames: torch.Tensor, batch: int, cached: bool) -> torch.Tensor:
    outputs = []
    upscaler.cache.clear()
    for windows in sliding_windows(range(len(frames)), batch):
        ids = [window for _, window in windows]
        outputs.append(upscaler(frames[torch.tensor(ids)], ids if cached else None).cpu())
    return torch.cat(outputs)


def run(args) -> int:
    device = resolve_device(args.device)
    h, w = args.size
    prepare_process_for_inference(device)  # as upscale and evaluate do
    if args.config:
        cfg = load_config(args.config, args.overrides)
        torch.manual_seed(cfg.run.seed)
        model = build_model(cfg.model).eval().requires_grad_(False).to(device)
        loaded = LoadedModel(model, cfg.model, args.config, 0, False)
    else:
        loaded = load_model(args.checkpoint, device)
    if device.type == "cuda":
        to_channels_last(loaded.model)  # as load_model does on a GPU
    upscaler = ClipUpscaler(loaded, device, tile=args.tile, amp=args.amp, compile=args.compile)
    torch.manual_seed(0)
    frames = torch.randint(0, 256, (args.frames, 3, h, w), dtype=torch.uint8)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    flops, outputs = {}, {}
    for name, cached in (("scratch", False), ("cached", True)):
        with FlopCounterMode(display=False) as counter:
            outputs[name] = stream(upscaler, frames, args.batch, cached)  # also the warm-up
        flops[name] = counter.get_total_flops() / args.frames
    seconds: dict[str, list[float]] = {"scratch": [], "cached": []}
    for _ in range(args.rounds):
        for name, cached in (("scratch", False), ("cached", True)):
            sync()
            started = time.perf_counter()
            stream(upscaler, frames, args.batch, cached)
            sync()
            seconds[name].append(time.perf_counter() - started)

    c = loaded.model_cfg
    result = {
        "model": f"{args.config or args.checkpoint} ({count_parameters(loaded.model) / 1e6:.2f} M parameters, "
                 f"alignment {c.alignment})",
        "lr_size": f"{w}x{h}", "frames": args.frames, "batch": args.batch, "tile": args.tile,
        "amp": args.amp, "compile": args.compile,
        "device": str(device), "threads": torch.get_num_threads(),
        "bit_identical": torch.equal(outputs["scratch"], outputs["cached"]),
    }
    for name in seconds:
        rates = [args.frames / s for s in seconds[name]]
        result[name] = {"frames_per_s": statistics.median(rates), "frames_per_s_min": min(rates),
                        "frames_per_s_max": max(rates), "gflops_per_frame": flops[name] / 1e9}
    result["speedup"] = result["cached"]["frames_per_s"] / result["scratch"]["frames_per_s"]
    result["flops_saved"] = 1 - flops["cached"] / flops["scratch"]
    print(f"{result['model']}, LR {w}x{h}, {args.frames} frames, batch {args.batch}, tile {args.tile or 'off'}, "
          f"{device}{', amp' if args.amp else ''}{', compile' if args.compile else ''}, {result['threads']} threads, "
          f"{args.rounds} rounds")
    for name in seconds:
        r = result[name]
        print(f"  {name:8s} {r['frames_per_s']:8.3f} frames/s ({r['frames_per_s_min']:.3f}..{r['frames_per_s_max']:.3f})"
              f"  {r['gflops_per_frame']:9.1f} GFLOP per output frame")
    print(f"  cached/scratch: {result['speedup']:.2f}x frames/s, {100 * result['flops_saved']:.1f} % fewer FLOPs; "
          f"bit-identical: {result['bit_identical']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0
