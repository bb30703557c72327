"""Pack frame folders and video files into WebDataset shards plus a manifest.

    python -m vsrpp_dist.pack SRC [SRC ...] OUT [--val] [--lr LR_SRC] [--codec webp|png|raw] ...

SRC is a folder (REDS, Vimeo-90K, Vid4 or any nesting: every folder that directly holds images is one
sequence, every video file one sequence), a video file, or a .txt list of such paths. OUT must not hold
shards, a manifest or unfinished (.partial) files from an earlier pack.

What happens, in order: every SRC is scanned (a missing or empty one stops here, exit 2, nothing
written); sequences too short, given twice or without their LR partner are set aside; workers encode
sequences, long ones cut into run-aligned segments (packer.py); the main process appends them to the
shards in sequence order, so the output does not depend on --workers; the shards get their final names;
the manifest is written last. Sequences with broken data (an unreadable frame, a video that stops
decoding, mixed frame sizes, LR of the wrong size) are skipped whole and listed in the summary and in
the manifest's "skipped".

Exit codes: 0 packed; 2 unusable invocation or input (nothing written); 1 a write failed or a worker
died (only .partial files left); 130 Ctrl-C, 143 SIGTERM (only .partial files left). The first three
through cli.run_cli (a UserError, a RunFailure), the signals through signals.StopSignals and errors.Stopped.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from concurrent.futures.process import BrokenProcessPool
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..cli import OneLineParser, byte_size, int_at_least, run_cli
from ..errors import PackError, RunFailure, Stopped
from ..files import usable_cores
from ..signals import StopSignals
from .locations import Location, RemoteReadError
from .packer import (
    MIN_FRAMES,
    PackOptions,
    SegmentReport,
    SegmentTask,
    SequenceResult,
    ShardSink,
    ShardUploader,
    combine_segments,
    pack_segment,
    plan_segments,
    write_json_atomically,
)
from .shard_format import (
    CODECS,
    DEFAULT_CODEC,
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST_NAME,
    PARTIAL_SUFFIX,
    SCALE,
    read_manifest,
)
from .sources import Sequence, SequenceError, Source, cut_short_warning, probe_frames, scan_source

PROG = "python -m vsrpp_dist.pack"


# -- command line ------------------------------------------------------------------------------------


def default_workers() -> int:
    return max(1, min(usable_cores(), 8))


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=PROG,
        description="Pack frame folders and video files into sharded WebDataset tars plus a manifest "
                    "(x3 VSR, lossless GT). Training shards (default) hold tile runs: one spatial tile "
                    "of one sequence over --frames-per-sample consecutive frames; --val shards hold "
                    "whole frames in sequence order.",
        epilog="OUT may also be s3://bucket/prefix or gs://bucket/prefix: shards are staged in a temporary "
               "folder, uploaded one by one, and the manifest last. `--verify LOCATION` checks every shard's "
               "size and sha256 against the manifest where it lies. "
               "Sequences that cannot be used (fewer than 5 frames, an unreadable frame, a video that "
               "fails to decode, mixed frame sizes, LR of the wrong size) are skipped whole and listed. "
               "Frames whose height or width is not divisible by 3 are cropped at the bottom/right. "
               "Output does not depend on --workers: the same input gives byte-identical shards.")
    parser.add_argument("srcs", nargs="+", metavar="SRC",
                        help="a frame folder of any layout, a video file (.mp4 .mkv .avi .mov .webm), or "
                             "a .txt list of such paths (one per line, '#' comments, relative to the list)")
    parser.add_argument("out", metavar="OUT",
                        help="output folder (created if missing; must hold no earlier shards, manifest "
                             "or .partial files), or s3://bucket/prefix, gs://bucket/prefix (the same holds)")
    parser.add_argument("--val", action="store_true",
                        help="write the validation layout: whole frames, one sample per frame, "
                             "sequences in order (default: training tile runs)")
    parser.add_argument("--lr", action="append", default=[], metavar="LR_SRC",
                        help="real LR frames for the GT sources, paired by relative name (a folder "
                             "sequence with the same relative path, a video with the same stem; a "
                             "source that is itself one sequence pairs with the LR source as a whole); "
                             "LR frames must be exactly 1/3 of the cropped GT size. Give one --lr per "
                             "SRC, in the same order")
    parser.add_argument("--codec", choices=CODECS, default=DEFAULT_CODEC,
                        help=f"lossless frame encoding (default: {DEFAULT_CODEC})")
    parser.add_argument("--frames-per-sample", type=int_at_least(MIN_FRAMES), default=None, metavar="N",
                        help="frames per training tile run (default: "
                             f"{PackOptions.frames_per_sample}; a short tail joins the last run)")
    parser.add_argument("--min-tile", type=int_at_least(SCALE), default=None, metavar="PX",
                        help="smallest tile side in GT pixels; frames are cut into as many tiles of at "
                             f"least this size as fit (default: {PackOptions.min_tile})")
    parser.add_argument("--shard-size", type=byte_size, default=byte_size("1G"), metavar="SIZE",
                        help="bytes per shard, e.g. 500M, 1G (K/M/G = powers of 1024; default: 1G); "
                             "a shard exceeds it only when one sample alone is larger")
    parser.add_argument("--workers", type=int_at_least(1), default=default_workers(), metavar="N",
                        help="processes encoding in parallel: a sequence each, long ones cut into "
                             "segments so that one long video or folder uses several; the output is the "
                             f"same for any N (default: usable CPU cores, at most 8; here {default_workers()})")
    parser.add_argument("--vimeo-list", default="auto", metavar="auto|all|FILE",
                        help="which sequences of a Vimeo-90K folder (ROOT/sequences/...) to take: "
                             "'auto' = ROOT/sep_trainlist.txt for training or ROOT/sep_testlist.txt "
                             "with --val when the file exists, else all; 'all'; or a list file "
                             "(lines like 00001/0001; a bare name is looked up in ROOT too)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar (the summary is still printed)")
    return parser


# -- planning: sources -> tasks ----------------------------------------------------------------------


@dataclass
class SequenceToPack:
    source_index: int
    seq: Sequence
    name: str
    lr: Sequence | None = None


@dataclass
class Plan:
    sources: list[Source]
    candidates: list[SequenceToPack]
    skipped: list[dict]


def plan_pack(srcs: list[str], lr_srcs: list[str], split: str, vimeo_list: str) -> Plan:
    """Scan every source and decide, before any decoding, which sequences will be tried."""
    if lr_srcs and len(lr_srcs) != len(srcs):
        raise PackError(f"give one --lr per SRC, in the same order (got {len(lr_srcs)} --lr for "
                        f"{len(srcs)} SRC)")
    sources = [scan_source(src, split, vimeo_list) for src in srcs]
    if vimeo_list not in ("auto", "all") and not any(s.vimeo_roots for s in sources):
        raise PackError(f"--vimeo-list {vimeo_list}: no SRC has the Vimeo-90K layout (ROOT/sequences/...)")
    # the LR side is matched by position, so it is scanned whole (a Vimeo list selects on the GT side)
    lr_sources = [scan_source(src, split, "all") for src in lr_srcs]
    skipped = [entry for source in sources for entry in source.skipped]
    candidates: list[SequenceToPack] = []
    seen_paths: dict[str, str] = {}
    taken_names: set[str] = set()
    for source_index, source in enumerate(sources):
        lr_by_key = {s.match_key: s for s in lr_sources[source_index].sequences} if lr_sources else {}
        for seq in source.sequences:
            real = os.path.realpath(seq.path)
            if real in seen_paths:
                skipped.append({"input": seq.path, "reason": f"given twice (already packed as {seen_paths[real]})"})
                continue
            if seq.kind == "frames" and len(seq.frames) < MIN_FRAMES:
                skipped.append({"input": seq.path,
                                "reason": f"only {len(seq.frames)} frames (a clip needs {MIN_FRAMES})"})
                continue
            lr = None
            if lr_sources:
                lr = lr_by_key.get(seq.match_key)
                if lr is None:
                    lr_path = lr_sources[source_index].path
                    where = "/".join(str(k) for k in seq.match_key)
                    reason = (f"no LR sequence at {where} in {lr_path}" if where else
                              f"{source.path} is one sequence, but {lr_path} is not")
                    skipped.append({"input": seq.path, "reason": reason})
                    continue
            name = _unique_name(seq.name, Path(source.path).name, taken_names)
            seen_paths[real] = name
            candidates.append(SequenceToPack(source_index, seq, name, lr))
    return Plan(sources, candidates, skipped)


def _unique_name(name: str, source_label: str, taken: set[str]) -> str:
    """Names are labels in the manifest and must be unique: on a clash the source's own folder name
    goes in front (two REDS roots), then a counter."""
    chosen = name if name not in taken else f"{source_label}/{name}"
    counter = 2
    while chosen in taken:
        chosen = f"{source_label}/{name}~{counter}"
        counter += 1
    taken.add(chosen)
    return chosen


def check_output_folder(out: Path) -> None:
    """Refuse a folder that holds anything a pack writes; nothing there is ever overwritten."""
    if out.exists() and not out.is_dir():
        raise PackError(f"{out}: exists and is not a folder")
    if not out.exists():
        return
    clashes = sorted(p.name for p in out.iterdir()
                     if p.name.endswith((".tar", PARTIAL_SUFFIX)) or p.name == MANIFEST_NAME)
    if clashes:
        listed = ", ".join(clashes[:3]) + (f" and {len(clashes) - 3} more" if len(clashes) > 3 else "")
        raise PackError(f"{out}: already holds {listed} from an earlier or unfinished pack; "
                        "pack into an empty folder (nothing was overwritten)")


# -- running: tasks -> reports, in order -------------------------------------------------------------

_worker_counter = None


def _init_worker(counter) -> None:
    global _worker_counter
    _worker_counter = counter
    # Ctrl-C reaches the whole process group: the main process decides what happens, not every worker;
    # and the main process's SIGTERM handler (inherited by fork) must not turn pool.terminate() into a
    # KeyboardInterrupt traceback in each worker
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _count_frame() -> None:
    with _worker_counter.get_lock():
        _worker_counter.value += 1


def _run_in_worker(job: tuple[SegmentTask, PackOptions]) -> SegmentReport:
    task, options = job
    return pack_segment(task, options, on_frame=_count_frame)


def run_tasks(tasks: list[SegmentTask], options: PackOptions, workers: int, progress) -> Iterator[SegmentReport]:
    """Reports in task order, whatever order the workers finish in. A process pool from
    concurrent.futures rather than multiprocessing.Pool: when a worker dies (killed, out of memory) it
    raises BrokenProcessPool instead of waiting forever for the lost task."""
    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            yield pack_segment(task, options, on_frame=lambda: progress.update(1))
        return
    # fork: workers start at once and share the already imported modules; spawn where fork is missing
    context = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    counter = context.Value("q", 0)
    executor = ProcessPoolExecutor(min(workers, len(tasks)), mp_context=context, initializer=_init_worker,
                                   initargs=(counter,))
    shown = 0
    try:
        futures = [executor.submit(_run_in_worker, (task, options)) for task in tasks]
        for future in futures:
            while True:
                try:
                    report = future.result(timeout=0.2)
                    break
                except FuturesTimeout:
                    pass
                finally:
                    done = counter.value
                    progress.update(done - shown)
                    shown = done
            yield report
    except BaseException:  # Ctrl-C, SIGTERM, a write error, or the caller closing us early
        _stop_workers(executor)
        raise
    executor.shutdown()


def _stop_workers(executor: ProcessPoolExecutor) -> None:
    """Stop at once: shutdown() alone would let every worker finish its current (maybe long) segment.
    There is no public way to terminate the workers before Python 3.14, hence `_processes`."""
    for process in list((getattr(executor, "_processes", None) or {}).values()):
        process.terminate()
    executor.shutdown(wait=False, cancel_futures=True)


# -- the whole pack ----------------------------------------------------------------------------------


def tool_version() -> str:
    try:
        from importlib.metadata import version

        return version("vsrpp-dist")
    except Exception:  # not installed (run from a checkout)
        import vsrpp_dist

        return getattr(vsrpp_dist, "__version__", "unknown")


def check_bucket_prefix(destination: Location) -> None:
    """Refuse a bucket prefix that holds anything a pack writes, above all a manifest; nothing there is
    ever overwritten."""
    clashes = [name for name in destination.names()
               if name.endswith((".tar", PARTIAL_SUFFIX)) or name == MANIFEST_NAME]
    if clashes:
        listed = ", ".join(clashes[:3]) + (f" and {len(clashes) - 3} more" if len(clashes) > 3 else "")
        raise PackError(f"{destination.display()}: already holds {listed} from an earlier or unfinished pack; "
                        "pack into an empty prefix (nothing was overwritten)")


def pack(srcs: list[str], out: Path | str | Location, lr_srcs: list[str], options: PackOptions, workers: int,
         vimeo_list: str = "auto", quiet: bool = False) -> dict:
    """Plan, encode, shard, and write the manifest; returns the manifest. `out` is a folder, or an
    s3:// / gs:// prefix (see pack_to_bucket). Raises PackError for user errors (nothing written),
    OSError for write failures (only .partial files left; in a bucket, shards without a manifest)."""
    destination = out if isinstance(out, Location) else Location(str(out))
    if destination.kind == "object":
        return pack_to_bucket(srcs, destination, lr_srcs, options, workers, vimeo_list, quiet)
    if not destination.is_local:
        raise PackError(f"{destination.display()}: pack writes to a folder, s3://bucket/prefix or gs://bucket/prefix "
                        "(http(s) and pipe: locations are read-only)")
    out = destination.path
    started = time.monotonic()
    check_output_folder(out)
    plan = plan_pack(srcs, lr_srcs, options.split, vimeo_list)
    if not plan.candidates:
        raise PackError(_nothing_usable(plan.skipped))
    out.mkdir(parents=True, exist_ok=True)
    check_output_folder(out)  # again, now that planning took its time

    with ShardSink(out, options.split, options.shard_size) as sink:
        sequences, skipped = encode_all(plan, out, sink, options, workers, quiet)
        if not sequences:
            raise PackError(_nothing_usable(skipped))
        shards = sink.commit()
    manifest = build_manifest(plan, lr_srcs, options, sequences, shards, skipped, time.monotonic() - started)
    write_json_atomically(out / MANIFEST_NAME, manifest)  # last: its presence means "complete"
    return manifest


def pack_to_bucket(srcs: list[str], destination: Location, lr_srcs: list[str], options: PackOptions, workers: int,
                   vimeo_list: str, quiet: bool) -> dict:
    """The same pack, staged in a temporary local folder: each finished shard is uploaded (one object,
    whole or not at all) and its local copy deleted while the next is written; the manifest is uploaded
    last, so a half-done upload is never a usable dataset."""
    started = time.monotonic()
    check_bucket_prefix(destination)
    plan = plan_pack(srcs, lr_srcs, options.split, vimeo_list)
    if not plan.candidates:
        raise PackError(_nothing_usable(plan.skipped))
    with tempfile.TemporaryDirectory(prefix="vsrpp-pack-") as staging_name:
        staging = Path(staging_name)
        with ShardUploader(destination) as uploader, \
                ShardSink(staging, options.split, options.shard_size, publish=uploader.submit) as sink:
            sequences, skipped = encode_all(plan, staging, sink, options, workers, quiet)
            if not sequences:
                raise PackError(_nothing_usable(skipped))
            shards = sink.commit()
            uploader.finish()
        manifest = build_manifest(plan, lr_srcs, options, sequences, shards, skipped, time.monotonic() - started)
        write_json_atomically(staging / MANIFEST_NAME, manifest)
        if MANIFEST_NAME in destination.names():  # checked before packing; something else wrote there since
            raise FileExistsError(f"{destination.display(MANIFEST_NAME)} appeared while packing; not overwriting it")
        destination.upload(staging / MANIFEST_NAME, MANIFEST_NAME)  # last: its presence means "complete"
    return manifest


def encode_all(plan: Plan, out: Path, sink: ShardSink, options: PackOptions, workers: int,
               quiet: bool) -> tuple[list[dict], list[dict]]:
    """Encode every candidate (segments in parallel) and append the usable ones to the shards in
    order; returns the manifest's sequence entries and the skipped inputs."""
    counts = [probe_frames(c.seq) for c in plan.candidates]
    known = [count.expected for count in counts]
    tasks = [SegmentTask(i, k, c.seq, c.lr, start, end, str(out / f"spool-{i:06d}-{k:03d}{PARTIAL_SUFFIX}"))
             for i, (c, n) in enumerate(zip(plan.candidates, known))
             for k, (start, end) in enumerate(plan_segments(n, c.seq.kind, options.frames_per_sample, workers))]
    sequences: list[dict] = []
    skipped = list(plan.skipped)
    with _progress_bar(total=sum(n for n in known if n) or None, unit="frame", desc="packing", file=sys.stderr,
                       disable=quiet, dynamic_ncols=True, smoothing=0.1) as progress:
        # closing(): on Ctrl-C or an error the workers are stopped now, not when the traceback is freed
        with closing(run_tasks(tasks, options, workers, progress)) as reports:
            indexed = {id(c): count.indexed for c, count in zip(plan.candidates, counts)}
            for candidate, segment_reports in _by_sequence(plan.candidates, tasks, reports):
                try:
                    result = combine_segments(segment_reports)
                except SequenceError as err:
                    _remove_spools(segment_reports)
                    skipped.append({"input": candidate.seq.path, "reason": str(err)})
                    continue
                index = len(sequences)
                sink.add_sequence(index, candidate.name, result)
                sequences.append(_sequence_entry(index, candidate, result))
                if (warning := cut_short_warning(candidate.seq, result.num_frames, indexed[id(candidate)])) is not None:
                    sequences[-1]["warning"] = warning  # in the manifest, and said at the end (summary_lines)
    return sequences, skipped


