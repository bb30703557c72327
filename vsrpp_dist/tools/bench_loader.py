"""`python -m vsrpp_dist.bench loader [--frames DIR] [--shards DIR] [--codecs [LIST]] [--workers N] [--json OUT]`:
how many 5-frame training clips one CPU core delivers from our shards, side
by side in the same process with a BasicSR-style loader reading the same frames from a folder of PNG
files; how many bytes the shards take next to that PNG folder; how fast `pack` is; and, with
`--codecs`, which frame codec wins on those figures (that is how DEFAULT_CODEC is chosen).

How the figures are taken, and why:
- one core: the loader runs in this process with num_workers=0 and torch.set_num_threads(1), so a
  single core does all the work (tar reading, shuffling, decoding, cropping, batching). Wall clock is
  the headline; CPU seconds of this process are shown next to it because they barely move when other
  people's jobs share the machine.
- rounds alternate (ours, baseline, ours, baseline, ...) after one warm-up per loader, so a change in
  machine load hits both sides; the median of the rounds is the figure and min..max its spread.
- where a clip's time goes: one more pass of our stream, which adds the seconds of `stream.make_clip`
  and of its frame decoding to the `ClipTimings` it was built with (decode / crop+augment+stack /
  reading+shuffle+batching).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..cli import int_at_least, names_from
from ..config import SCALE
from ..errors import BenchError
from ..files import usable_cores

if TYPE_CHECKING:
    from ..data.stream import ClipTimings

PROG = "python -m vsrpp_dist.bench"  # the command that runs it (messages start with it)
CLIP_FRAMES = 5

# the loader's targets (BENCHMARKS.md)
TARGET_CLIPS_PER_CORE = 150.0
TARGET_VS_BASELINE = 5.0
TARGET_BYTES_VS_PNG = 1.3

PNG_MARKER = "bench-png.json"  # written last into a PNG folder the bench made; its presence means "complete"
PACK_OUTPUTS = (".tar", ".partial", "manifest.json")




# -- command line ------------------------------------------------------------------------------------


_positive_int = int_at_least(1)


def add_parser(commands) -> None:
    from ..data.shard_format import CODECS, DEFAULT_CODEC

    p = commands.add_parser(
        "loader", help="clips/s per core of the shard stream vs a BasicSR-style PNG folder loader",
        description="Clips per second per CPU core of our shard stream, side by side with a BasicSR REDS-style "
                    "loader reading the same frames from PNG files; shard bytes vs PNG bytes; pack speed; "
                    "optionally a codec comparison. Prints a table and PASS/FAIL per target (the loader's targets, BENCHMARKS.md).")
    p.add_argument("--frames", required=True, metavar="DIR",
                   help="frame folder of real footage: one sequence, or a root of sequence folders")
    p.add_argument("--shards", metavar="DIR",
                   help="measure these existing training shards instead of packing --frames (they should "
                        "have been packed from --frames, or the comparison is not like for like)")
    p.add_argument("--work", metavar="DIR",
                   help="keep the PNG folder and packed shards here (the PNG folder is reused by later runs); "
                        "default: a temporary folder, deleted at the end")
    p.add_argument("--codec", choices=CODECS, default=DEFAULT_CODEC,
                   help=f"codec of the shards under test (default: {DEFAULT_CODEC}, the pack default)")
    p.add_argument("--codecs", nargs="?", const=",".join(CODECS), type=names_from(CODECS), default=None,
                   metavar="LIST", help=f"also pack and measure these codecs and name the winner "
                                        f"(default list: {','.join(CODECS)})")
    p.add_argument("--min-tile", type=_positive_int, default=None, metavar="PX",
                   help="pack --min-tile (default: the pack default)")
    p.add_argument("--frames-per-sample", type=_positive_int, default=None, metavar="N",
                   help="pack --frames-per-sample (default: the pack default)")
    p.add_argument("--lr-patch", type=_positive_int, default=64, metavar="PX",
                   help="LR patch edge; the GT patch is 3x (default: 64, a 192x192 GT clip)")
    p.add_argument("--batch-size", type=_positive_int, default=8, metavar="B", help="clips per batch (default: 8)")
    p.add_argument("--clips", type=_positive_int, default=400, metavar="N",
                   help="clips per measurement (default: 400)")
    p.add_argument("--warmup-clips", type=_positive_int, default=48, metavar="N",
                   help="clips read before the first measurement of each loader (default: 48)")
    p.add_argument("--repeats", type=_positive_int, default=3, metavar="R",
                   help="alternating rounds (ours, baseline, ...) per setting (default: 3)")
    p.add_argument("--workers", type=int, default=0, metavar="N",
                   help="also measure both loaders with N DataLoader worker processes (default: 0, skip)")
    p.add_argument("--png-level", type=int, default=6, choices=range(10), metavar="0-9",
                   help="zlib level of the baseline's PNG files (default: 6, what BasicSR users store)")
    p.add_argument("--baseline-decoder", choices=("torchvision", "pil"), default="torchvision",
                   help="how the baseline decodes each full PNG: torchvision.io.decode_png on the file's bytes "
                        "(default; the faster of the two here) or PIL (BasicSR itself uses cv2.imread)")
    p.add_argument("--pack-workers", type=_positive_int, default=None, metavar="N",
                   help="the second pack timing uses N workers (default: the usable CPU cores)")
    p.add_argument("--remote", action="store_true",
                   help="also read the headline shards from a loopback HTTP server (python -m http.server) and "
                        "a local S3-compatible server (moto, needs `moto[server]` and s3fs), each in its own "
                        "process, in the same alternating rounds: what streaming from a remote location costs")
    p.add_argument("--seed", type=int, default=0, help="stream and crop seed (default: 0)")
    p.add_argument("--json", metavar="OUT", help="also write every figure to this JSON file")
    p.set_defaults(run=run_loader_command)


# -- the machine -------------------------------------------------------------------------------------


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def machine_info() -> dict[str, Any]:
    import torchvision

    return {"date": datetime.now().astimezone().isoformat(timespec="seconds"), "host": platform.node(),
            "cores": usable_cores(), "cpu": platform.processor() or platform.machine(),
            "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "load_before": load_average()}


# -- inputs: the frame folder, the PNG folder made from it, the shards packed from it ----------------


def find_sequences(folder: str | Path) -> list[list[str]]:
    """The frame files of every sequence under `folder`, found the way `pack` finds them."""
    from ..data.sources import scan_source

    source = scan_source(folder, "train", "all")
    videos = [s.path for s in source.sequences if s.kind != "frames"]
    if videos:
        raise BenchError(f"{folder}: holds videos ({videos[0]}); the folder baseline needs frame folders")
    sequences = [list(s.frames) for s in source.sequences if len(s.frames) >= CLIP_FRAMES]
    if not sequences:
        raise BenchError(f"{folder}: no sequence of at least {CLIP_FRAMES} frames")
    return sequences


def _write_png(job: tuple[str, str, int]) -> int:
    from PIL import Image

    from ..data.sources import load_image

    src, dst, level = job
    Image.fromarray(load_image(src)).save(dst, format="PNG", compress_level=level)
    return os.path.getsize(dst)


def make_png_folder(sequences: list[list[str]], out: Path, level: int, workers: int) -> dict[str, Any]:
    """The frames as PNG files in REDS layout (out/000/00000000.png), what BasicSR users store; made once
    and reused while the sources and the level are unchanged."""
    recipe = {"level": level, "sources": [[(p, os.path.getsize(p), os.path.getmtime(p)) for p in seq]
                                          for seq in sequences]}
    recipe = json.loads(json.dumps(recipe))  # tuples -> lists, as they come back from the marker
    marker = out / PNG_MARKER
    files = [[out / f"{s:03d}" / f"{t:08d}.png" for t in range(len(seq))] for s, seq in enumerate(sequences)]
    started = time.perf_counter()
    reused = marker.is_file() and json.loads(marker.read_text()) == recipe
    if not reused:
        if out.exists():
            shutil.rmtree(out)
        jobs = []
        for seq, dsts in zip(sequences, files):
            dsts[0].parent.mkdir(parents=True, exist_ok=True)
            jobs += [(src, str(dst), level) for src, dst in zip(seq, dsts)]
        with ProcessPoolExecutor(max(1, min(workers, len(jobs)))) as pool:
            list(pool.map(_write_png, jobs, chunksize=8))
        marker.write_text(json.dumps(recipe))
    return {"folder": str(out), "level": level, "files": sum(len(f) for f in files),
            "bytes": sum(p.stat().st_size for seq in files for p in seq),
            "made_seconds": None if reused else round(time.perf_counter() - started, 2),
            "sequences": [[str(p) for p in seq] for seq in files]}


def _clear_pack_output(folder: Path) -> None:
    """Remove what an earlier bench pack left in `folder` (only files a pack writes)."""
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        if entry.is_file() and entry.name.endswith(PACK_OUTPUTS):
            entry.unlink()


def pack_timed(frames: str, out: Path, codec: str, workers: int, min_tile: int | None,
               frames_per_sample: int | None) -> dict[str, Any]:
    """Run `pack.main` in this process and time it (scan, decode, tile, encode, write, checksum;
    not the interpreter start). Its summary line is swallowed to keep the report compact."""
    from ..data.pack_command import main as pack_main
    from ..data.shard_format import read_manifest

    _clear_pack_output(out)
    argv = [frames, str(out), "--codec", codec, "--workers", str(workers), "--quiet"]
    if min_tile is not None:
        argv += ["--min-tile", str(min_tile)]
    if frames_per_sample is not None:
        argv += ["--frames-per-sample", str(frames_per_sample)]
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        code = pack_main(argv)
    seconds = time.perf_counter() - started
    if code != 0:
        raise BenchError(f"pack {' '.join(argv)} failed with exit code {code} (its error is above)")
    manifest = read_manifest(out)
    frames_packed = manifest["totals"]["frames"]
    return {"workers": workers, "seconds": round(seconds, 3), "frames": frames_packed,
            "frames_per_s": round(frames_packed / seconds, 2),
            "sha256": [s.get("sha256") for s in manifest["shards"]]}


def describe_shards(folder: str | Path) -> dict[str, Any]:
    """What the loader will read: codec, layout, and the bytes of the shard files on disk."""
    from ..data.shard_format import read_manifest

    manifest = read_manifest(folder)
    if manifest.get("split") != "train":
        raise BenchError(f"{folder}: holds {manifest.get('split')!r} shards; the loader reads training shards")
    root = Path(manifest["_folder"])
    files = [root / s["file"] for s in manifest["shards"]]
    tiles = sorted({tuple(s["tile_size"]) for s in manifest["sequences"]})
    return {"folder": str(root), "codec": manifest["codec"], "min_tile": manifest["min_tile"],
            "frames_per_sample": manifest["frames_per_sample"], "frames": manifest["totals"]["frames"],
            "samples": manifest["totals"]["samples"], "shards": len(files),
            "bytes": sum(p.stat().st_size for p in files), "tile_sizes": [list(t) for t in tiles],
            "sources": [s["path"] for s in manifest["sources"]]}


# -- the two loaders ---------------------------------------------------------------------------------


def stream_batches(shards: str | Path, lr_patch: int, batch_size: int, workers: int, seed: int,
                   read_ahead_mb: int | None = None, clip_timings: ClipTimings | None = None) -> Iterator[torch.Tensor]:
    """Our loader exactly as training builds it (build_train_loader, default DataConfig otherwise);
    `shards` may be any location training takes (a folder, http(s)://, s3://, ...). Given
    `clip_timings` (workers=0), the stream adds its make_clip and decoding seconds to it."""
    from ..config import DataConfig
    from ..data.stream import build_train_loader

    cfg = DataConfig(lr_patch_size=lr_patch, batch_size_per_gpu=batch_size, num_workers=workers)
    if read_ahead_mb is not None:
        cfg = dataclasses.replace(cfg, read_ahead_mb=read_ahead_mb)
    loader = build_train_loader(shards, cfg, seed=seed, rank=0, world_size=1, batch_size=batch_size,
                                clip_timings=clip_timings)
    for batch in loader:
        yield batch["gt"]


class PngFolderClips(torch.utils.data.Dataset):
    """The baseline: BasicSR's REDS recipe on a folder of PNG files. An item is a random sequence
    position (the sampler shuffles them); each of the 5 full frames is read from its file and decoded
    whole, then a GT patch is cropped at a random position (on the x3 grid, as BasicSR's
    paired_random_crop does) with random flips, 90 degree rotation and time reversal. BasicSR decodes
    with cv2.imread into float32; here the decoder is torchvision.io.decode_png or PIL, and the clip
    stays uint8 (5,3,P,P) like ours, which can only make the baseline faster."""

    def __init__(self, sequences: list[list[str]], gt_patch: int, decoder: str, seed: int) -> None:
        self.sequences = sequences
        self.gt_patch = gt_patch
        self.decoder = decoder
        self.seed = seed
        self.windows = [(s, t) for s, files in enumerate(sequences) for t in range(len(files) - CLIP_FRAMES + 1)]
        self.draws = 0  # items made by this process: one input of each item's generator
        self.decode_seconds = 0.0  # time inside the decoder, in this process (num_workers=0)
        self.decoded_clips = 0  # the clips decode_seconds covers

    def __len__(self) -> int:
        return len(self.windows)

    def _decode(self, path: str) -> torch.Tensor:
        with open(path, "rb") as handle:
            data = handle.read()
        started = time.perf_counter()
        if self.decoder == "torchvision":
            from torchvision.io import ImageReadMode, decode_png

            image = decode_png(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        else:
            from PIL import Image

            with Image.open(io.BytesIO(data)) as pil:
                image = torch.from_numpy(np.asarray(pil.convert("RGB"))).permute(2, 0, 1)
        self.decode_seconds += time.perf_counter() - started
        return image

    def __getitem__(self, index: int) -> torch.Tensor:
        seq, start = self.windows[index]
        rng = np.random.default_rng([self.seed, index, os.getpid(), self.draws])
        self.draws += 1
        self.decoded_clips += 1
        frames = [self._decode(p) for p in self.sequences[seq][start:start + CLIP_FRAMES]]
        _, height, width = frames[0].shape
        size = self.gt_patch
        if min(height, width) < size:
            raise BenchError(f"{self.sequences[seq][start]}: {width}x{height} frames are smaller than the "
                             f"{size} px GT patch")
        y = SCALE * int(rng.integers(0, (height - size) // SCALE + 1))
        x = SCALE * int(rng.integers(0, (width - size) // SCALE + 1))
        flip_h, flip_v, rot, reverse = (rng.random(4) < 0.5).tolist()
        clip = torch.stack([f[:, y:y + size, x:x + size] for f in frames])
        if flip_h:
            clip = clip.flip(-1)
        if flip_v:
            clip = clip.flip(-2)
        if rot:
            clip = clip.transpose(-1, -2)
        if reverse:
            clip = clip.flip(0)
        return clip.contiguous()


def folder_batches(dataset: PngFolderClips, batch_size: int, workers: int, seed: int) -> Iterator[torch.Tensor]:
    """The baseline as BasicSR runs it: a map-style dataset behind a shuffling DataLoader, endlessly."""
    generator = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True,
                                         num_workers=workers, persistent_workers=workers > 0,
                                         generator=generator)
    if len(loader) == 0:
        raise BenchError(f"{len(dataset)} clip positions are fewer than one batch of {batch_size}")
    while True:
        yield from loader


# -- measuring ---------------------------------------------------------------------------------------


def pull(batches: Iterator[torch.Tensor], clips: int) -> dict[str, float]:
    """Take at least `clips` clips; wall and CPU seconds of this process."""
    count = 0
    wall, cpu = time.perf_counter(), time.process_time()
    while count < clips:
        count += next(batches).shape[0]
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"clips": count, "seconds": round(wall, 4), "cpu_seconds": round(cpu, 4),
            "clips_per_s": round(count / wall, 2), "clips_per_cpu_s": round(count / cpu, 2) if cpu > 0 else None}


def summarize(rounds: list[dict[str, float]], cores_used: int = 1) -> dict[str, Any]:
    rates = [r["clips_per_s"] for r in rounds]
    cpu_rates = [r["clips_per_cpu_s"] for r in rounds if r.get("clips_per_cpu_s")]
    median = statistics.median(rates)
    return {"rounds": rounds, "cores_used": cores_used, "median_clips_per_s": round(median, 2),
            "min_clips_per_s": min(rates), "max_clips_per_s": max(rates),
            "median_clips_per_s_per_core": round(median / cores_used, 2),
            "median_clips_per_cpu_s": round(statistics.median(cpu_rates), 2) if cpu_rates else None,
            "ms_per_clip": round(1000 / median, 3)}


def alternate(loaders: dict[str, Iterator[torch.Tensor]], clips: int, warmup: int, repeats: int,
              progress) -> dict[str, list[dict[str, float]]]:
    """Warm every loader up once, then `repeats` rounds measuring each in turn."""
    for name, batches in loaders.items():
        progress(f"warm-up: {name}")
        pull(batches, warmup)
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in loaders}
    for r in range(repeats):
        for name, batches in loaders.items():
            load = load_average()[:1]
            result = pull(batches, clips)
            result["load_1min"] = load[0] if load else None
            rounds[name].append(result)
            progress(f"round {r + 1}/{repeats}: {name}: {result['clips_per_s']:.1f} clips/s")
    return rounds


def clip_breakdown(batches: Iterator[torch.Tensor], timings: ClipTimings, clips: int) -> dict[str, float]:
    """Where one clip's time goes in our stream (one core): frame decoding, the rest of make_clip
    (json, crop, augment, stack), and everything outside make_clip (tar reading, shuffle buffer,
    per-clip generator, batching). `timings` is what the stream behind `batches` (in this process,
    workers=0) adds its make_clip and decoding seconds to."""
    before = dataclasses.replace(timings)
    measured = pull(batches, clips)
    n, total = measured["clips"], measured["seconds"]
    decode, make_clip = timings.decode_s - before.decode_s, timings.make_clip_s - before.make_clip_s
    parts = {"decode": decode, "crop_augment_stack": make_clip - decode, "read_shuffle_batch": total - make_clip}
    out: dict[str, float] = {"clips": n, "ms_per_clip": round(1000 * total / n, 3)}
    for key, seconds in parts.items():
        out[f"{key}_ms"] = round(1000 * seconds / n, 3)
        out[f"{key}_share"] = round(seconds / total, 4)
    return out


# -- the loader benchmark ----------------------------------------------------------------------------


def run_loader(args: argparse.Namespace, progress=lambda line: None) -> dict[str, Any]:
    """Every figure of the loader benchmark, as a dict (what --json writes)."""
    cores = usable_cores()
    result: dict[str, Any] = {"command": "loader", "machine": machine_info()}
    gt_patch = args.lr_patch * SCALE
    pack_workers = args.pack_workers or min(cores, 8)
    result["settings"] = {
        "lr_patch": args.lr_patch, "gt_patch": gt_patch, "batch_size": args.batch_size, "clips": args.clips,
        "warmup_clips": args.warmup_clips, "repeats": args.repeats, "workers": args.workers,
        "png_level": args.png_level, "baseline_decoder": args.baseline_decoder, "min_tile": args.min_tile,
        "frames_per_sample": args.frames_per_sample, "pack_workers": [1, pack_workers], "seed": args.seed}
    frames = str(Path(args.frames).resolve())
    sequences = find_sequences(frames)
    from PIL import Image

    with Image.open(sequences[0][0]) as first:
        frame_size = list(first.size)
    result["frames"] = {"folder": frames, "sequences": len(sequences), "frames": sum(map(len, sequences)),
                        "first_frame_wh": frame_size, "suffix": Path(sequences[0][0]).suffix.lower()}

    with contextlib.ExitStack() as stack:
        work = Path(args.work) if args.work else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-")))
        work.mkdir(parents=True, exist_ok=True)
        progress(f"PNG folder (level {args.png_level}) in {work}")
        png = make_png_folder(sequences, work / f"png-level{args.png_level}", args.png_level, cores)
        result["png_folder"] = {k: v for k, v in png.items() if k != "sequences"}

        result["shards"] = prepare_shards(args, frames, work, pack_workers, png["bytes"], progress)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # one core does all the work, the decoders included
        try:
            result.update(measure_loaders(args, result["shards"], png["sequences"], gt_patch, cores, progress))
        finally:
            torch.set_num_threads(threads)
    result["machine"]["load_after"] = load_average()
    headline = result["shards"][0]
    result["targets"] = targets(headline, result["loader"]["baseline"])
    if len(result["shards"]) > 1:
        result["codec_winner"] = codec_winner(result["shards"])
    return result


def prepare_shards(args, frames: str, work: Path, pack_workers: int, png_bytes: int, progress) -> list[dict[str, Any]]:
    """The shards under test, headline first: --shards as given, or --codec packed from the frames;
    then every other codec of --codecs, packed the same way."""
    entries: list[dict[str, Any]] = []
    if args.shards:
        entry = describe_shards(args.shards)
        entry["pack"] = None
        if os.path.realpath(frames) not in {os.path.realpath(p) for p in entry["sources"]}:
            entry["warning"] = (f"packed from {', '.join(entry['sources'])}, not from {frames}: the comparison "
                                "with the PNG folder is not like for like")
        entries.append(entry)
    headline_codec = entries[0]["codec"] if entries else args.codec
    codecs = ([] if entries else [args.codec]) + [c for c in args.codecs or [] if c != headline_codec]
    for codec in codecs:
        out = work / f"shards-{codec}"
        runs = []
        for workers in dict.fromkeys([1, pack_workers]):
            progress(f"pack {codec} with {workers} worker{'s' if workers > 1 else ''}")
            runs.append(pack_timed(frames, out, codec, workers, args.min_tile, args.frames_per_sample))
        entry = describe_shards(out)
        entry["pack"] = [{k: v for k, v in r.items() if k != "sha256"} for r in runs]
        entry["pack_outputs_identical"] = all(r["sha256"] == runs[0]["sha256"] for r in runs)
        entries.append(entry)
    for entry in entries:
        entry["bytes_vs_png"] = round(entry["bytes"] / png_bytes, 4)
    return entries


def measure_loaders(args, shards: list[dict[str, Any]], png_sequences: list[list[str]], gt_patch: int,
                    cores: int, progress) -> dict[str, Any]:
    from ..data.stream import ClipTimings

    baseline = PngFolderClips(png_sequences, gt_patch, args.baseline_decoder, args.seed)
    timings = ClipTimings()  # the first codec's stream: where its clip's time goes
    with contextlib.ExitStack() as stack:
        loaders = {f"ours {s['codec']}": stack.enter_context(contextlib.closing(
            stream_batches(s["folder"], args.lr_patch, args.batch_size, 0, args.seed,
                           clip_timings=timings if s is shards[0] else None))) for s in shards}
        if args.remote:
            for name, location, read_ahead in remote_locations(stack, shards[0]["folder"], progress):
                loaders[name] = stack.enter_context(contextlib.closing(
                    stream_batches(location, args.lr_patch, args.batch_size, 0, args.seed, read_ahead)))
        loaders["baseline"] = stack.enter_context(contextlib.closing(
            folder_batches(baseline, args.batch_size, 0, args.seed)))
        for name, batches in loaders.items():  # one batch each first: wrong settings fail before any timing
            shape = tuple(next(batches).shape)
            if shape != (args.batch_size, CLIP_FRAMES, 3, gt_patch, gt_patch):
                raise AssertionError(f"{name} gives batches of {shape}")
        baseline.decode_seconds, baseline.decoded_clips = 0.0, 0
        rounds = alternate(loaders, args.clips, args.warmup_clips, args.repeats, progress)
        decode_ms = 1000 * baseline.decode_seconds / max(1, baseline.decoded_clips)
        progress("where a clip's time goes (ours)")
        breakdown = clip_breakdown(loaders[f"ours {shards[0]['codec']}"], timings, args.clips)

    loader = {"baseline": summarize(rounds.pop("baseline"))}
    loader["baseline"]["decode_ms_per_clip"] = round(decode_ms, 3)
    loader["baseline"]["decode_share"] = round(decode_ms / loader["baseline"]["ms_per_clip"], 4)
    for entry in shards:
        entry["loader"] = summarize(rounds[f"ours {entry['codec']}"])
        entry["loader"]["vs_baseline"] = round(entry["loader"]["median_clips_per_s"]
                                               / loader["baseline"]["median_clips_per_s"], 3)
        entry["loader"]["per_round_vs_baseline"] = [
            round(o["clips_per_s"] / b["clips_per_s"], 3)
            for o, b in zip(entry["loader"]["rounds"], loader["baseline"]["rounds"])]
    out: dict[str, Any] = {"loader": loader, "breakdown": breakdown}
    if args.remote:
        local = shards[0]["loader"]
        out["remote"] = {}
        for name in [n for n in rounds if n.startswith("remote ")]:
            summary = summarize(rounds[name])
            summary["vs_local"] = round(summary["median_clips_per_s"] / local["median_clips_per_s"], 3)
            summary["per_round_vs_local"] = [round(r["clips_per_s"] / o["clips_per_s"], 3)
                                             for r, o in zip(summary["rounds"], local["rounds"])]
            out["remote"][name.removeprefix("remote ")] = summary
    if args.workers > 0:
        out["workers"] = measure_with_workers(args, shards[0], baseline, cores, progress)
    return out


def remote_locations(stack: contextlib.ExitStack, folder: str, progress) -> list[tuple[str, str, int | None]]:
    """The headline shards behind a loopback HTTP server and in a local S3-compatible store, each server
    in its own process (its work does not share this process's GIL); (loader name, location, read-ahead
    MB or None for the default)."""
    from ..data.locations import LocationError
    from .loopback import HttpServer, S3Server, s3_environment, upload_folder

    progress("remote: serving the shards over HTTP on 127.0.0.1")
    http = HttpServer(folder)
    stack.callback(http.kill)
    out = [("remote http", http.url, None), ("remote http, no read-ahead", http.url, 0)]
    try:
        import moto.server  # noqa: F401
        import s3fs  # noqa: F401
    except ImportError:
        raise BenchError("--remote needs moto[server] and s3fs for the S3 figures: pip install 'vsrpp-dist[dev]'") from None
    progress("remote: uploading the shards to a local S3-compatible server (moto)")
    s3 = S3Server()
    stack.callback(s3.kill)
    stack.enter_context(s3_environment(s3.env))
    try:
        upload_folder(folder, "s3://bench/shards")
    except LocationError as err:
        raise BenchError(f"--remote: {err}") from None
    out.append(("remote s3", "s3://bench/shards", None))
    return out


def measure_with_workers(args, shards: dict[str, Any], baseline: PngFolderClips, cores: int, progress) -> dict[str, Any]:
    """Both loaders with N worker processes: total clips/s, and per core over min(N, cores)."""
    n = args.workers
    with contextlib.ExitStack() as stack:
        loaders = {
            f"ours {shards['codec']}": stack.enter_context(contextlib.closing(
                stream_batches(shards["folder"], args.lr_patch, args.batch_size, n, args.seed))),
            "baseline": stack.enter_context(contextlib.closing(folder_batches(baseline, args.batch_size, n, args.seed)))}
        rounds = alternate(loaders, args.clips, max(args.warmup_clips, 2 * n * args.batch_size), args.repeats,
                           lambda line: progress(f"{n} workers: {line}"))
    used = min(n, cores)
    ours, base = summarize(rounds[f"ours {shards['codec']}"], used), summarize(rounds["baseline"], used)
    for summary in (ours, base):
        summary.pop("median_clips_per_cpu_s")  # the work is in the workers: this process's CPU time says nothing
    return {"num_workers": n, "cores_used": used, "ours": ours, "baseline": base,
            "vs_baseline": round(ours["median_clips_per_s"] / base["median_clips_per_s"], 3)}


def targets(headline: dict[str, Any], baseline: dict[str, Any]) -> list[dict[str, Any]]:
    per_core = headline["loader"]["median_clips_per_s"]
    rows = [("clips/s per core", per_core, ">=", TARGET_CLIPS_PER_CORE),
            ("x folder baseline", headline["loader"]["vs_baseline"], ">=", TARGET_VS_BASELINE),
            ("shard bytes / PNG folder bytes", headline["bytes_vs_png"], "<=", TARGET_BYTES_VS_PNG)]
    return [{"name": name, "value": value, "op": op, "threshold": threshold,
             "passed": value >= threshold if op == ">=" else value <= threshold}
            for name, value, op, threshold in rows]


def codec_winner(shards: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest loader among the codecs within the bytes target; if none is, the smallest."""
    from ..data.shard_format import DEFAULT_CODEC

    within = [s for s in shards if s["bytes_vs_png"] <= TARGET_BYTES_VS_PNG]
    if within:
        best = max(within, key=lambda s: s["loader"]["median_clips_per_s"])
        rule = f"fastest loader among codecs within {TARGET_BYTES_VS_PNG}x the PNG bytes"
    else:
        best = min(shards, key=lambda s: s["bytes"])
        rule = f"no codec within {TARGET_BYTES_VS_PNG}x the PNG bytes: the smallest"
    return {"codec": best["codec"], "rule": rule, "default_codec": DEFAULT_CODEC,
            "meets_all_targets": best["bytes_vs_png"] <= TARGET_BYTES_VS_PNG
            and best["loader"]["median_clips_per_s"] >= TARGET_CLIPS_PER_CORE
            and best["loader"]["vs_baseline"] >= TARGET_VS_BASELINE}


# -- the report --------------------------------------------------------------------------------------


def _mib(count: int) -> str:
    return f"{count / 2**20:.1f} MiB"


def _rates(summary: dict[str, Any]) -> str:
    rounds = "  ".join(f"{r['clips_per_s']:7.1f}" for r in summary["rounds"])
    return f"{rounds}  | {summary['median_clips_per_s']:7.1f}"


def loader_report(result: dict[str, Any]) -> list[str]:
    m, s, f, png = result["machine"], result["settings"], result["frames"], result["png_folder"]
    base = result["loader"]["baseline"]
    lines = [f"{PROG} loader   {m['date']}   load avg {' '.join(map(str, m['load_before']))} (before), "
             f"{' '.join(map(str, m['load_after']))} (after)   {m['cores']} cores, torch {m['torch']}, "
             f"torchvision {m['torchvision']}",
             f"frames: {f['folder']}: {f['sequences']} sequence(s), {f['frames']} {f['suffix']} frames of "
             f"{f['first_frame_wh'][0]}x{f['first_frame_wh'][1]}",
             f"clip: 5 x {s['gt_patch']}x{s['gt_patch']} GT ({s['lr_patch']} LR patch), uint8, batches of "
             f"{s['batch_size']}; {s['clips']} clips per measurement after {s['warmup_clips']} warm-up, "
             f"{s['repeats']} alternating rounds",
             f"baseline: BasicSR REDS-style folder loader: random sequence position, 5 full PNG frames "
             f"(level {png['level']}) read and decoded whole with "
             f"{'torchvision.io.decode_png' if s['baseline_decoder'] == 'torchvision' else 'PIL'} "
             f"(BasicSR: cv2.imread), random {s['gt_patch']} crop, flips/rotation/reversal; shuffling "
             f"DataLoader",
             f"PNG folder: {png['files']} files, {_mib(png['bytes'])}"
             + ("" if png["made_seconds"] is None else f" (made in {png['made_seconds']:.1f} s)")]
    for entry in result["shards"]:
        tiles = ", ".join(f"{t[0]}x{t[1]}" for t in entry["tile_sizes"])
        lines.append(f"shards {entry['codec']}: {entry['samples']} tile runs of <= {entry['frames_per_sample']} "
                     f"frames, tiles {tiles} (min tile {entry['min_tile']}), {entry['shards']} shard(s), "
                     f"{_mib(entry['bytes'])}" + (f"  WARNING: {entry['warning']}" if entry.get("warning") else ""))

    head = "  ".join(f"{'round ' + str(i + 1):>7}" for i in range(s["repeats"]))
    lines += ["", f"one core (num_workers=0, 1 thread), clips/s   {head}  |  median  per CPU-s  vs baseline"]
    for entry in result["shards"]:
        ld = entry["loader"]
        lines.append(f"  ours, {entry['codec']:<5} shards                      {_rates(ld)}  "
                     f"{ld['median_clips_per_cpu_s']:8.1f}  {ld['vs_baseline']:6.2f}x "
                     f"(rounds {' '.join(f'{x:.2f}' for x in ld['per_round_vs_baseline'])})")
    lines.append(f"  baseline, PNG folder                     {_rates(base)}  {base['median_clips_per_cpu_s']:8.1f}")
    for name, summary in result.get("remote", {}).items():
        per_cpu = summary["median_clips_per_cpu_s"]
        lines.append(f"  ours, {name:<34} {_rates(summary)}  {per_cpu if per_cpu is not None else 0:8.1f}  "
                     f"{summary['vs_local']:6.2f}x local (rounds "
                     f"{' '.join(f'{x:.2f}' for x in summary['per_round_vs_local'])})")
    loads = "  ".join(f"{r['load_1min']:7.2f}" if r.get("load_1min") is not None else "      -"
                      for r in base["rounds"])
    lines.append(f"  load avg (1 min) at the baseline's rounds  {loads}")

    b = result["breakdown"]
    lines += ["", f"where a clip's time goes (ours, {result['shards'][0]['codec']}, {b['clips']} clips, "
                  f"{b['ms_per_clip']:.2f} ms/clip): decode {b['decode_ms']:.2f} ms ({b['decode_share']:.0%}), "
                  f"crop/augment/stack {b['crop_augment_stack_ms']:.2f} ms ({b['crop_augment_stack_share']:.0%}), "
                  f"tar read/shuffle/batch {b['read_shuffle_batch_ms']:.2f} ms ({b['read_shuffle_batch_share']:.0%})",
              f"baseline: {base['ms_per_clip']:.1f} ms/clip, of which PNG decode {base['decode_ms_per_clip']:.1f} ms "
              f"({base['decode_share']:.0%})"]

    if "workers" in result:
        w = result["workers"]
        lines += ["", f"{w['num_workers']} worker processes ({w['cores_used']} cores), clips/s   {head}  |  median  "
                      f"per core"]
        for name, summary in (("ours", w["ours"]), ("baseline", w["baseline"])):
            lines.append(f"  {name:<40}{_rates(summary)}  {summary['median_clips_per_s_per_core']:8.1f}")
        lines.append(f"  ours vs baseline: {w['vs_baseline']:.2f}x")
        shards = result["shards"][0]["shards"]
        if shards < w["num_workers"]:
            lines.append(f"  note: {shards} shard(s) for {w['num_workers']} streams: every worker reads through whole "
                         f"shards to keep 1/{-(-w['num_workers'] // shards)} of their samples (stream.EpochPlan); "
                         "a data set of many shards avoids that")

    lines += ["", "codec  shard bytes  vs PNG   pack frames/s (workers)        loader clips/s/core  vs baseline"]
    for entry in result["shards"]:
        packs = ("  ".join(f"{p['frames_per_s']:6.1f} ({p['workers']})" for p in entry["pack"])
                 if entry["pack"] else "not packed here (--shards)")
        same = "" if not entry["pack"] or len(entry["pack"]) < 2 else (
            "  same bytes" if entry["pack_outputs_identical"] else "  OUTPUTS DIFFER")
        lines.append(f"{entry['codec']:<6} {_mib(entry['bytes']):>11}  {entry['bytes_vs_png']:5.2f}x  "
                     f"{packs + same:<30} {entry['loader']['median_clips_per_s']:8.1f}             "
                     f"{entry['loader']['vs_baseline']:5.2f}x")
    if "codec_winner" in result:
        w = result["codec_winner"]
        lines.append(f"winner: {w['codec']} ({w['rule']}); meets every target: {'yes' if w['meets_all_targets'] else 'no'}"
                     f"; pack's default codec: {w['default_codec']}")

    lines += ["", f"targets ({result['shards'][0]['codec']} shards):"]
    for t in result["targets"]:
        lines.append(f"  {'PASS' if t['passed'] else 'FAIL'}  {t['name']} {t['op']} {t['threshold']:g}: {t['value']:.2f}")
    return lines


def run_loader_command(args: argparse.Namespace) -> int:
    if args.workers < 0:
        raise BenchError(f"--workers {args.workers}: give 0 (skip) or a number of worker processes")
    load = load_average()
    if load and load[0] >= 1.0:
        print(f"{PROG}: note: load average {load[0]:.2f} >= 1 on {usable_cores()} cores: other jobs share the "
              "CPU, wall-clock figures will be low (CPU-second figures less so)", file=sys.stderr)
    result = run_loader(args, progress=lambda line: print(f"[bench] {line}", file=sys.stderr, flush=True))
    print("\n".join(loader_report(result)))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0

