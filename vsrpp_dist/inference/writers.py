"""Where output frames go: PNG folders named after the input's frames, a video file that keeps the source's
timestamps, rotation, colour tags and audio, and a background writer that overlaps encoding with the model
and turns a full disk into one line."""

from __future__ import annotations

import os
import sys
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..data.sources import Sequence
from ..errors import InferenceError
from .media import AudioCopy, Colour, SourceMedia


# suffix -> (container format, codec)
VIDEO_FORMATS = {".mp4": ("mp4", "libx264"), ".mkv": ("matroska", "libx264"), ".mov": ("mov", "libx264"),
                 ".avi": ("avi", "libx264"), ".webm": ("webm", "libvpx-vp9")}

# zlib level 3: 15 % larger files than the default 6 at less than half the time (0.23 s vs 0.53 s for
# a 2880x1620 frame), which keeps a GPU from waiting on the encoder.
PNG_COMPRESS_LEVEL = 3


def frame_names(seq: Sequence) -> Callable[[int], str]:
    """PNG name of output frame i: the input frame's own name where those are unique (a frame folder),
    else its number (00000000.png, ...)."""
    if seq.kind == "frames":
        stems = [Path(f).stem + ".png" for f in seq.frames]
        if len(set(stems)) == len(stems):
            return lambda index: stems[index]
    return numbered_frame_name


def numbered_frame_name(index: int) -> str:
    return f"{index:08d}.png"


class PngFolder:
    """Frames as PNG files in a folder, created with the first frame (a run that fails before it leaves
    nothing behind)."""

    def __init__(self, folder: Path, name_of: Callable[[int], str]) -> None:
        self.folder = folder
        self.name_of = name_of

    after_failure = "the frames written before it are complete and kept"

    def write(self, index: int, frame_hwc: np.ndarray) -> None:
        from PIL import Image

        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / self.name_of(index)
        try:
            Image.fromarray(frame_hwc).save(path, compress_level=PNG_COMPRESS_LEVEL)
        except BaseException:
            path.unlink(missing_ok=True)  # a truncated PNG (disk full) would pass for a frame
            raise

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass  # frames written so far stay: they are complete files, and the user's