def build_manifest(plan: Plan, lr_srcs: list[str], options: PackOptions, sequences: list[dict],
                   shards: list[dict], skipped: list[dict], seconds: float) -> dict:
    packed_per_source = [0] * len(plan.sources)
    for entry in sequences:
        packed_per_source[entry["source_index"]] += 1
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "scale": SCALE,
        "split": options.split,
        "codec": options.codec,
        "frames_per_sample": options.frames_per_sample,
        "min_tile": options.min_tile,
        "has_lr": bool(lr_srcs),
        "shard_size": options.shard_size,
        "sources": [_source_entry(s, packed_per_source[i], lr_srcs[i] if lr_srcs else None)
                    for i, s in enumerate(plan.sources)],
        "sequences": sequences,
        "shards": shards,
        "totals": {"sequences": len(sequences), "frames": sum(s["num_frames"] for s in sequences),
                   "samples": sum(s["samples"] for s in shards), "shards": len(shards),
                   "bytes": sum(s["bytes"] for s in shards), "seconds": round(seconds, 3)},
        "skipped": skipped,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tool": f"vsrpp-dist {tool_version()}",
    }


def _by_sequence(candidates: list[SequenceToPack], tasks: list[SegmentTask],
                 reports: Iterator[SegmentReport]) -> Iterator[tuple[SequenceToPack, list[SegmentReport]]]:
    """Group the in-order segment reports into whole sequences."""
    group: list[SegmentReport] = []
    for position, report in enumerate(reports):
        group.append(report)
        task = tasks[position]
        if position + 1 == len(tasks) or tasks[position + 1].sequence != task.sequence:
            yield candidates[task.sequence], group
            group = []


