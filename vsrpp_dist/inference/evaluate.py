"""PSNR/SSIM and temporal consistency (tOF, TDE) of trained models against bicubic, per sequence and
overall, measured as VSR papers do.

    python -m vsrpp_dist.evaluate --checkpoint C [--checkpoint C2 ...] --data D [--lr LR_DIR] [--crop-border N]
                                  [--json OUT.json] [--report DIR] [--save DIR] [--batch N] [--tile N] [--device ...]

Several --checkpoint options score every model on the same LR frames in one pass over the data, in one
table with a column group per model and bicubic (best per row marked). --report DIR writes an HTML page
(vsrpp_dist/inference/report.py). tOF and TDE are defined in vsrpp_dist/temporal_metrics.py.

D is a folder of GT sequences in any layout `pack` understands (REDS, Vid4, Vimeo-90K with its test
list, any nesting; video files count as sequences too) or a validation set written by `pack --val`
(a folder with manifest.json). LR frames are made from GT with MATLAB's bicubic x3 (`imresize`,
rounded to 8 bits after each pass, the "BI" protocol), or read from LR_DIR: the same layout, paired by
relative path, each frame exactly a third of its GT frame; a set packed with `pack --val --lr` is scored
on its own LR frames. `--degradation realistic` makes them from GT with the realistic training
degradation instead (data/degradation.py says how each way is made).

GT frames whose height or width is not a multiple of 3 are cropped at the bottom/right (with a note)
so that GT and the x3 output line up pixel for pixel; with --lr they must be exact multiples.

Every frame is restored from its 5-frame window, mirrored at the ends (as in training validation and
`upscale`), and the bicubic baseline is MATLAB's `imresize(lr, 3)` of the centre frame. Both are
clamped and rounded to 8 bits before scoring (papers score saved PNGs): PSNR and SSIM (Wang et al.,
11x11 Gaussian, sigma 1.5) on the BT.601 Y channel (MATLAB's rgb2ycbcr) and on RGB, averaged per
sequence and then over sequences (every sequence weighs the same). --crop-border defaults to 0, as
training validation and BasicSR's BasicVSR configs for REDS4/Vid4; some papers crop the scale
(--crop-border 3) or more, which changes the numbers by a few tenths of a dB: compare like with like.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ..cli import OneLineParser, int_at_least, note, run_cli
from ..config import SCALE, DegradationConfig, build
from ..data import shard_format as fmt
from ..data.degradation import BicubicDegradation, Degradation, RealLowRes, build_degradation
from ..data.locations import Location
from ..data.sources import Sequence, scan_source
from ..data.validation_set import ValidationSet
from ..data.windows import sliding_windows
from ..errors import InferenceError
from ..files import atomic_write_text, usable_cores
from ..imresize import upscale
from ..metrics import to_uint8
from ..temporal_metrics import PROTOCOL as TEMPORAL_PROTOCOL
from ..training.validation import score
from .arguments import add_inference_arguments
from .clip_upscaler import ClipUpscaler
from .comparison import (
    BICUBIC,
    SequenceScores,
    add_checkpoints_argument,
    format_streams_table,
    json_per_frame,
    json_rows,
    model_labels,
    stream_keys,
    summarise,
)
from .device import prepare_process_for_inference, resolve_device
from .loading import LoadedModel, load_model
from .readers import frame_size_of_folder, read_frames_chw
from .report import ReportCollector, check_report_folder, write_report
from .writers import BackgroundWriter, PngFolder, frame_names, numbered_frame_name

PROG = "python -m vsrpp_dist.evaluate"
SSIM_WINDOW = 11


def build_parser():
    parser = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0],
                           epilog="Metrics: Y (BT.601) and RGB PSNR/SSIM of 8-bit outputs, mean of sequence "
                                  "means; LR by MATLAB bicubic x3 unless --lr. See the module docstring.")
    add_checkpoints_argument(parser)
    parser.add_argument("--data", required=True, metavar="D",
                        help="a folder of GT sequences (frame folders of any layout, videos) or a validation "
                             "set written by `pack --val` (holds manifest.json; also s3://, gs://, http(s)://, "
                             "pipe:)")
    parser.add_argument("--lr", metavar="LR_DIR",
                        help="real LR frames, laid out like D and paired by relative path (default: a packed set's "
                             "own LR frames, else MATLAB bicubic x3 of GT, rounded to 8 bits)")
    parser.add_argument("--degradation", choices=("bicubic", "realistic"), default="bicubic",
                        help="how LR is made from GT where the data has none: MATLAB bicubic x3 (default), or "
                             "the realistic training degradation (default ranges), each sequence degraded once "
                             "as one video (realistic also replaces a packed set's own LR frames)")
    parser.add_argument("--seed", type=int_at_least(0), default=0, metavar="S",
                        help="seed of the realistic degradation (sequence i draws from (S, i), as a run with "
                             "run.seed=S validates)")
    parser.add_argument("--crop-border", type=int_at_least(0), default=0, metavar="N",
                        help="pixels dropped at every GT border before scoring (default 0, as training "
                             "validation; papers that crop use the scale, 3)")
    parser.add_argument("--json", metavar="OUT", help="write the table as JSON: one row per sequence and 'overall'")
    parser.add_argument("--save", metavar="DIR", help="write the model's frames as PNG, DIR/<sequence>/<frame>.png")
    parser.add_argument("--report", metavar="DIR",
                        help="write an HTML report into DIR (a new or empty folder): the table, per-frame PSNR "
                             "plots, crops of bicubic / each model / GT side by side, temporal profiles")
    add_inference_arguments(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --json file or saved frames")
    return parser


# -- what to evaluate --------------------------------------------------------------------------------


@dataclass
class Job:
    """One GT sequence and how to read it."""

    name: str
    num_frames: int | None  # None: a video whose length shows when decoding ends
    pairs: Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor | None]]]  # (GT, LR or None), uint8 CHW
    frame_name: Callable[[int], str]  # PNG name of frame i for --save
    exact_lr: bool  # real LR pairs: GT must be exactly 3x, no cropping
    gt_hw: tuple[int, int] | None  # known before decoding (frame folders, packed sets), else None


def packed_jobs(folder: Path | str, limit: int, lr_dir: str | None) -> list[Job]:
    if lr_dir:
        raise InferenceError(f"--lr {lr_dir}: a packed validation set carries its own LR frames when it was "
                             "packed with --lr; give --lr only with a folder of GT frames")
    manifest = fmt.read_manifest(folder)
    if manifest.get("split") != "val":
        raise InferenceError(f"{folder}: holds a {manifest.get('split')!r} split; evaluate needs a folder of GT "
                             "frames or a set packed with `pack --val`")
    dataset = ValidationSet(folder)
    if not dataset.sequences:
        raise InferenceError(f"{folder}: the validation set holds no sequences")
    for seq in dataset.sequences:
        if seq.get("cropped"):
            h, w = seq["original_size"]
            note(f"{seq['name']}: pack cropped its GT from {w}x{h} to {seq['frame_size'][1]}x{seq['frame_size'][0]} "
                 "(WxH, bottom/right) so that it divides by 3")
    # ValidationSet reads the shards front to back, one whole sequence at a time (validation sets are
    # small); each job takes the next one, unless the set skipped its sequence (a damaged frame).
    sequences = iter(dataset)
    upcoming: list = []

    def reader(index: int):
        def pairs():
            if not upcoming:
                upcoming.append(next(sequences, None))
            seq = upcoming[0]
            if seq is None or seq.index != index:
                raise DamagedSequence(dataset.damaged.get(index, "its frames are missing from the shards"))
            upcoming.clear()
            n = min(seq.gt.shape[0], limit or seq.gt.shape[0])
            for i in range(n):
                yield seq.gt[i], (seq.lr[i] if seq.lr is not None else None)
        return pairs

    return [Job(s["name"], min(s["num_frames"], limit or s["num_frames"]), reader(s["index"]), numbered_frame_name,
                exact_lr=bool(manifest.get("has_lr")), gt_hw=tuple(s["frame_size"])) for s in dataset.sequences]


class DamagedSequence(Exception):
    """A packed sequence that the validation set skipped (a damaged frame): reported, not scored."""


def folder_jobs(data: str, lr_dir: str | None, limit: int) -> list[Job]:
    source = scan_source(data, split="val")
    lr_by_key: dict[tuple, Sequence] = {}
    if lr_dir:
        lr_by_key = {s.match_key: s for s in scan_source(lr_dir, split="val", vimeo_list="all").sequences}
    jobs = []
    for seq in source.sequences:
        lr_seq = None
        if lr_dir:
            lr_seq = lr_by_key.get(seq.match_key)
            if lr_seq is None:
                where = "/".join(map(str, seq.match_key)) or "its top folder"
                raise InferenceError(f"--lr {lr_dir}: no LR sequence for {seq.path} (looked for {where}; LR pairs "
                                     "with GT by relative path)")
        gt_hw = frame_size_of_folder(seq) if seq.kind == "frames" else None
        if lr_seq is not None:
            check_lr_pair(seq, gt_hw, lr_seq, limit)
        num_frames = len(seq.frames) if seq.kind == "frames" else None
        if num_frames is not None and limit:
            num_frames = min(num_frames, limit)
        jobs.append(Job(seq.name, num_frames, _pair_reader(seq, lr_seq, limit), frame_names(seq),
                        exact_lr=lr_seq is not None, gt_hw=gt_hw))
    return jobs


def check_lr_pair(gt: Sequence, gt_hw: tuple[int, int] | None, lr: Sequence, limit: int) -> None:
    """What can be checked before decoding: frame counts and sizes of frame folders."""
    if gt.kind == "frames" and lr.kind == "frames":
        gt_n, lr_n = len(gt.frames), len(lr.frames)
        if limit:
            gt_n, lr_n = min(gt_n, limit), min(lr_n, limit)
        if gt_n != lr_n:
            raise InferenceError(f"{lr.path}: {lr_n} LR frames for {gt_n} GT frames in {gt.path}")
        check_lr_size(gt_hw, frame_size_of_folder(lr), lr.frames[0])


def check_lr_size(gt_hw: tuple[int, int], lr_hw: tuple[int, int], where: str) -> None:
    if (lr_hw[0] * SCALE, lr_hw[1] * SCALE) != tuple(gt_hw):
        raise InferenceError(f"{where}: LR frame is {lr_hw[1]}x{lr_hw[0]} (WxH) but its GT is {gt_hw[1]}x{gt_hw[0]}; "
                             f"LR must be exactly GT/{SCALE}")


def _pair_reader(gt: Sequence, lr: Sequence | None, limit: int):
    def pairs():
        gt_frames = read_frames_chw(gt, limit)
        if lr is None:
            for frame in gt_frames:
                yield frame, None
            return
        lr_frames = read_frames_chw(lr, limit)
        checked = False
        while True:
            gt_frame, lr_frame = next(gt_frames, None), next(lr_frames, None)
            if gt_frame is None and lr_frame is None:
                return
            if gt_frame is None or lr_frame is None:
                raise InferenceError(f"{lr.path}: LR and GT ({gt.path}) have different numbers of frames")
            if not checked:  # videos: their sizes show only now
                check_lr_size(tuple(gt_frame.shape[-2:]), tuple(lr_frame.shape[-2:]), lr.path)
                checked = True
            yield gt_frame, lr_frame
    return pairs


# -- scoring -----------------------------------------------------------------------------------------


def gt_crop(job: Job, crop_border: int, announce: bool = True) -> tuple[int, int]:
    """The GT size that is scored: cropped at the bottom/right to a multiple of 3 (with a note),
    refused where real LR frames are given or where --crop-border leaves too little for SSIM."""
    h, w = job.gt_hw
    crop = (h - h % SCALE, w - w % SCALE)
    if crop != (h, w):
        if job.exact_lr:
            raise InferenceError(f"{job.name}: GT frames are {w}x{h} (WxH), not divisible by {SCALE}; "
                                 f"with real LR frames GT must be exactly {SCALE}x their size")
        if announce:
            note(f"{job.name}: GT frames are {w}x{h} (WxH); cropped to {crop[1]}x{crop[0]} at the "
                 f"bottom/right so the x{SCALE} LR lines up")
    usable = min(crop) - 2 * crop_border
    if usable < SSIM_WINDOW:
        raise InferenceError(f"{job.name}: --crop-border {crop_border} leaves {max(usable, 0)} px of a "
                             f"{crop[1]}x{crop[0]} frame; SSIM needs {SSIM_WINDOW}")
    return crop


class SequenceScorer:
    """Scores one sequence frame by frame: bicubic and every model against GT, on the same LR frames."""

    def __init__(self, upscalers: list[ClipUpscaler], device: torch.device, crop_border: int, batch: int,
                 degradation: Degradation, seed: int = 0) -> None:
        self.upscalers = upscalers
        self.keys = stream_keys(len(upscalers))
        self.device = device
        self.crop_border = crop_border
        self.batch = batch
        self.degradation = degradation  # how every sequence's input frames are made (degradation_for)
        self.seed = seed

    def frames(self, job: Job, index: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(GT cropped to a multiple of 3, LR) per frame, both uint8 CHW on the CPU."""
        return self.degradation.sequence(self._cropped_pairs(job), seed=self.seed, index=index, device=self.device)

    def _cropped_pairs(self, job: Job) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """The job's (GT cropped to a multiple of 3, real LR or None) pairs."""
        # sizes known up front were checked (and announced) by main before the model was loaded
        crop = gt_crop(job, self.crop_border, announce=False) if job.gt_hw is not None else None
        for gt, lr in job.pairs():
            if crop is None:  # a video: its size shows now
                job.gt_hw = tuple(gt.shape[-2:])
                crop = gt_crop(job, self.crop_border)
            yield gt[:, :crop[0], :crop[1]], lr

    def run(self, job: Job, saver: BackgroundWriter | None, progress, index: int = 0,
            collector: ReportCollector | None = None) -> SequenceScores:
        """Every stream's per-frame and per-pair scores (`index`: the job's place in the set). The LR frames
        are made once and fed to every model; `saver` takes the (single) model's frames, `collector` what
        the HTML report shows."""
        scores = SequenceScores([BICUBIC, *self.keys], self.crop_border)
        if collector is not None:
            collector.start_sequence(job.name, scores.labels)
        for batch in sliding_windows(enumerate(self.frames(job, index)), self.batch):
            lq_btchw = torch.stack([torch.stack([lq for _, (_, lq) in window]) for _, window in batch])
            gt_bchw = torch.stack([window[2][1][0] for _, window in batch]).to(self.device).float().div_(255)
            outputs = {BICUBIC: upscale(lq_btchw[:, 2].to(self.device).float().div_(255), SCALE)}
            for key, upscaler in zip(self.keys, self.upscalers):
                # ids unique across sequences: the cache must never hand one sequence's frame to the next
                outputs[key] = upscaler(lq_btchw, [[(id(job), frame) for frame, _ in window] for _, window in batch])
            # score() clamps and rounds both to 8 bits first: what saved PNGs would score
            frame_scores = {key: torch.stack(score(sr_bchw, gt_bchw, self.crop_border), dim=1).tolist()
                            for key, sr_bchw in outputs.items()}
            outputs_u8 = {key: to_uint8(sr_bchw) for key, sr_bchw in outputs.items()}
            for k, (frame_index, window) in enumerate(batch):
                gt_u8 = window[2][1][0]
                frame_outputs = {key: out[k] for key, out in outputs_u8.items()}
                scores.add_frame(gt_u8, frame_outputs, {key: rows[k] for key, rows in frame_scores.items()})
                if collector is not None:
                    collector.frame(frame_index, gt_u8, frame_outputs)
            if saver is not None:
                for (frame_index, _), frame in zip(batch, outputs_u8[self.keys[0]].permute(0, 2, 3, 1).numpy()):
                    saver.submit(frame_index, frame.copy())
            progress.update(len(batch))
        if scores.num_frames == 0:
            raise InferenceError(f"{job.name}: no frames could be read")
        if scores.num_frames == 1:
            note(f"{job.name}: one frame: no tOF/TDE for it (temporal metrics need two consecutive frames)")
        if collector is not None:
            collector.end_sequence(scores)
        return scores


