"""Upscale a video file or a frame folder x3 with a trained model.

    python -m vsrpp_dist.upscale --checkpoint C --input IN --output OUT [--batch N] [--tile N]
                                 [--device auto|cpu|cuda[:N]] [--amp] [--crf Q] [--fps R] [--limit N]

IN is one video file (.mp4 .mkv .avi .mov .webm) or one folder of frames (any image format, natural
order). OUT is a video file when it ends in a video suffix, else a folder of PNG frames (a name with
another suffix, say clip.flv, is refused unless that folder exists). Every frame is
restored from its 5-frame window (mirrored at the ends, as in validation), clamped and rounded to
8 bits. Frames stream through: decoding, the model and encoding each hold a few frames at a time.

Video output: H.264 (libx264; VP9 for .webm) at constant quality `--crf` (default 16: close to
visually lossless, files much larger than a typical web video), preset "medium", 4:2:0 chroma (plays
everywhere) when the x3 frame size is even, 4:4:4 when it is odd (4:2:0 needs even sizes). A source
video's frame timestamps are kept (a variable-rate source stays variable-rate), and so are its
rotation, its colour tags (BT.709 where it has none, the conversion from RGB matching the tag) and its
audio streams, copied packet for packet (`--no-audio` leaves them out; `--limit` cuts them where the
video ends). `--fps` retimes the video to a constant rate (default 25 for frame folders) and then
drops the audio, which would drift. vsrpp_dist/inference/media.py says how.
The file is written under a temporary name and renamed when complete, so a stopped run leaves no
half-written video under OUT's name. PNG frames are named after the input frames (frame folders) or
numbered 00000000.png, ... (videos).

`--compare bicubic` writes, instead of the plain output, frames that show MATLAB's bicubic enlargement
of the same input next to the model's output (`--compare-layout side`, twice the width, or `split` at
the middle), labelled, as a video or PNG frames like any output (vsrpp_dist/inference/side_by_side.py).

Nothing is overwritten without --overwrite: an existing video file or PNG frames in the output folder
stop the run before any work.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from ..cli import OneLineParser, frame_rate, note, run_cli
from ..data.sources import IMAGE_SUFFIXES, VIDEO_SUFFIXES, Sequence, cut_short_warning, probe_frames, scan_source
from ..data.windows import sliding_windows
from ..errors import InferenceError
from ..files import usable_cores
from ..metrics import to_uint8
from .arguments import add_checkpoint_argument, add_inference_arguments
from .clip_upscaler import ClipUpscaler
from .device import prepare_process_for_inference, resolve_device
from .loading import load_model
from .media import SourceMedia, probe
from .readers import frame_size_of_folder, read_frames_chw
from .side_by_side import LAYOUTS, compare_batch
from .writers import VIDEO_FORMATS, BackgroundWriter, PngFolder, VideoFile, frame_names

PROG = "python -m vsrpp_dist.upscale"
DEFAULT_CRF = 16
DEFAULT_FPS = Fraction(25)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0],
                           epilog="Video output: libx264 (VP9 for .webm) at --crf, 4:2:0 chroma when the "
                                  "x3 size is even, else 4:4:4; the source's audio, timestamps, rotation and colour tags are kept. See the module docstring for more.")
    add_checkpoint_argument(parser)
    parser.add_argument("--input", required=True, metavar="IN",
                        help=f"a video file ({' '.join(VIDEO_SUFFIXES)}) or a folder of frames")
    parser.add_argument("--output", required=True, metavar="OUT",
                        help=f"a video file ({' '.join(VIDEO_FORMATS)}) or a folder for PNG frames")
    parser.add_argument("--crf", type=int, default=DEFAULT_CRF, metavar="Q",
                        help=f"video quality, lower is better and larger (default {DEFAULT_CRF}; 0 is lossless "
                             "with libx264)")
    parser.add_argument("--fps", type=frame_rate, default=None, metavar="R",
                        help="frame rate of a video output (default: the source video's; 25 for frame folders)")
    parser.add_argument("--no-audio", action="store_true",
                        help="leave the source video's audio out (by default every audio stream is copied "
                             "unchanged)")
    add_inference_arguments(parser)
    add_compare_arguments(parser)
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing output video or PNG frames of the same names")
    return parser


def add_compare_arguments(parser) -> None:
    parser.add_argument("--compare", choices=("bicubic",),
                        help="write, instead of the plain output, frames that show the bicubic enlargement next to "
                             "the model's (labelled), to see the gain in any player")
    parser.add_argument("--compare-layout", choices=LAYOUTS, default=None,
                        help="with --compare: side, the two frames next to each other, twice the width (default); "
                             "split, one frame, bicubic left of the middle and the model right of it")


# -- input -------------------------------------------------------------------------------------------


def open_input(path: str) -> Sequence:
    """The one sequence in IN; its frames are checked for one size up front where that is cheap."""
    source = scan_source(path)
    if len(source.sequences) > 1:
        names = ", ".join(s.name for s in source.sequences[:3])
        raise InferenceError(f"{path}: holds {len(source.sequences)} sequences ({names}, ...); upscale takes one "
                             "video file or one folder of frames at a time")
    seq = source.sequences[0]
    if seq.kind == "frames":
        frame_size_of_folder(seq)
    else:
        check_video_readable(seq.path)
    return seq


def check_video_readable(path: str) -> None:
    """Opens the video and decodes its first frame, so a file that is not a video (or is cut short
    before its first picture) is refused before the model loads or any output exists."""
    import av

    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise InferenceError(f"{path}: has no video stream")
            if next(container.decode(container.streams.video[0]), None) is None:
                raise InferenceError(f"{path}: holds no decodable frame")
    except InferenceError:
        raise
    except Exception as err:
        reason = getattr(err, "strerror", None) or str(err)
        raise InferenceError(f"{path}: cannot read this video ({reason})") from None


def source_frame_rate(seq: Sequence) -> Fraction | None:
    if seq.kind != "video":
        return None
    import av

    try:
        with av.open(seq.path) as container:
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
    except Exception:  # undecodable files fail with a clear message when decoding starts
        return None
    return Fraction(rate) if rate else None


def source_media(seq: Sequence, fps_given: bool, audio: bool) -> SourceMedia | None:
    """What the output keeps of a source video; --fps retimes the video, so then neither its timestamps
    nor its audio (which would drift) are kept."""
    if seq.kind != "video":
        return None
    media = probe(seq.path)
    if media is not None and fps_given:
        if audio and media.audio_streams:
            note("--fps retimes the video: its audio is not copied (it would drift); leave --fps out to keep it")
        media.timestamps, media.audio_streams = [], 0
    if media is not None and len(set(media.timestamps)) != len(media.timestamps):
        note(f"{seq.path}: repeated video timestamps; the output runs at the average frame rate")
        media.timestamps = []
    return media


def plan_output(path: str, overwrite: bool, source: str) -> str:
    """'video' or 'frames' for OUT, refusing what would overwrite the user's files; OUT resolving to the
    input (`source`: the video file or the frame folder) is refused whatever the flags."""
    out = Path(path)
    refuse_output_over_input(out, Path(source))
    suffix = out.suffix.lower()
    if suffix in VIDEO_FORMATS:
        if out.is_dir():
            raise InferenceError(f"{out}: is a folder; a video output needs a file name")
        if out.exists() and not overwrite:
            raise InferenceError(f"{out}: exists; choose another --output or pass --overwrite")
        return "video"
    if suffix in IMAGE_SUFFIXES or suffix in VIDEO_SUFFIXES:
        raise InferenceError(f"{out}: give a folder for PNG frames or a video file ({', '.join(VIDEO_FORMATS)})")
    if suffix and not out.is_dir():
        # a name like clip.flv or clip.mpg is a video the user wants, not a folder to fill with PNGs
        raise InferenceError(f"{out}: upscale writes videos as {', '.join(VIDEO_FORMATS)} only; for PNG frames "
                             "name a folder without a suffix (or an existing folder)")
    if out.exists() and not out.is_dir():
        raise InferenceError(f"{out}: exists and is not a folder")
    if out.is_dir() and not overwrite and any(p.suffix.lower() == ".png" for p in out.iterdir()):
        raise InferenceError(f"{out}: already holds PNG frames; choose another --output or pass --overwrite")
    return "frames"


def refuse_output_over_input(out: Path, source: Path) -> None:
    """--overwrite replaces earlier outputs, never the source: the same path (through symlinks, `..`,
    another spelling) or the same file (a hard link) as the input is refused before anything is written."""
    same = out.resolve() == source.resolve()
    if not same and out.exists():
        try:
            same = os.path.samefile(out, source)
        except OSError:
            same = False
    if same:
        raise InferenceError(f"--output {out}: is the input {source} itself; writing there would destroy the "
                             "source (--overwrite only replaces earlier outputs); choose another --output")


# -- the command -------------------------------------------------------------------------------------


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.compare_layout and not args.compare:
        note("--compare-layout has no effect without --compare bicubic")
    args.compare_layout = args.compare_layout or "side"
    device = resolve_device(args.device)
    seq = open_input(args.input)
    kind = plan_output(args.output, args.overwrite, source=seq.path)
    prepare_process_for_inference(device)
    loaded = load_model(args.checkpoint, device)
    print(loaded.describe(), file=sys.stderr)
    upscaler = ClipUpscaler(loaded, device, tile=args.tile, amp=args.amp, cache_bytes=int(args.cache_gb * 2**30),
                            compile=args.compile)

    out = Path(args.output)
    if kind == "video":
        fps = args.fps or source_frame_rate(seq) or DEFAULT_FPS
        media = source_media(seq, fps_given=args.fps is not None, audio=not args.no_audio)
        sink = BackgroundWriter(VideoFile(out, fps, args.crf, media, audio=not args.no_audio), threads=1,
                                max_pending=4)
    else:
        sink = BackgroundWriter(PngFolder(out, frame_names(seq)), threads=min(4, usable_cores()),
                                max_pending=8)
    count = probe_frames(seq)
    total = count.expected
    if args.limit and total is not None:
        total = min(total, args.limit)

    from tqdm import tqdm

    started = time.perf_counter()
    written, lr_hw = 0, (0, 0)
    try:
        with tqdm(total=total, unit="frame", desc=Path(seq.path).name, disable=args.quiet, file=sys.stderr) as bar:
            for batch in sliding_windows(enumerate(read_frames_chw(seq, args.limit)), args.batch):
                lq_btchw = torch.stack([torch.stack([frame for _, frame in window]) for _, window in batch])
                frame_ids = [[index for index, _ in window] for _, window in batch]
                lr_hw = tuple(lq_btchw.shape[-2:])
                sr_bhwc = to_uint8(upscaler(lq_btchw, frame_ids)).permute(0, 2, 3, 1).numpy()
                if args.compare:
                    sr_bhwc = compare_batch(lq_btchw, sr_bhwc, loaded.model_cfg.scale, args.compare_layout, device)
                for (index, _), frame_hwc in zip(batch, sr_bhwc):
                    sink.submit(index, np.ascontiguousarray(frame_hwc))
                written += len(batch)
                bar.update(len(batch))
        sink.close()
    except BaseException:
        sink.abort()
        raise
    if written == 0:
        raise InferenceError(f"{seq.path}: no frames could be decoded")
    if not args.limit and (warning := cut_short_warning(seq, written, count.indexed)) is not None:
        print(f"warning: {warning}", file=sys.stderr)
    seconds = time.perf_counter() - started
    h, w = lr_hw
    s = loaded.model_cfg.scale
    compared = f" (bicubic | model, {args.compare_layout})" if args.compare else ""
    print(f"upscaled {written} frames {w}x{h} -> {s * w}x{s * h}{compared} in {seconds:.1f} s ({written / seconds:.3f} frames/s; "
          f"{device}, batch {args.batch}, tile {args.tile or 'off'}{', amp' if args.amp else ''}) -> {out}")
    return 0


def cli(argv=None) -> int:
    """The command: user errors are one line and exit code 2."""
    return run_cli(main, argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(cli())
