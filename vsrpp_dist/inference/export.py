"""Export a trained model to ONNX, verified against PyTorch before the file is kept.

    python -m vsrpp_dist.export --checkpoint C --onnx model.onnx [--opset 18] [--frames DIR] [--overwrite]

The graph takes `lq_btchw`, a batch of 5-frame LR windows (B, 5, 3, h, w) float32 in [0, 1], and gives
`sr_bchw` (B, 3, 3h, 3w), clamped to [0, 1] as `upscale` clamps; batch, height and width are dynamic.
Windows at the ends of a sequence are mirrored by the caller (frame 0 sees 2, 1, 0, 1, 2), as
`upscale` does. Every alignment exports: `grid_sample` is an ONNX operator from opset 16, and the
deformable convolution of `flow_deform` is exported as its exact decomposition into `grid_sample`s
and a 1x1 convolution (model/alignment.py, `deform_conv2d_by_sampling`, the kernel PyTorch runs on a
CPU too), so no opset-19 DeformConv is needed.

The export is written under a temporary name, then run with onnxruntime next to PyTorch on random
windows at the traced size and at other sizes and batches (the dynamic axes), and on the first five
real frames of `--frames DIR` (a frame folder or a video); the
largest absolute difference is printed and the file is renamed to its name only when every one is
below `--tolerance`. A model that fails to export or to verify leaves no file behind.

Needs the `export` extra: `pip install 'vsrpp-dist[export]'` (onnx, onnxscript, onnxruntime).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..cli import OneLineParser, frame_size, int_at_least, run_cli
from ..errors import InferenceError
from .arguments import add_checkpoint_argument
from .loading import load_model

PROG = "python -m vsrpp_dist.export"
DEFAULT_OPSET = 18  # torch.onnx's own; grid_sample needs >= 16
DEFAULT_TOLERANCE = 1e-4


class ClampedUpscaler(nn.Module):
    """The model as `upscale` runs it: windows in, the clamped centre frames out."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, lq_btchw: torch.Tensor) -> torch.Tensor:
        return self.model(lq_btchw).clamp(0, 1)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0])
    add_checkpoint_argument(parser)
    parser.add_argument("--onnx", required=True, metavar="FILE", help="where to write the ONNX model (.onnx)")
    parser.add_argument("--opset", type=int_at_least(16), default=DEFAULT_OPSET,
                        help=f"ONNX opset (default {DEFAULT_OPSET}; grid_sample needs 16 or more)")
    parser.add_argument("--size", type=frame_size(8), default="64x48", metavar="WxH",
                        help="LR size of the example windows traced and verified (default 64x48)")
    parser.add_argument("--frames", metavar="DIR", help="a folder of real LR frames to verify on (the first 5)")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help=f"largest absolute difference to PyTorch accepted (default {DEFAULT_TOLERANCE:g})")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing file")
    return parser


def require_export_tools() -> None:
    missing = [name for name in ("onnx", "onnxscript", "onnxruntime") if _absent(name)]
    if missing:
        raise InferenceError(f"export needs {', '.join(missing)}: pip install 'vsrpp-dist[export]'")