# -- the report --------------------------------------------------------------------------------------


def _temporal(value: float | None) -> str:
    return f"{value:7.4f}" if value is not None else f"{'-':>7}"


def format_table(rows: list[dict]) -> str:
    """The one-checkpoint table (flat JSON rows): each metric's bicubic and model side by side."""
    width = max(12, *(len(r["sequence"]) for r in rows))
    head1 = (f"{'':{width}} {'':>6}   {'Y-PSNR (dB)':^23}   {'Y-SSIM':^15}   {'RGB-PSNR (dB)':^23}   "
             f"{'RGB-SSIM':^15}   {'tOF':^15}   {'TDE':^15}")
    head2 = (f"{'sequence':{width}} {'frames':>6}   {'bicubic':>7} {'model':>7} {'gain':>7}   {'bicubic':>7} "
             f"{'model':>7}   {'bicubic':>7} {'model':>7} {'gain':>7}   {'bicubic':>7} {'model':>7}"
             f"   {'bicubic':>7} {'model':>7}   {'bicubic':>7} {'model':>7}")
    lines = [head1, head2, "-" * len(head2)]
    for r in rows:
        if r["sequence"] == "overall":
            lines.append("-" * len(head2))
        lines.append(
            f"{r['sequence']:{width}} {r['frames']:>6}   {r['y_psnr_bicubic']:7.3f} {r['y_psnr_model']:7.3f} "
            f"{r['y_psnr_model'] - r['y_psnr_bicubic']:+7.3f}   {r['y_ssim_bicubic']:7.4f} {r['y_ssim_model']:7.4f}   "
            f"{r['rgb_psnr_bicubic']:7.3f} {r['rgb_psnr_model']:7.3f} "
            f"{r['rgb_psnr_model'] - r['rgb_psnr_bicubic']:+7.3f}"
            f"   {r['rgb_ssim_bicubic']:7.4f} {r['rgb_ssim_model']:7.4f}"
            f"   {_temporal(r['tof_bicubic'])} {_temporal(r['tof_model'])}"
            f"   {_temporal(r['tde_bicubic'])} {_temporal(r['tde_model'])}")
    lines.append("overall = mean of sequence means; tOF, TDE: lower is better (flicker the GT does not have)")
    return "\n".join(lines)