def _remove_spools(reports: list[SegmentReport]) -> None:
    for report in reports:
        if report.spool and os.path.exists(report.spool):
            os.remove(report.spool)  # scratch of a skipped sequence: it never reaches a shard


def _progress_bar(**kwargs):
    from tqdm import tqdm

    class Bar(tqdm):
        monitor_interval = 0  # no monitor thread: the worker processes are forked after the bar starts

    return Bar(**kwargs)


def _sequence_entry(index: int, candidate: SequenceToPack, result: SequenceResult) -> dict:
    layout = result.layout
    entry = {"index": index, "name": candidate.name, "source": os.path.abspath(candidate.seq.path),
             "kind": candidate.seq.kind, "num_frames": result.num_frames,
             "frame_size": list(layout.frame_size), "original_size": list(layout.original_size),
             "cropped": layout.frame_size != layout.original_size, "tile_size": list(layout.tile_size),
             "tiles": len(layout.origins), "runs": result.runs, "samples": result.samples,
             "source_index": candidate.source_index}
    if candidate.lr is not None:
        entry["lr_source"] = os.path.abspath(candidate.lr.path)
    return entry


def _source_entry(source: Source, packed: int, lr_src: str | None) -> dict:
    entry = {"path": os.path.abspath(source.path), "kind": source.kind, "layout": source.layout,
             "sequences": packed, "found": len(source.sequences)}
    if source.vimeo_list:
        entry["vimeo_list"] = os.path.abspath(source.vimeo_list)
    if lr_src is not None:
        entry["lr"] = os.path.abspath(lr_src)
    return entry


