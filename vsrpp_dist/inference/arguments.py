"""The command-line arguments `upscale`, `evaluate` and `export` share."""

from __future__ import annotations

from ..cli import gigabytes, int_at_least


def add_checkpoint_argument(parser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="C",
                        help="a checkpoint folder, a symlink to one (RUN/checkpoint_best, RUN/checkpoint_latest) "
                             "or its model.safetensors")


def add_inference_arguments(parser) -> None:
    """How inference runs: batch, tiles, device, precision, how much, how loud."""
    parser.add_argument("--batch", type=int_at_least(1), default=1, metavar="N",
                        help="frames (5-frame windows) per forward pass (default 1; more helps on a GPU)")
    parser.add_argument("--tile", type=int_at_least(0), default=0, metavar="N",
                        help="run LR tiles of NxN pixels with enough overlap (the model's receptive radius) "
                             "that the output equals whole-frame processing; bounds memory for large "
                             "frames (0: whole frames, the default)")
    parser.add_argument("--cache-gb", type=gigabytes, default=2.0, metavar="G",
                        help="memory for the per-frame features of tiled runs, which each frame's five windows "
                             "share (default 2; whole frames always share them); when the frames in flight need "
                             "more, tiles are recomputed per window: same output, more compute")
    parser.add_argument("--device", default="auto",
                        help="auto (the GPU when there is one, else the CPU), cpu, cuda or cuda:N")
    parser.add_argument("--amp", action="store_true",
                        help="mixed precision: bf16 (fp16 on GPUs without bf16); faster on GPUs, output "
                             "differs slightly from fp32; on a CPU it is bf16 and rarely faster")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the model (GPU: faster after a compile of a minute or so per frame "
                             "size; falls back to eager with a note when compiling fails)")
    parser.add_argument("--limit", type=int_at_least(1), default=0, metavar="N",
                        help="only the first N frames of each sequence (they count as the whole sequence: "
                             "the last windows mirror at frame N)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