def _absent(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is None


def export_onnx(module: nn.Module, example_btchw: torch.Tensor, path: Path, opset: int,
                metadata: dict[str, str]) -> None:
    """torch.onnx's dynamo exporter with batch, height and width dynamic; `metadata` goes into the
    model's metadata_props before the file is written (once)."""
    dynamic = torch.export.Dim.DYNAMIC
    # onnxscript's optimizer fails on the flow variants' split of a dynamic batch (constant folding of
    # SplitToSequence); onnxruntime optimises the graph itself when it loads it
    program = torch.onnx.export(module, (example_btchw,), None, dynamo=True, input_names=["lq_btchw"],
                                output_names=["sr_bchw"], opset_version=opset, optimize=False, verbose=False,
                                dynamic_shapes={"lq_btchw": {0: dynamic, 3: dynamic, 4: dynamic}})
    program.model.metadata_props.update(metadata)
    program.save(str(path), external_data=False)  # one self-contained file (weights inside), renamed as a whole


def real_window(folder: str, hw: tuple[int, int]) -> torch.Tensor:
    """The first 5 frames of `folder` (or of a video), cropped to `hw`, as one window."""
    from ..data.sources import SequenceError, read_frames, scan_source

    seq = scan_source(folder).sequences[0]
    try:
        frames = [f for _, f in zip(range(5), read_frames(seq))]
    except SequenceError as err:
        raise InferenceError(f"--frames {folder}: {err}") from None
    if len(frames) < 5:
        raise InferenceError(f"--frames {folder}: needs at least 5 frames, has {len(frames)}")
    h, w = hw
    if min(f.shape[0] for f in frames) < h or min(f.shape[1] for f in frames) < w:
        raise InferenceError(f"--frames {folder}: frames are smaller than --size {w}x{h}")
    window = np.stack([f[:h, :w, :3] for f in frames])
    return torch.from_numpy(window.copy()).permute(0, 3, 1, 2)[None].float().div(255)


def verify(module: nn.Module, path: Path, cases: list[tuple[str, torch.Tensor]]) -> list[tuple[str, float]]:
    """Max |onnxruntime - PyTorch| per case."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    results = []
    for name, lq_btchw in cases:
        with torch.no_grad():
            expected = module(lq_btchw).numpy()
        (got,) = session.run(None, {"lq_btchw": lq_btchw.numpy()})
        if got.shape != expected.shape:
            raise InferenceError(f"{path}: ONNX output is {got.shape} for {name}, PyTorch's {expected.shape}")
        results.append((name, float(np.abs(got - expected).max())))
    return results


def source_metadata(loaded) -> dict[str, str]:
    """The ONNX file's metadata_props: the weights it was exported from (sha256, step, the chain of models
    their training started from), so a deployed model can be traced back to its run."""
    identity = loaded.identity()
    return {"vsrpp.source": json.dumps({k: v for k, v in identity.items() if k != "provenance"}),
            "vsrpp.provenance": json.dumps(identity["provenance"])}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.onnx)
    if out.suffix.lower() != ".onnx":
        raise InferenceError(f"--onnx {out}: give a file name ending in .onnx")
    if out.is_dir():
        raise InferenceError(f"--onnx {out}: is a folder")
    if out.exists() and not args.overwrite:
        raise InferenceError(f"--onnx {out}: exists; choose another name or pass --overwrite")
    require_export_tools()
    h, w = args.size
    loaded = load_model(args.checkpoint, torch.device("cpu"))
    print(loaded.describe(), file=sys.stderr)
    module = ClampedUpscaler(loaded.model).eval()
    alignment = loaded.model_cfg.alignment

    torch.manual_seed(0)
    # batch 2: an example dimension of 1 would be specialised to 1 by torch.export
    example = torch.rand(2, loaded.model_cfg.num_frames, 3, h, w)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.partial-{os.getpid()}{out.suffix}")
    try:
        try:
            export_onnx(module, example, tmp, args.opset, source_metadata(loaded))
        except Exception as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise InferenceError(f"alignment {alignment}: the model cannot be exported to ONNX opset {args.opset} "
                                 f"({type(err).__name__}: {reason[:200]}); nothing written") from None
        # other sizes than traced, odd ones included, and another batch: the dynamic axes work
        cases = [(f"random {w}x{h} batch 2", example),
                 (f"random {w + 7}x{h + 5} batch 3", torch.rand(3, loaded.model_cfg.num_frames, 3, h + 5, w + 7)),
                 (f"random {w - 3}x{h - 1} batch 1", torch.rand(1, loaded.model_cfg.num_frames, 3, h - 1, w - 3))]
        if args.frames:
            cases.append((f"real frames of {args.frames}", real_window(args.frames, (h, w))))
        else:
            print("  (random windows only; --frames DIR verifies on real frames too)", file=sys.stderr)
        results = verify(module, tmp, cases)
        for name, diff in results:
            print(f"  {name}: max |onnxruntime - PyTorch| = {diff:.3g}")
        worst = max(diff for _, diff in results)
        if not worst <= args.tolerance:
            raise InferenceError(f"alignment {alignment}: the ONNX model differs from PyTorch by {worst:.3g} "
                                 f"(more than --tolerance {args.tolerance:g}); nothing written")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    print(f"exported {alignment} model to {out} (opset {args.opset}; input lq_btchw (B, 5, 3, h, w) in [0, 1], "
          f"output sr_bchw (B, 3, 3h, 3w); max |onnxruntime - PyTorch| {worst:.3g})")
    return 0


def cli(argv=None) -> int:
    """The command: user errors are one line and exit code 2."""
    return run_cli(main, argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(cli())