class VideoFile:
    """Encodes frames in order into OUT's temporary twin, with the source's timestamps, rotation, colour
    tags and audio where there is a source video (`media`); `close` renames it to OUT."""

    after_failure = "the incomplete video was removed, nothing is left under that name"

    def __init__(self, path: Path, fps: Fraction, crf: int, media: SourceMedia | None = None,
                 audio: bool = True) -> None:
        self.path = path
        self.tmp = path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")
        self.fps = fps
        self.crf = crf
        self.media = media
        self.colour = media.colour if media else Colour()
        self.audio_wanted = audio and media is not None and media.audio_streams > 0
        self.container = None
        self.stream = None
        self.audio: AudioCopy | None = None
        self.written = 0

    def _open(self, height: int, width: int) -> None:
        import av

        fmt, codec = VIDEO_FORMATS[self.path.suffix.lower()]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.container = av.open(str(self.tmp), mode="w", format=fmt)
        stream = self.container.add_stream(codec, rate=self.fps)
        stream.height, stream.width = height, width
        even = height % 2 == 0 and width % 2 == 0
        stream.pix_fmt = "yuv420p" if even else "yuv444p"
        options = {"crf": str(self.crf)}
        options.update({"preset": "medium"} if codec == "libx264" else {"b": "0"})  # VP9: constant quality
        stream.options = options
        ctx = stream.codec_context
        ctx.color_primaries, ctx.color_trc, ctx.colorspace = self.colour.primaries, self.colour.transfer, \
            self.colour.matrix
        ctx.color_range = 1  # limited ("TV") range: what swscale's YUV output is
        keep_timestamps = self.media is not None and self.media.timestamps and self.media.time_base
        self.time_base = self.media.time_base if keep_timestamps else 1 / self.fps
        stream.time_base = ctx.time_base = self.time_base
        if self.media is not None and self.media.rotation:
            stream.set_display_rotation(self.media.rotation)
        if self.audio_wanted:
            self.audio = AudioCopy(self.media.path, self.container)  # streams added before the header
        self.stream = stream
        if not even:
            print(f"note: {width}x{height} is odd-sized; encoding with 4:4:4 chroma (4:2:0 needs even sizes; "
                  "some players do not play 4:4:4 H.264)", file=sys.stderr)

    def _pts(self, index: int) -> int:
        """Frame `index`'s timestamp in the stream's time base: the source's (past its last one, and
        without a source, at the constant rate)."""
        tb = self.time_base
        stamps = self.media.timestamps if self.media is not None else []
        if index < len(stamps):
            return stamps[index]
        last, frame = (stamps[-1], len(stamps) - 1) if stamps else (0, 0)
        return last + round((index - frame) / (self.fps * tb))

    def write(self, index: int, frame_hwc: np.ndarray) -> None:
        import av

        if self.container is None:
            self._open(*frame_hwc.shape[:2])
        # converted with the matrix the stream is tagged with (PyAV's own conversion would use BT.601)
        frame = av.VideoFrame.from_ndarray(frame_hwc, format="rgb24").reformat(
            format=self.stream.pix_fmt, dst_colorspace=self.colour.reformatter_matrix)
        frame.pts = self._pts(index)
        frame.time_base = self.time_base
        self.container.mux(self.stream.encode(frame))
        self.written = index + 1
        if self.audio is not None:
            self.audio.until(float(frame.pts * frame.time_base))

    def close(self) -> None:
        if self.container is None:
            return
        self.container.mux(self.stream.encode())  # flush the encoder's delayed frames
        if self.audio is not None:
            # to the end, or to where the video stops (--limit)
            cut = self.media.timestamp(self.written)
            self.audio.until(float(cut * self.media.time_base) if cut is not None else None)
            self.audio.close()
        self.container.close()
        self.container = None
        os.replace(self.tmp, self.path)  # the commit point: OUT is complete or absent

    def abort(self) -> None:
        if self.audio is not None:
            self.audio.close()
        if self.container is not None:
            try:
                self.container.close()
            except Exception:  # the file is ours and about to be removed; its state does not matter
                pass
            self.container = None
        self.tmp.unlink(missing_ok=True)


class BackgroundWriter:
    """Runs the sink's writes on worker threads so encoding overlaps with the model (PNG and H.264
    encoders release the GIL). At most `max_pending` frames wait, so memory stays bounded; one thread
    keeps a video's frames in order. A failed write surfaces at the next submit or at `close`."""

    def __init__(self, sink, threads: int, max_pending: int) -> None:
        self.sink = sink
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="upscale-writer")
        self.pending: deque[Future] = deque()
        self.max_pending = max_pending

    def submit(self, index: int, frame_hwc: np.ndarray) -> None:
        while len(self.pending) >= self.max_pending:
            self._wait(self.pending.popleft())
        self.pending.append(self.pool.submit(self.sink.write, index, frame_hwc))

    def close(self) -> None:
        while self.pending:
            self._wait(self.pending.popleft())
        self.pool.shutdown(wait=True)
        with self._as_user_error():
            self.sink.close()

    def _wait(self, future: Future) -> None:
        with self._as_user_error():
            future.result()

    @contextmanager
    def _as_user_error(self):
        """A full disk or a lost mount is the user's to fix: one line (the caller then aborts the sink,
        which removes what is incomplete)."""
        try:
            yield
        except OSError as err:
            target = getattr(self.sink, "path", None) or getattr(self.sink, "folder", "the output")
            reason = err.strerror or str(err)
            raise InferenceError(f"{target}: writing the output failed ({reason}); "
                                 f"{self.sink.after_failure}") from None

    def abort(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.sink.abort()