def write_json(path: Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(report, indent=1) + "\n")


def save_folders(jobs: list[Job]) -> list[Path]:
    """The folder under --save for each sequence, relative, made from its name as plain words: a name
    comes from data (a manifest, a list file) and is never a path, so `../../x`, `/etc` or `C:\\x` cannot
    lead outside --save. '/' in a name (nested layouts: `vid4/calendar`) keeps its nesting; empty, `.` and
    `..` parts are dropped, and names that end up the same get the sequence's number."""
    folders, seen = [], set()
    for index, job in enumerate(jobs):
        parts = [part for part in re.split(r"[\\/]+", job.name.replace("\0", "")) if part not in ("", ".", "..")]
        parts = [re.sub(r"^[A-Za-z]:$", lambda m: m.group(0)[0], part) for part in parts]  # a drive letter
        folder = Path(*parts) if parts else Path(f"sequence-{index:04d}")
        if folder in seen:
            folder = folder.with_name(f"{folder.name}-{index:04d}")
        seen.add(folder)
        folders.append(folder)
    return folders


def check_outputs(args, jobs: list[Job]) -> None:
    """Refuse, before any work, what would overwrite the user's files or write outside --save."""
    if args.json:
        path = Path(args.json)
        if path.is_dir():
            raise InferenceError(f"--json {path}: is a folder; give a file name")
        if path.exists() and not args.overwrite:
            raise InferenceError(f"--json {path}: exists; choose another name or pass --overwrite")
    if args.save:
        root = Path(args.save)
        if root.exists() and not root.is_dir():
            raise InferenceError(f"--save {root}: exists and is not a folder")
        for job, relative in zip(jobs, save_folders(jobs)):
            folder = root / relative
            # a symlink already inside --save could still lead out; what is written must resolve inside
            if not folder.resolve().is_relative_to(root.resolve()):
                raise InferenceError(f"--save {root}: the folder for sequence {job.name!r} leads outside it "
                                     f"({folder} resolves to {folder.resolve()})")
            if folder.is_dir() and not args.overwrite and any(p.suffix.lower() == ".png" for p in folder.iterdir()):
                raise InferenceError(f"--save {root}: {folder} already holds PNG frames; choose another folder "
                                     "or pass --overwrite")