def _nothing_usable(skipped: list[dict]) -> str:
    if not skipped:
        return "nothing to pack"
    first = skipped[0]
    more = f" (and {len(skipped) - 1} more skipped)" if len(skipped) > 1 else ""
    return f"nothing usable to pack: {first['input']}: {first['reason']}{more}; no manifest written"


def summary_lines(manifest: dict, out: Path) -> list[str]:
    totals = manifest["totals"]
    unit = "tile runs" if manifest["split"] == "train" else "frames"
    rate = totals["frames"] / totals["seconds"] if totals["seconds"] > 0 else float("inf")
    lines = [f"packed {_count(totals['sequences'], 'sequence')} ({_count(totals['frames'], 'frame')}) into "
             f"{_count(totals['samples'], 'sample')} ({unit}) in {_count(totals['shards'], 'shard')}, "
             f"{_human_bytes(totals['bytes'])}, {totals['seconds']:.1f} s, {rate:.1f} frames/s -> {out}"]
    lines += [f"{PROG}: warning: {seq['warning']}" for seq in manifest["sequences"] if seq.get("warning")]
    if manifest["skipped"]:
        lines.append(f"skipped {_count(len(manifest['skipped']), 'input')}:")
        lines += [f"  {entry['input']}: {entry['reason']}" for entry in manifest["skipped"]]
    return lines


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _human_bytes(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count} B"