def data_location(text: str) -> Location:
    """--data as a location: a local folder (frames, videos or a packed set), or where a packed validation
    set lies (s3://, gs://, http(s)://, pipe:); a location that cannot work is one line."""
    try:
        return Location(text)
    except fmt.ShardFormatError as err:
        raise InferenceError(f"--data {err}") from None


def degradation_for(args, jobs: list[Job]) -> Degradation:
    """How the model's input frames are made: GT degraded when --degradation realistic asks for it (the
    default ranges); else the real LR frames given (--lr, or a set packed with them); else MATLAB bicubic
    x3 of GT."""
    if args.degradation == "realistic":
        return build_degradation(build(DegradationConfig, {"kind": "realistic"}, "degradation."))
    if args.lr:
        return RealLowRes(args.lr)
    if jobs and all(job.exact_lr for job in jobs):  # a set packed with LR: every sequence has it
        return RealLowRes("real LR frames packed with the set")
    return BicubicDegradation()


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.lr and args.degradation == "realistic":
        raise InferenceError("--lr and --degradation realistic exclude each other: real LR is not degraded again")
    device = resolve_device(args.device)
    data = data_location(args.data)
    if not data.is_local:  # a packed validation set in a bucket, behind HTTP or a pipe: command
        jobs = packed_jobs(args.data, args.limit, args.lr)
    elif not data.path.exists():
        raise InferenceError(f"--data {data.path}: no such file or folder")
    elif data.path.is_dir() and (data.path / fmt.MANIFEST_NAME).is_file():
        jobs = packed_jobs(data.path, args.limit, args.lr)
    else:
        jobs = folder_jobs(args.data, args.lr, args.limit)
    check_outputs(args, jobs)
    degradation = degradation_for(args, jobs)
    for job in jobs:
        if job.gt_hw is not None:  # the rest (videos) are checked when their first frame arrives
            gt_crop(job, args.crop_border)
    if args.save and len(args.checkpoint) > 1:
        raise InferenceError(f"--save writes one model's frames; it takes one --checkpoint, not "
                             f"{len(args.checkpoint)}")
    if args.report:
        check_report_folder(Path(args.report), args.overwrite)
    prepare_process_for_inference(device)
    models = load_models(args.checkpoint, device)
    lr_origin = degradation.describe(args.seed)
    print(f"{len(jobs)} sequence{'s' if len(jobs) != 1 else ''} from {data}; LR: {lr_origin}; "
          f"crop border {args.crop_border}", file=sys.stderr)
    upscalers = [ClipUpscaler(m.loaded, device, tile=args.tile, amp=args.amp, cache_bytes=int(args.cache_gb * 2**30),
                              compile=args.compile) for m in models]
    scorer = SequenceScorer(upscalers, device, args.crop_border, args.batch, degradation, args.seed)
    collector = ReportCollector() if args.report else None

    from tqdm import tqdm

    total = None if any(j.num_frames is None for j in jobs) else sum(j.num_frames for j in jobs)
    started = time.perf_counter()
    per_sequence: dict[str, SequenceScores] = {}
    folders = save_folders(jobs)
    skipped: list[str] = []
    with tqdm(total=total, unit="frame", disable=args.quiet, file=sys.stderr) as progress:
        for index, job in enumerate(jobs):
            progress.set_description(job.name)
            saver = None
            if args.save:
                saver = BackgroundWriter(PngFolder(Path(args.save) / folders[index], job.frame_name),
                                         threads=min(4, usable_cores()), max_pending=8)
            try:
                per_sequence[job.name] = scorer.run(job, saver, progress, index, collector)
            except DamagedSequence as err:
                if saver is not None:
                    saver.abort()
                note(f"{job.name}: skipped, a frame is damaged ({err})")
                skipped.append(job.name)
                continue
            except BaseException:
                if saver is not None:
                    saver.abort()
                raise
            if saver is not None:
                saver.close()
    seconds = time.perf_counter() - started

    if not per_sequence:
        raise InferenceError(f"--data {data}: no sequence could be scored ({len(skipped)} skipped for damaged frames)")
    summary = summarise(per_sequence, [BICUBIC, *scorer.keys])
    rows = json_rows(summary)
    names = {BICUBIC: BICUBIC, **{m.key: m.label for m in models}}
    print(format_table(rows) if len(models) == 1 else format_streams_table(summary, names))
    if args.json:
        report = {
            "data": str(data), "lr": lr_origin, "scale": SCALE, "crop_border": args.crop_border,
            "limit_frames": args.limit or None, "tile": args.tile, "amp": args.amp, "device": str(device),
            "protocol": "8-bit outputs; Y = BT.601 (MATLAB rgb2ycbcr); SSIM 11x11 Gaussian sigma 1.5; "
                        "per-sequence frame means, overall = mean of sequence means; "
                        + TEMPORAL_PROTOCOL,
            "seconds": round(seconds, 2),
            "rows": rows, "skipped_damaged": skipped,
        }
        if len(models) == 1:  # the keys of a one-checkpoint report, as before several could be compared
            report.update(describe_weights(models[0].loaded))
        report["models"] = [{"key": m.key, "label": m.label, **describe_weights(m.loaded)} for m in models]
        report["per_frame"] = json_per_frame(per_sequence)
        write_json(Path(args.json), report)
        print(f"wrote {args.json}", file=sys.stderr)
    if args.report:
        page = write_report(Path(args.report), collector, summary, names, title=f"{data} (LR: {lr_origin})")
        print(f"wrote {page}", file=sys.stderr)
    return 0


@dataclass
class ModelUnderTest:
    key: str  # in the JSON: model, or model1, model2, ...
    label: str  # in the table and the report
    loaded: LoadedModel


def load_models(checkpoints: list[str], device: torch.device) -> list[ModelUnderTest]:
    """Every --checkpoint loaded before any work (one that does not load stops the run in one line)."""
    labels = model_labels(checkpoints)
    models = [ModelUnderTest(key, label, load_model(checkpoint, device))
              for key, label, checkpoint in zip(stream_keys(len(checkpoints)), labels, checkpoints)]
    for m in models:  # after all loaded: a bad one is the only line
        print(m.loaded.describe() if len(models) == 1 else f"{m.label}: {m.loaded.describe()}", file=sys.stderr)
    return models


def describe_weights(loaded: LoadedModel) -> dict:
    return {"checkpoint": loaded.source, "weights_step": loaded.step, "ema": loaded.ema,
            "model_config": {k: getattr(loaded.model_cfg, k) for k in loaded.model_cfg.__dataclass_fields__},
            "model": loaded.identity()}  # the weights file's sha256 and the chain of models it started from


def cli(argv=None) -> int:
    """The command: user errors are one line and exit code 2."""
    return run_cli(main, argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(cli())