def main(argv: list[str] | None = None) -> int:
    """User errors are one line and exit code 2, a failed write 1, Ctrl-C 130 and SIGTERM 143 (cli.run_cli)."""
    return run_cli(_pack_or_verify, argv, prog=PROG)


def _pack_or_verify(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--verify" in argv:
        args = build_verify_parser().parse_args(argv)
        return verify(args.verify, quiet=args.quiet)
    args = build_parser().parse_intermixed_args(argv)  # options may sit between SRC and OUT
    srcs = args.srcs
    destination = Location(args.out)
    out = destination.path if destination.is_local else destination.display()
    remote = destination.kind == "object"
    left = (f"shards uploaded so far stay in {out} without a manifest (not a usable dataset); remove them"
            if remote else f"unfinished files in {out} end in {PARTIAL_SUFFIX}; delete them")
    if args.val and (args.frames_per_sample is not None or args.min_tile is not None):
        print(f"{PROG}: warning: --frames-per-sample and --min-tile have no effect with --val "
              "(validation samples are whole frames)", file=sys.stderr)
    given = {"frames_per_sample": args.frames_per_sample, "min_tile": args.min_tile}
    options = PackOptions(split="val" if args.val else "train", codec=args.codec, shard_size=args.shard_size,
                          **{key: value for key, value in given.items() if value is not None})
    # Ctrl-C and a cluster's SIGTERM stop the pack at once: workers stopped, only .partial files left
    stop = StopSignals(at_once=True)
    try:
        manifest = pack(srcs, destination, args.lr, options, args.workers, args.vimeo_list, args.quiet)
    except KeyboardInterrupt:
        code = stop.exit_code or 128 + signal.SIGINT  # raised without a signal (a library's): as Ctrl-C
        what = "terminated" if stop.received == "SIGTERM" else "interrupted"
        raise Stopped(f"{what}; nothing complete was written to {out} ({left} before packing into it again)",
                      code) from None
    except BrokenProcessPool:
        raise RunFailure("a worker process died (killed, or out of memory?); nothing complete was "
                         f"written ({left}, and pack again, perhaps with fewer --workers)") from None
    except OSError as err:
        where = f" {err.filename}" if err.filename else ""
        what = str(err) if remote else f"writing failed{where}: {err.strerror or err}"
        raise RunFailure(f"{what}; nothing complete was written ({left}, fix the cause, and pack again)") from None
    finally:
        stop.restore()
    print("\n".join(summary_lines(manifest, out)))
    return 0


# -- verifying a packed dataset where it lies --------------------------------------------------------


def build_verify_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=f"{PROG} --verify",
                           description="Read every shard a manifest lists, where it lies (a folder, s3://, gs://, "
                                       "http(s)://, pipe:), and check its size and sha256 against the manifest.")
    parser.add_argument("--verify", required=True, metavar="LOCATION", help="where the manifest and shards are")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def verify(where: str, quiet: bool = False) -> int:
    """0: every shard matches its manifest entry; 1: some do not (one line each); 2: no usable manifest."""
    location = Location(where)
    manifest = read_manifest(location)  # no usable manifest: a ShardFormatError, exit code 2
    shards = manifest["shards"]
    problems = []
    with _progress_bar(total=sum(int(s.get("bytes", 0)) for s in shards), unit="B", unit_scale=True,
                       desc="verifying", file=sys.stderr, disable=quiet, dynamic_ncols=True) as progress:
        for entry in shards:
            problem = _verify_shard(location, entry, progress)
            if problem:
                problems.append(f"{entry['file']}: {problem}")
    where_shown = location.display()
    if problems:
        print("\n".join(problems))
        print(f"{len(problems)} of {_count(len(shards), 'shard')} at {where_shown} do not match the manifest")
        return 1
    size = _human_bytes(sum(int(s.get("bytes", 0)) for s in shards))
    print(f"verified {_count(len(shards), 'shard')} ({size}) at {where_shown}: every size and sha256 matches "
          "the manifest")
    return 0


def _verify_shard(location: Location, entry: dict, progress) -> str | None:
    reader = None
    try:
        reader = location.open_reader(entry["file"], hashing=True)  # no size: a short file is a finding
        while block := reader.read(1 << 20):
            progress.update(len(block))
    except RemoteReadError as err:
        return f"unreadable ({err})"
    except OSError as err:
        return f"unreadable ({err.strerror or err})"
    finally:
        if reader is not None:
            reader.close()
    if reader.bytes != entry.get("bytes"):
        return f"{reader.bytes} bytes, the manifest says {entry.get('bytes')}"
    if reader.sha256.hexdigest() != entry.get("sha256"):
        return "sha256 differs from the manifest (same size: the content changed)"
    return None


cli = main  # what `python -m vsrpp_dist.pack` and `vsrpp pack` run

if __name__ == "__main__":
    sys.exit(main())
